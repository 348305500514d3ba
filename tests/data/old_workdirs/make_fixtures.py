"""Makes the old-workdir fixtures that tests/test_old_workdirs.py resumes. Runs against the OLD code.

These fixtures are workdirs written by jaxdl as it was BEFORE the workdir/checkpoint redesign,
stopped mid-run; the test checks that today's code resumes each one to exactly the result of an
uninterrupted run. They were made by running this script with the pre-redesign checkout
(commit recorded in each fixture.json) on the import path, from a checkout of this repository:

  PYTHONPATH=/path/to/pre-redesign/checkout python tests/data/old_workdirs/make_fixtures.py OUTDIR

It imports `jaxdl` (and the old checkout's tests/conftest.py, for load_config and write_play)
from PYTHONPATH, never from this repository: run against today's code it would make fixtures of
today's format, which is not what the test is for. Do not regenerate them casually: the point
is that they stay what the old code wrote.

For each task it writes OUTDIR/<name>/:
  data/         the task's tiny input data (real files, read through data.path);
  workdir/      the old code's run of a tiny config derived from the real config file, stopped by
                a KeyboardInterrupt raised as step INTERRUPT_AT's batch is fetched (not a clean
                save): steps 0..21 ran, the newest checkpoint left is step 16 (keep 1), and
                metrics.jsonl (and TensorBoard) hold the step-20 train and eval events, which a
                resumed run must drop and redo;
  fixture.json  the config file and preset, the overrides (dotted keys set in order on
                get_config(preset), then data.path = the data directory), the interrupt step,
                the old git commit and the package versions. tests/test_old_workdirs.py builds
                its config from this file: it is the one source of truth for the overrides.

The workdirs are left exactly as the old code left them (config.json holds the absolute data.path
used here; the test rewrites it in its copy).
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys

import jaxdl

OLD_REPO = os.path.dirname(os.path.dirname(os.path.abspath(jaxdl.__file__)))
THIS_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
if os.path.realpath(OLD_REPO) == os.path.realpath(THIS_REPO) and __name__ == "__main__":
  sys.exit(f"jaxdl was imported from this checkout ({OLD_REPO}); put the pre-redesign checkout "
           f"first on PYTHONPATH (see the docstring)")
sys.path.insert(0, os.path.join(OLD_REPO, "tests"))
os.environ.setdefault("JAXDL_TEST_NO_CACHE", "1")  # conftest: no compilation cache here

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

import conftest  # pylint: disable=g-import-not-at-top,wrong-import-position  (the old one)
from jaxdl import data, train  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxdl.data import images  # pylint: disable=g-import-not-at-top,wrong-import-position

INTERRUPT_AT = 22  # steps 0..21 ran; checkpoints at 8 and 16 (keep 1: only 16 is left)

# The schedule of conftest.short_schedule, with one checkpoint kept (a small fixture).
SCHEDULE = {"num_train_steps": 24, "log_every": 5, "eval_every": 10, "checkpoint_every": 8,
            "keep_checkpoints": 1}

FIXTURES = {
    # configs/mnist.py:seed: plain SGD, so the checkpoint holds no optimizer state; constant lr,
    # so no warmup. The CNN's 843,658 float32 params are the checkpoint's ~3.4 MB.
    "image_classification": {
        "config": "mnist", "preset": "seed",
        "overrides": {"batch_size": 16, "eval_batch_size": 32, **SCHEDULE},
    },
    # configs/text_classifier.py (bi-LSTM, attention pooling, dropouts, word dropout, SGD with
    # momentum, EMA 0.999 of the params: all in the checkpoint) at tiny widths.
    "text_classification": {
        "config": "text_classifier", "preset": "",
        "overrides": {"model.embed_dim": 16, "model.hidden_dim": 16, "model.head_dim": 16,
                      "data.max_len": 16, "batch_size": 16, "eval_batch_size": 32,
                      **SCHEDULE, "opt.warmup_steps": 4},
    },
    # configs/tiny_lm.py shrunk as tests/conftest.py's tiny_lm_config does; dropout 0.1 so the
    # step rng matters.
    "language_model": {
        "config": "tiny_lm", "preset": "",
        "overrides": {"model.num_layers": 2, "model.num_heads": 2, "model.width": 32,
                      "model.block_size": 16, "model.dropout": 0.1, "batch_size": 8,
                      "eval_batch_size": 16, "data.eval_windows": 40,
                      **SCHEDULE, "opt.warmup_steps": 4},
    },
}


def make_config(spec: dict, data_dir: str):
  config = conftest.load_config(spec["config"], spec["preset"] or None)
  for key, value in spec["overrides"].items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = getattr(node, part)
    setattr(node, leaf, value)
  config.data.path = data_dir
  return config


def write_mnist(directory: str, num_train: int = 64, num_test: int = 32, seed: int = 0) -> None:
  """Four gzipped IDX files of made-up 28x28 'digits': a few bright strokes on black."""
  rng = np.random.default_rng(seed)
  for split, n, stem in (("train", num_train, "train"), ("test", num_test, "t10k")):
    imgs = np.zeros((n, 28, 28), np.uint8)
    for img in imgs:
      for _ in range(int(rng.integers(2, 5))):  # strokes: short random walks of bright pixels
        y, x = rng.integers(4, 24, 2)
        for _ in range(int(rng.integers(8, 20))):
          img[y, x] = rng.integers(128, 256)
          y = int(np.clip(y + rng.integers(-1, 2), 0, 27))
          x = int(np.clip(x + rng.integers(-1, 2), 0, 27))
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images.write_idx(os.path.join(directory, f"{stem}-images-idx3-ubyte.gz"), imgs)
    images.write_idx(os.path.join(directory, f"{stem}-labels-idx1-ubyte.gz"), labels)
  del split


POS = ["good", "great", "lovely", "superb", "fun", "moving"]
NEG = ["bad", "awful", "dull", "boring", "poor", "mess"]
FILLER = ["the", "film", "is", "a", "very", "movie", "plot", "and", "it", "was", "not", "quite"]


def write_sst(directory: str) -> None:
  """GLUE SST-2-style train.tsv (80 rows) and dev.tsv (24): short made-up sentences."""
  for split, n, seed in (("train", 80, 0), ("dev", 24, 1)):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
      label = int(rng.integers(0, 2))
      words = list(rng.choice(FILLER, int(rng.integers(1, 12))))
      words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POS if label else NEG)))
      rows.append(f"{' '.join(words)}\t{label}\n")
    with open(os.path.join(directory, f"{split}.tsv"), "w", encoding="utf-8") as f:
      f.write("sentence\tlabel\n" + "".join(rows))


def write_data(name: str, directory: str) -> None:
  if name == "image_classification":
    write_mnist(directory)
  elif name == "text_classification":
    write_sst(directory)
  else:
    conftest.write_play(os.path.join(directory, "play.txt"), num_lines=200, seed=0)


def run_interrupted(config, workdir: str, at_step: int) -> None:
  """train_and_evaluate until Ctrl-C arrives (KeyboardInterrupt) as step at_step's batch is
  fetched, whatever the task's train iterator (conftest.interrupt_at, without pytest)."""
  real_load = data.load

  def load(config, workdir):
    dataset = real_load(config, workdir)
    real_batch = dataset.train.batch

    def interrupting(step):
      if step == at_step:
        raise KeyboardInterrupt
      return real_batch(step)
    dataset.train.batch = interrupting  # shadows the method on this one iterator
    return dataset

  data.load = load
  try:
    train.train_and_evaluate(config, workdir)
  except KeyboardInterrupt:
    pass
  else:
    raise AssertionError("the run was not interrupted")
  finally:
    data.load = real_load


