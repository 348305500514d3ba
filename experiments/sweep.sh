#!/usr/bin/env bash
# A grid of runs over config overrides, then the report table; see jaxdl/sweep.py.
#   experiments/sweep.sh configs/mnist.py 'opt.lr=0.1,0.03' 'seed=0,1,2' [-j 2] [--root=DIR]
# Paths are relative to the current directory; workdirs default to runs/sweep-<config name>.
# Re-running the same command skips finished runs and resumes unfinished ones.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m jaxdl.sweep "$@"
