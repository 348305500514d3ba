"""jaxdl's real training loop against PyTorch, interleaved in one run: seed CNN or tiny LM.

Each round runs every variant once, in a rotated order, so load from other processes on the
machine falls on all of them alike. jaxdl runs through the CLI (data iteration, logging,
evaluation and asynchronous checkpoints included), and its throughput comes from
metrics.jsonl's train events (eval time excluded), leaving out the first log interval
(compilation / warm-up). The PyTorch side is this folder's own implementation of the same model
and recipe.

  --model=cnn  the MNIST `:seed` preset (batch 64) against torch_cnn.py; images/s over full
               epochs after the first, one log line per epoch.
  --model=lm   the tiny LM's `:nanogpt_cpu` preset (batch 12 x 64 tokens) against
               torch_gpt.py; tokens/s over the steps after the first 100.

  python experiments/bench/side_by_side.py --model=cnn --data=../shared/data/mnist-10k --rounds=3
  python experiments/bench/side_by_side.py --model=lm \
      --data=../shared/data/tiny_shakespeare/input.txt --rounds=3 --steps=600

Needs PyTorch for the reference (pip install torch==2.13.0). `--stacks` runs jaxdl under other
interpreters too, interleaved with the rest, e.g. the floor and the newest stack of CI:

  python experiments/bench/side_by_side.py --model=lm --data=... --rounds=2 \
      --stacks=floor=.venv/bin/python,newest=.venv-newest/bin/python \
      --only='jaxdl (the preset: rotary positions) [floor];jaxdl (the preset: rotary positions) [newest];torch (default threads)'
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS_PER_EPOCH = 125  # 8,000 training images / batch 64, rounded up

LM_LOG_EVERY = 100
# Per model: its jaxdl config, the metric and unit it reports, and its variants:
# name -> extra jaxdl overrides, or torch thread count.
JAX_VARIANTS = {
    "cnn": {
        "jaxdl": [],  # the defaults: model.impl=auto (on CPU: cpu_im2col), 1 step per dispatch
        "jaxdl impl=cpu": ["--config.model.impl=cpu"],  # XLA's convolutions
        "jaxdl impl=flax": ["--config.model.impl=flax"],  # nn.Conv and nn.max_pool
        "jaxdl steps_per_dispatch=5": ["--config.steps_per_dispatch=5"],  # gcd(125, 500) = 125
        "jaxdl cpu_devices=2": ["--config.parallel.cpu_devices=2"],
    },
    "lm": {
        # torch_gpt.py's model exactly: nanoGPT's learned position table, no biases. The
        # preset splits the batch over 2 CPU devices; cpu_devices=0 is one device.
        "jaxdl (learned positions)": ["--config.model.positions=learned"],
        "jaxdl (learned positions) cpu_devices=0": ["--config.model.positions=learned",
                                                    "--config.parallel.cpu_devices=0"],
        "jaxdl (the preset: rotary positions)": [],
    },
}
TORCH_VARIANTS = {"torch (default threads)": 0, "torch 1 thread": 1}
RATE = {"cnn": "images_per_s", "lm": "tokens_per_s"}
QUALITY = {"cnn": "test_accuracy", "lm": "val_loss"}


def run_jaxdl(model: str, data: str, length: int, extra: list[str],
              python: str = sys.executable) -> dict:
  if model == "cnn":
    run = ["--config=configs/mnist.py:seed", f"--config.num_epochs={length}",
           f"--config.log_every={STEPS_PER_EPOCH}"]
  else:
    run = ["--config=configs/tiny_lm.py:nanogpt_cpu", f"--config.num_train_steps={length}",
           f"--config.log_every={LM_LOG_EVERY}"]
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [python, "-m", "jaxdl.main", *run, f"--workdir={workdir}",
           f"--config.data.path={data}", *extra]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      events = [json.loads(line) for line in f]
  rate = RATE[model]
  logged = "examples_per_s" if model == "cnn" else rate  # metrics.jsonl's name for it
  # An interval that held only the compiling first dispatch logs no rate.
  per_interval = [e[logged] for e in events if e["event"] == "train" and logged in e]
  warm = per_interval[1:]  # equal-length intervals: total count / total time
  final = next(e for e in events if e["event"] == "final")
  return {rate: len(warm) / sum(1 / x for x in warm),
          QUALITY[model]: final[QUALITY[model]],
          "first_step": next(l for l in out.stdout.splitlines() if l.startswith("first "))}


def run_torch(model: str, data: str, length: int, threads: int) -> dict:
  if model == "cnn":
    cmd = ["experiments/bench/torch_cnn.py", f"--epochs={length}"]
  else:
    cmd = ["experiments/bench/torch_gpt.py", f"--steps={length}", f"--warmup_steps={LM_LOG_EVERY}"]
  cmd = [sys.executable, "-W", "ignore", *cmd, f"--data={data}", f"--threads={threads}"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("cnn", "lm"), default="cnn")
  parser.add_argument("--data", required=True)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=10, help="cnn: epochs per run")
  parser.add_argument("--steps", type=int, default=2000, help="lm: steps per run")
  parser.add_argument("--only", default="", help="variant names to run, separated by ';'")
  parser.add_argument("--stacks", default="",
                      help="NAME=PYTHON,...: run each jaxdl variant under each of these "
                           "interpreters (venvs with another jax), named 'VARIANT [NAME]'; "
                           "default: this interpreter only. PyTorch runs under this one.")
  args = parser.parse_args()
  data = os.path.abspath(args.data)
  jax_variants = {name: (extra, sys.executable) for name, extra in JAX_VARIANTS[args.model].items()}
  if args.stacks:
    stacks = dict(item.split("=", 1) for item in args.stacks.split(","))
    jax_variants = {f"{name} [{stack}]": (extra, python)
                    for name, (extra, _) in jax_variants.items()
                    for stack, python in stacks.items()}
  length = args.epochs if args.model == "cnn" else args.steps
  rate, quality = RATE[args.model], QUALITY[args.model]
  names = list(jax_variants) + list(TORCH_VARIANTS)
  if args.only:
    names = [n for n in names if n in args.only.split(";")]
  results = {n: [] for n in names}
  for r in range(args.rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      if name in jax_variants:
        res = run_jaxdl(args.model, data, length, *jax_variants[name])
      else:
        res = run_torch(args.model, data, length, TORCH_VARIANTS[name])
      results[name].append(res)
      print(json.dumps({"round": r, "variant": name, **res}), flush=True)
  best_torch = max((statistics.median(x[rate] for x in results[n]), n)
                   for n in names if n in TORCH_VARIANTS)
  print(f"\n| variant | {rate.replace('_per_s', '/s')} (median of {args.rounds}) | runs | "
        f"{quality.replace('_', ' ')} | vs {best_torch[1]} |")
  print("|---|---|---|---|---|")
  for name in names:
    rates = [x[rate] for x in results[name]]
    if quality == "test_accuracy":
      qual = ", ".join(f"{100 * x[quality]:.2f}%" for x in results[name])
    else:
      qual = ", ".join(f"{x[quality]:.4f}" for x in results[name])
    print(f"| {name} | {statistics.median(rates):,.0f} | {', '.join(f'{x:,.0f}' for x in rates)} "
          f"| {qual} | {statistics.median(rates) / best_torch[0]:.2f}x |")


if __name__ == "__main__":
  main()
