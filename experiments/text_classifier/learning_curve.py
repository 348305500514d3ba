"""The text classifier's learning curve: dev accuracy at fractions of SST-2's training split.

  python experiments/text_classifier/learning_curve.py --data=../shared/data/sst2 \
      [--root=runs/curve] [--sizes=0.05,0.15,0.5,0] [--seeds=0,1,2] [--recipes=default,old]

Each (recipe, size, seed) is one `python -m jaxdl.main` run of configs/text_classifier.py with
`data.train_size=SIZE` (a random subset by a fixed seed, the same rows for every seed; 0 = all),
run by jaxdl.sweep into ROOT/<recipe>/ (re-running skips finished runs). Recipes:
  default  the config as it is;
  old      the recipe before the learning curve: no EMA warm-up, 12 epochs however small the
           split (train.ema_warmup=False min_train_steps=0).
It then prints a Markdown table of the final dev accuracy per size: each seed, and the mean.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = {"default": [], "old": ["train.ema_warmup=False", "min_train_steps=0"]}


def _final(workdir: str) -> dict | None:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    events = [json.loads(line) for line in f if line.strip()]
  return events[-1] if events and events[-1]["event"] == "final" else None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default="../shared/data/sst2")
  parser.add_argument("--root", default="runs/curve")
  parser.add_argument("--sizes", default="0.05,0.15,0.5,0")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--recipes", default="default,old")
  args = parser.parse_args()
  sizes, seeds = args.sizes.split(","), args.seeds.split(",")
  for recipe in args.recipes.split(","):
    subprocess.run([sys.executable, "-m", "jaxdl.sweep", "configs/text_classifier.py",
                    f"data.train_size={args.sizes}", f"seed={args.seeds}",
                    f"data.path={os.path.abspath(args.data)}", *RECIPES[recipe],
                    f"--root={os.path.join(os.path.abspath(args.root), recipe)}"],
                   cwd=REPO, check=True)
  print("| recipe | train size | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
  print("|---|---|" + "---|" * (len(seeds) + 1))
  for recipe in args.recipes.split(","):
    for size in sizes:
      accs = []
      for seed in seeds:
        name = ",".join(f"{k}={v}" for k, v, n in (("data.train_size", size, len(sizes)),
                                                   ("seed", seed, len(seeds))) if n > 1)
        final = _final(os.path.join(args.root, recipe, name or "run"))
        accs.append(None if final is None else 100 * final["dev_accuracy"])
      done = [a for a in accs if a is not None]
      cells = " | ".join("-" if a is None else f"{a:.2f}" for a in accs)
      mean = f"{statistics.mean(done):.2f}" if done else "-"
      print(f"| {recipe} | {float(size) or 1:.0%} | {cells} | {mean} |")


if __name__ == "__main__":
  main()
