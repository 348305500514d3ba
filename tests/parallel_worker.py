"""Runs experiments one after another in this process, for the tests that need a process set up
otherwise than pytest's: test_parallel.py's on 4 CPU devices, test_old_workdirs.py's at XLA's
default optimization level.

  JAX_NUM_CPU_DEVICES=4 python tests/parallel_worker.py RUNS_JSON

RUNS_JSON: [[config name[:preset], {dotted key: value}, workdir, null | [source workdir, step]],
...]. Each run trains configs/<name>.py (its preset), or a config file's path from the repository
root (experiments/custom/resnet_mnist.py), with its overrides in its workdir, in order;
a run with a source first copies that workdir without its checkpoints after `step`, so it
resumes from `step`.
"""

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import load_config, load_config_file, set_keys  # pylint: disable=g-import-not-at-top
from jaxdl import train  # pylint: disable=g-import-not-at-top


def main(runs):
  for name, overrides, workdir, source in runs:
    if source:
      src, step = source
      shutil.copytree(src, workdir)
      for entry in os.listdir(os.path.join(workdir, "checkpoints")):
        if entry.isdigit() and int(entry) > step:
          shutil.rmtree(os.path.join(workdir, "checkpoints", entry))
    name, _, preset = name.partition(":")
    config = (load_config_file(name, preset or None) if name.endswith(".py") else
              load_config(name, preset or None))
    train.train_and_evaluate(set_keys(config, overrides), workdir)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
