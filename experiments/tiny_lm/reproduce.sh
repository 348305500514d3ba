#!/usr/bin/env bash
# Trains both presets on Tiny Shakespeare and samples from each; prints wall times.
#   experiments/tiny_lm/reproduce.sh [RUNS_DIR]     (from the repository root)
# Each run is timed from process start to exit, so compilation, evaluation and checkpointing
# are included. On a shared machine, wrap it: flock /tmp/jaxdl-cpu.lock experiments/tiny_lm/...
set -euo pipefail
runs=${1:-runs/tiny_lm}
text=${TEXT:-../shared/data/tiny_shakespeare/input.txt}
for preset in nanogpt_cpu ""; do
  workdir="$runs/${preset:-default}"
  rm -rf "$workdir"
  start=$(date +%s.%N)
  python -m jaxdl.main --config="configs/tiny_lm.py${preset:+:$preset}" --workdir="$workdir" \
      --config.data.path="$text"
  end=$(date +%s.%N)
  echo "wall time ${preset:-default}: $(echo "$end - $start" | bc) s"
  python -m jaxdl.sample --workdir="$workdir" --prompt="ROMEO:" --num_chars=500 \
      --temperature=0.8 --top_k=40 --seed=0
done
