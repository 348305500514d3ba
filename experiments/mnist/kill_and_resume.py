"""Kills a real MNIST run with SIGKILL after a checkpoint, re-runs the same command, and compares.

  python experiments/mnist/kill_and_resume.py --data=../shared/data/mnist-10k

The uninterrupted reference is a second workdir trained with the same command. Every metric in
metrics.jsonl (throughput aside) and the final parameters must be equal, bit for bit.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def command(workdir: str, args) -> list[str]:
  return [sys.executable, "-m", "jaxdl.main", f"--config={args.config}", f"--workdir={workdir}",
          f"--config.data.path={args.data}", f"--config.checkpoint_every={args.every}"]


def events(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k != "examples_per_s"} for line in f]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default="../shared/data/mnist-10k")
  parser.add_argument("--config", default="configs/mnist.py:seed")
  parser.add_argument("--every", type=int, default=250, help="checkpoint_every")
  parser.add_argument("--kill_after", type=int, default=500, help="kill once this step is saved")
  parser.add_argument("--root", default="runs/experiments/mnist-kill")
  args = parser.parse_args()
  shutil.rmtree(args.root, ignore_errors=True)
  killed, reference = os.path.join(args.root, "killed"), os.path.join(args.root, "reference")

  proc = subprocess.Popen(command(killed, args), cwd=REPO, stdout=subprocess.DEVNULL)
  marker = os.path.join(REPO, killed, "checkpoints", str(args.kill_after))
  while not os.path.isdir(marker) and proc.poll() is None:  # Orbax renames a finished save in
    time.sleep(0.05)
  time.sleep(1.0)  # let it run on past the checkpoint, so that work after it is lost
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  lines = len(events(os.path.join(REPO, killed)))
  print(f"killed with SIGKILL after checkpoint {args.kill_after} ({lines} metric lines written)")
  subprocess.run(command(killed, args), cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  subprocess.run(command(reference, args), cwd=REPO, check=True, stdout=subprocess.DEVNULL)

  a, b = events(os.path.join(REPO, killed)), events(os.path.join(REPO, reference))
  print(f"metrics.jsonl equal: {a == b} ({len(a)} events); final: {a[-1]}")
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  def params(workdir):
    path = os.path.join(REPO, workdir, "checkpoints", str(a[-1]["step"]), "state")
    return jax.tree.leaves(ocp.StandardCheckpointer().restore(path)["params"])
  same = all((x == y).all() for x, y in zip(params(killed), params(reference)))
  print(f"final params bitwise equal: {same}")
  sys.exit(0 if a == b and same else 1)


if __name__ == "__main__":
  main()
