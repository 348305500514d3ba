"""Runs one experiment in several parallel modes in this process; used by test_parallel.py.

  JAX_NUM_CPU_DEVICES=8 python tests/parallel_worker.py SPEC_JSON

SPEC_JSON: {"config": name, "overrides": {dotted key: value},
            "runs": [[workdir, {overrides}, null | [source workdir, step]]]}.
Each run trains the config with its overrides in its workdir, in order; a run with a source
first copies that workdir without its checkpoints after `step`, so it resumes from `step`.
"""

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import load_config  # pylint: disable=g-import-not-at-top
from jaxdl import train  # pylint: disable=g-import-not-at-top


def _set(config, key, value):
  *parents, leaf = key.split(".")
  for p in parents:
    config = config[p]
  config[leaf] = tuple(value) if isinstance(value, list) else value


def main(spec):
  for workdir, overrides, source in spec["runs"]:
    if source:
      src, step = source
      shutil.copytree(src, workdir)
      for name in os.listdir(os.path.join(workdir, "checkpoints")):
        if name.isdigit() and int(name) > step:
          shutil.rmtree(os.path.join(workdir, "checkpoints", name))
    config = load_config(spec["config"])
    for key, value in {**spec["overrides"], **overrides}.items():
      _set(config, key, value)
    train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