def versions() -> dict:
  return {name: importlib.metadata.version(name)
          for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")}


def main(outdir: str) -> None:
  commit = subprocess.run(["git", "-C", OLD_REPO, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
  for name, spec in FIXTURES.items():
    root = os.path.abspath(os.path.join(outdir, name))
    if os.path.exists(root):
      shutil.rmtree(root)
    data_dir, workdir = os.path.join(root, "data"), os.path.join(root, "workdir")
    os.makedirs(data_dir)
    write_data(name, data_dir)
    config = make_config(spec, data_dir)
    assert config.task == name, (config.task, name)
    run_interrupted(config, workdir, INTERRUPT_AT)
    steps = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    assert steps == ["16"], steps
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      assert max(json.loads(line)["step"] for line in f) > 16
    record = {
        "task": name,
        "config_file": f"configs/{spec['config']}.py", "config": spec["config"],
        "preset": spec["preset"],
        "overrides": spec["overrides"],
        "data_path": "data (this fixture's data directory; config.json holds the absolute path "
                     "it had when generated)",
        "interrupted_at_step": INTERRUPT_AT,
        "latest_checkpoint": 16,
        "old_git_commit": commit,
        "versions": versions(),
        "generated_by": "tests/data/old_workdirs/make_fixtures.py, run with PYTHONPATH=<the "
                        "checkout at old_git_commit>",
    }
    with open(os.path.join(root, "fixture.json"), "w") as f:
      f.write(json.dumps(record, indent=2) + "\n")
    print(f"{name}: wrote {root}")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(__doc__)
  main(sys.argv[1])
