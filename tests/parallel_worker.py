"""Runs experiments in several parallel modes in this process; used by test_parallel.py.

  JAX_NUM_CPU_DEVICES=4 python tests/parallel_worker.py RUNS_JSON

RUNS_JSON: [[config name, {dotted key: value}, workdir, null | [source workdir, step]], ...].
Each run trains configs/<name>.py with its overrides in its workdir, in order; a run with a
source first copies that workdir without its checkpoints after `step`, so it resumes from `step`.
"""

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import load_config, set_keys  # pylint: disable=g-import-not-at-top
from jaxdl import train  # pylint: disable=g-import-not-at-top


def main(runs):
  for name, overrides, workdir, source in runs:
    if source:
      src, step = source
      shutil.copytree(src, workdir)
      for entry in os.listdir(os.path.join(workdir, "checkpoints")):
        if entry.isdigit() and int(entry) > step:
          shutil.rmtree(os.path.join(workdir, "checkpoints", entry))
    train.train_and_evaluate(set_keys(load_config(name), overrides), workdir)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
