"""What the checkpoint checksums (jaxdl/digests.py) cost on the MNIST default run.

Trains the default preset once, in this process, timing every digest written after a save and
every Orbax save (the call, and the wait for its commit that the next save or the end does),
then verifies the newest step as a resume would. Prints the totals and the digests' share of
the run's wall time.

  python experiments/mnist/checksum_cost.py --data=../shared/data/mnist-10k [--workdir=DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from jaxdl import checkpoint, digests, runrecord, train
from jaxdl.configs import mnist


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="a directory of the four MNIST IDX files")
  parser.add_argument("--workdir", default="", help="default: a temporary directory, removed")
  args = parser.parse_args()
  workdir = args.workdir or os.path.join(tempfile.mkdtemp(prefix="checksum-cost-"), "w")

  timed = {"digest": [], "save": [], "wait": []}

  def timing(name, fn):
    def wrapper(*a, **k):
      start = time.perf_counter()
      try:
        return fn(*a, **k)
      finally:
        timed[name].append(time.perf_counter() - start)
    return wrapper

  digests.write = timing("digest", digests.write)
  manager_save = checkpoint.ocp.CheckpointManager.save
  checkpoint.ocp.CheckpointManager.save = timing("save", manager_save)
  checkpoint.ocp.CheckpointManager.wait_until_finished = timing(
      "wait", checkpoint.ocp.CheckpointManager.wait_until_finished)

  config = mnist.get_config()
  config.data.path = args.data
  start = time.perf_counter()
  final = train.train_and_evaluate(config, workdir)
  wall = time.perf_counter() - start

  ckpt_dir = os.path.join(workdir, "checkpoints")
  newest = max(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())
  step_dir = os.path.join(ckpt_dir, str(newest))
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(step_dir) for f in fs)
  start = time.perf_counter()
  assert digests.check(step_dir) is None
  verify = time.perf_counter() - start

  digest_total = sum(timed["digest"])
  print(f"versions: {runrecord.versions()}")
  print(f"run: {wall:.1f} s wall, test accuracy {final['test_accuracy']:.4f}")
  print(f"saves: {len(timed['save'])}, a step {size / 1e6:.1f} MB; Orbax save calls "
        f"{sum(timed['save']):.3f} s, waits for commits {sum(timed['wait']):.3f} s")
  print(f"digests written: {len(timed['digest'])}, {digest_total:.3f} s in all "
        f"({1e3 * digest_total / max(len(timed['digest']), 1):.1f} ms each) = "
        f"{100 * digest_total / wall:.2f}% of the run's wall time")
  print(f"verifying the newest step (as a resume does): {1e3 * verify:.1f} ms")
  if not args.workdir:
    shutil.rmtree(os.path.dirname(workdir))


if __name__ == "__main__":
  main()
