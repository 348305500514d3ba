"""Peak memory of an image run against the record set's size: MNIST-like digits prepared as
records (python -m jaxdl.prepare) and streamed (data.streaming=on), against the same records
loaded whole (data.streaming=off).

The sets are derived from MNIST's 10k sample (../shared/data/mnist-10k): its 8,000 training
digits, each pass shifted by a seeded random offset of up to 3 pixels (zero fill), repeated
until the IDX files hold SIZE GB of images; the test split is the sample's 2,000. Not real data
of that size: only its shape and its pixels' statistics are, which is what memory depends on.

For each size: the IDX files written, `python -m jaxdl.prepare` (wall time, peak RSS), then
`python -m jaxdl.main` with the :seed preset for STEPS steps on the records streamed (peak RSS,
images/s) and, with --in_memory_up_to, loaded whole. Each command runs in a fresh wrapper
process whose RUSAGE_CHILDREN is that command's alone.

  python experiments/data/image_memory.py --out=/tmp/image-memory --sizes=0.3,3 --in_memory_up_to=3
"""

import argparse
import gzip
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lm_memory import REPO, last_rate, measure, prepare_once  # pylint: disable=g-import-not-at-top,wrong-import-position

MNIST = os.path.join(REPO, "..", "shared", "data", "mnist-10k")


def _read_idx(path: str) -> np.ndarray:
  with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
    raw = f.read()
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(stem: str) -> str:
  return next(os.path.join(MNIST, n) for n in os.listdir(MNIST) if n.startswith(stem))


def make_set(directory: str, gigabytes: float) -> int:
  """Writes the four IDX files: train = shifted passes over the sample's digits, streamed to
  disk pass by pass; test = the sample's own. Returns the training examples written."""
  os.makedirs(directory)
  images, labels = _read_idx(_find("train-images")), _read_idx(_find("train-labels"))
  n = int(gigabytes * 1e9) // (28 * 28)
  rng = np.random.default_rng(0)
  with open(os.path.join(directory, "train-images-idx3-ubyte"), "wb") as fi, \
       open(os.path.join(directory, "train-labels-idx1-ubyte"), "wb") as fl:
    fi.write(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28)))
    fl.write(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big"))
    written = 0
    while written < n:
      dy, dx = rng.integers(-3, 4, 2)
      shifted = np.roll(images, (dy, dx), axis=(1, 2))
      if dy > 0:
        shifted[:, :dy] = 0
      elif dy < 0:
        shifted[:, dy:] = 0
      if dx > 0:
        shifted[:, :, :dx] = 0
      elif dx < 0:
        shifted[:, :, dx:] = 0
      take = min(len(images), n - written)
      fi.write(shifted[:take].tobytes())
      fl.write(labels[:take].tobytes())
      written += take
  for stem in ("t10k-images", "t10k-labels"):
    shutil.copy(_find(stem), directory)
  return n


def train(data: str, workdir: str, steps: int, mode: str) -> tuple[float, float, str]:
  """(peak RSS GB, images/s of the last train event, final line) of a fresh :seed run."""
  shutil.rmtree(workdir, ignore_errors=True)
  _, peak, out = measure([
      sys.executable, "-m", "jaxdl.main", "--config=configs/mnist.py:seed",
      f"--workdir={workdir}", f"--config.data.path={data}", f"--config.num_train_steps={steps}",
      f"--config.data.streaming={mode}", "--config.data.memory_budget_gb=100",
      f"--config.log_every={steps // 4}"])
  return peak, last_rate(workdir, "examples_per_s"), out.strip().splitlines()[-1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--sizes", default="0.3,3", help="training images, GB")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--in_memory_up_to", type=float, default=3.0,
                      help="also run the records loaded whole for sizes up to this many GB")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  print("| images | examples | prepare: time, peak RSS | streamed: peak RSS, images/s | "
        "loaded whole: peak RSS, images/s |")
  print("|---|---|---|---|---|")
  for size in (float(s) for s in args.sizes.split(",")):
    idx_dir = os.path.join(args.out, f"mnist-{size:g}GB-idx")
    records = os.path.join(args.out, f"mnist-{size:g}GB-records")
    if not os.path.exists(records):
      make_set(idx_dir, size)
    prep = prepare_once("configs/mnist.py:seed", idx_dir, records)
    shutil.rmtree(idx_dir, ignore_errors=True)  # the records hold it now
    with open(os.path.join(records, "jaxdl-records.json")) as f:
      n = json.load(f)["splits"]["train"]["count"]
    runs = os.path.join(args.out, "runs")
    peak, rate, _ = train(records, os.path.join(runs, f"on-{size:g}"), args.steps, "on")
    row = f"| {n * 784 / 1e9:.2f} GB | {n:,} | {prep} | {peak:.2f} GB, {rate:,.0f} |"
    if size <= args.in_memory_up_to:
      m_peak, m_rate, _ = train(records, os.path.join(runs, f"off-{size:g}"), args.steps, "off")
      row += f" {m_peak:.2f} GB, {m_rate:,.0f} |"
    else:
      row += " not run |"
    print(row, flush=True)


if __name__ == "__main__":
  main()
