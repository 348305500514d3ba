"""Runs the five shipped presets for a few hundred steps, or compares two such sets of runs.

A change that is not meant to move a number (a refactor, a port to a newer stack) is checked by
running this before and after it and comparing: every event of every preset's metrics.jsonl
must be equal, bit for bit, with the wall-clock throughput fields (`*_per_s`) left out.

  python experiments/presets.py run --out=/tmp/before --data=../shared/data [--steps=300]
  python experiments/presets.py compare /tmp/before /tmp/after

Each run is the real command line (`python -m jaxdl.main ...`) in a fresh workdir OUT/<preset>,
one after another. Events fall at fixed steps: log every 50, eval every 100, checkpoint every
100, so a 300-step run has 6 train events, 2 evals, 3 checkpoints and the final evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (config, data under --data)
PRESETS = {
    "mnist": ("configs/mnist.py", "mnist-10k"),
    "mnist_seed": ("configs/mnist.py:seed", "mnist-10k"),
    "text_classifier": ("configs/text_classifier.py", "sst2"),
    "tiny_lm": ("configs/tiny_lm.py", "tiny_shakespeare/input.txt"),
    "tiny_lm_nanogpt_cpu": ("configs/tiny_lm.py:nanogpt_cpu", "tiny_shakespeare/input.txt"),
}


def events(workdir: str) -> list[dict]:
  """metrics.jsonl's events without the wall-clock throughput, which differs run to run."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_per_s")}
            for line in f if line.strip()]


def run(out: str, data: str, steps: int, names: list[str]) -> None:
  os.makedirs(out, exist_ok=True)
  for name in names:
    config, path = PRESETS[name]
    workdir = os.path.join(out, name)
    shutil.rmtree(workdir, ignore_errors=True)
    command = [sys.executable, "-m", "jaxdl.main", f"--config={config}", f"--workdir={workdir}",
               f"--config.data.path={os.path.join(data, path)}",
               f"--config.num_train_steps={steps}", "--config.log_every=50",
               "--config.eval_every=100", "--config.checkpoint_every=100"]
    start = time.time()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    print(f"{name}: {len(events(workdir))} events, {time.time() - start:.0f} s", flush=True)


def _largest_relative_difference(ea: list[dict], eb: list[dict]):
  """(relative difference, key, step) of the numbers that differ most between events at the
  same (event, step) in both runs (another stack's, say); None if none are comparable."""
  b_at = {(e["event"], e["step"]): e for e in eb}
  worst = None
  for x in ea:
    y = b_at.get((x["event"], x["step"]))
    if y is None:
      continue
    for key, value in x.items():
      other = y.get(key)
      if isinstance(value, (int, float)) and isinstance(other, (int, float)) and key != "step":
        rel = abs(value - other) / max(abs(value), abs(other), 1e-30)
        if worst is None or rel > worst[0]:
          worst = (rel, key, x["step"])
  return worst


def compare(before: str, after: str) -> bool:
  same = True
  for name in PRESETS:
    a, b = (os.path.join(d, name) for d in (before, after))
    if not (os.path.exists(a) and os.path.exists(b)):
      print(f"{name}: not in both")
      continue
    ea, eb = events(a), events(b)
    if ea == eb:
      print(f"{name}: {len(ea)} events equal, bit for bit")
      continue
    same = False
    diff = next((x, y) for x, y in zip(ea + [None] * len(eb), eb + [None] * len(ea)) if x != y)
    print(f"{name}: DIFFERENT; first difference:\n  before {diff[0]}\n  after  {diff[1]}")
    worst = _largest_relative_difference(ea, eb)
    if worst:
      print(f"  largest relative difference: {worst[0]:.2e} in {worst[1]} at step {worst[2]}")
  return same


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="what", required=True)
  r = sub.add_parser("run")
  r.add_argument("--out", required=True)
  r.add_argument("--data", required=True, help="a folder like ../shared/data")
  r.add_argument("--steps", type=int, default=300)
  r.add_argument("--only", default=",".join(PRESETS), help="comma-separated preset names")
  c = sub.add_parser("compare")
  c.add_argument("before")
  c.add_argument("after")
  args = parser.parse_args()
  if args.what == "run":
    run(args.out, os.path.abspath(args.data), args.steps, args.only.split(","))
  else:
    sys.exit(0 if compare(args.before, args.after) else 1)


if __name__ == "__main__":
  main()
