"""Seed CNN throughput, jaxdl's real loop against PyTorch, interleaved in one run.

Each round runs every variant once, in a rotated order, so load from other processes on the
machine falls on all of them alike. jaxdl runs the `:seed` preset through the CLI (data
iteration, logging, per-epoch eval and asynchronous checkpoints included) with one log line
per epoch, and its images/s come from metrics.jsonl's examples_per_s (eval time excluded).
Both sides count full epochs after the first (compilation / warm-up).

  flock /tmp/jaxdl-cpu.lock python experiments/bench/cnn_side_by_side.py \
      --data=../shared/data/mnist-10k --rounds=3

Needs PyTorch for the reference (pip install torch==2.13.0).
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

# name -> extra jaxdl overrides, or torch thread count.
JAX_VARIANTS = {
    "jaxdl": [],  # the defaults: model.impl=auto (reshape max-pool on CPU), 1 step per dispatch
    "jaxdl steps_per_dispatch=5": ["--config.steps_per_dispatch=5"],  # gcd(125, 500) = 125
    "jaxdl impl=flax": ["--config.model.impl=flax"],
}
TORCH_VARIANTS = {"torch (default threads)": 0, "torch 1 thread": 1}


def run_jaxdl(data: str, epochs: int, extra: list[str]) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [sys.executable, "-m", "jaxdl.main", "--config=configs/mnist.py:seed",
           f"--workdir={workdir}", f"--config.data.path={data}", f"--config.num_epochs={epochs}",
           f"--config.log_every={STEPS_PER_EPOCH}", *extra]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      events = [json.loads(line) for line in f]
  per_epoch = [e["examples_per_s"] for e in events if e["event"] == "train"]
  warm = per_epoch[1:]
  final = next(e for e in events if e["event"] == "final")
  return {"images_per_s": len(warm) / sum(1 / x for x in warm),  # total images / total time
          "test_accuracy": final["test_accuracy"],
          "first_step": next(l for l in out.stdout.splitlines() if l.startswith("first "))}


def run_torch(data: str, epochs: int, threads: int) -> dict:
  cmd = [sys.executable, "-W", "ignore", "experiments/bench/torch_cnn.py", f"--data={data}",
         f"--epochs={epochs}", f"--threads={threads}"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--only", default="", help="variant names to run, separated by ';'")
  args = parser.parse_args()
  data = os.path.abspath(args.data)
  names = list(JAX_VARIANTS) + list(TORCH_VARIANTS)
  if args.only:
    names = [n for n in names if n in args.only.split(";")]
  results = {n: [] for n in names}
  for r in range(args.rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      if name in JAX_VARIANTS:
        res = run_jaxdl(data, args.epochs, JAX_VARIANTS[name])
      else:
        res = run_torch(data, args.epochs, TORCH_VARIANTS[name])
      results[name].append(res)
      print(json.dumps({"round": r, "variant": name, **res}), flush=True)
  best_torch = max((statistics.median(x["images_per_s"] for x in results[n]), n)
                   for n in names if n in TORCH_VARIANTS)
  print(f"\n| variant | images/s (median of {args.rounds}) | runs | test accuracy | "
        f"vs {best_torch[1]} |")
  print("|---|---|---|---|---|")
  for name in names:
    ips = [x["images_per_s"] for x in results[name]]
    acc = ", ".join(f"{100 * x['test_accuracy']:.2f}%" for x in results[name])
    print(f"| {name} | {statistics.median(ips):,.0f} | {', '.join(f'{x:,.0f}' for x in ips)} | "
          f"{acc} | {statistics.median(ips) / best_torch[0]:.2f}x |")


if __name__ == "__main__":
  main()
