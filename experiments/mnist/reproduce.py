"""Runs the MNIST experiment's recorded results and prints them as the Markdown in README.md.

  python experiments/mnist/reproduce.py --data=../shared/data/mnist-10k [--seeds=0,1,2]

Each run is the real command line (`python -m jaxdl.main ...`) into a fresh workdir under
runs/experiments/mnist/, timed from launch to exit; accuracy is the `final` event of its
metrics.jsonl. Runs go one after another so they do not share the CPU.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(name: str, config: str, overrides: list[str], root: str) -> dict:
  workdir = os.path.join(root, name)
  shutil.rmtree(workdir, ignore_errors=True)
  command = [sys.executable, "-m", "jaxdl.main", f"--config={config}", f"--workdir={workdir}",
             *overrides]
  start = time.time()
  subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  wall = time.time() - start
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    final = [json.loads(line) for line in f][-1]
  assert final["event"] == "final", final
  shown = " ".join(["python -m jaxdl.main", f"--config={config}", "--workdir=W", *overrides])
  return {"name": name, "command": shown, "accuracy": final["test_accuracy"],
          "count": final["test_count"], "val": final.get("val_accuracy"),
          "val_count": final.get("val_count"), "wall_s": wall}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default="../shared/data/mnist-10k", help="IDX directory")
  parser.add_argument("--seeds", default="0,1,2", help="seeds for each preset")
  parser.add_argument("--presets", default="default,seed", help="which presets to run")
  parser.add_argument("--root", default="runs/experiments/mnist", help="workdirs go here")
  args = parser.parse_args()
  results = []
  for preset in args.presets.split(","):
    config = "configs/mnist.py" + ("" if preset == "default" else f":{preset}")
    for seed in args.seeds.split(","):
      r = run(f"{preset}-seed{seed}", config,
              [f"--config.data.path={args.data}", f"--config.seed={seed}"], args.root)
      print(f"{r['name']}: {100 * r['accuracy']:.2f}% in {r['wall_s']:.0f}s", file=sys.stderr)
      results.append(r)

  # val: the split carved from train (data.validation_size) that evals during training see;
  # test: evaluated once, at the end. A preset without a val split shows '-'.
  share = lambda acc, n: f"{100 * acc:.2f}% ({round(acc * n)}/{n})"
  print("| run | val accuracy | test accuracy | wall time (launch to exit) |\n|---|---|---|---|")
  for r in results:
    val = "-" if r["val"] is None else share(r["val"], r["val_count"])
    print(f"| `{r['name']}` | {val} | {share(r['accuracy'], r['count'])} | {r['wall_s']:.0f} s |")
  print("\nCommands:\n")
  for r in results:
    print(f"- `{r['name']}`: `{r['command']}`")
  versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in
                       ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"))
  print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}; "
        f"Python {platform.python_version()}; {versions}. "
        f"Date: {datetime.date.today().isoformat()}.")


if __name__ == "__main__":
  main()
