#!/usr/bin/env bash
# The :nanogpt_cpu run continued from its weights: the preset's run (2,000 steps), then a second
# run of the same preset that starts from the first one's final weights (--config.init_from) and
# trains STEPS more (its optimizer state, lr schedule and data order start fresh); prints each
# run's final validation loss and wall time.
#   experiments/tiny_lm/continue.sh [RUNS_DIR] [STEPS]     (from the repository root)
# On a shared machine, wrap it: flock /tmp/jaxdl-cpu.lock experiments/tiny_lm/continue.sh
set -euo pipefail
runs=${1:-runs/tiny_lm}
steps=${2:-2000}
text=${TEXT:-../shared/data/tiny_shakespeare/input.txt}
train() {  # WORKDIR, then overrides
  local workdir=$1 start end
  shift
  rm -rf "$workdir"
  start=$(date +%s.%N)
  python -m jaxdl.main --config=configs/tiny_lm.py:nanogpt_cpu --workdir="$workdir" \
      --config.data.path="$text" "$@" | tail -1
  end=$(date +%s.%N)
  echo "wall time $(basename "$workdir"): $(echo "$end - $start" | bc) s"
}
train "$runs/nanogpt_cpu"
train "$runs/nanogpt_cpu_continued" --config.init_from="$runs/nanogpt_cpu" \
    --config.num_train_steps="$steps"
