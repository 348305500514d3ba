"""Peak memory of `python -m jaxdl.prepare` for the text classifier against the table's size:
the writer reads the texts as it encodes them (three reads of the training file: its labels,
the vocabulary's words, the encoding), so a table larger than memory converts.

Tables are derived from SST-2 (../shared/data/sst2): its training sentences with their labels,
shuffled by a seeded permutation, pass after pass, until train.tsv holds SIZE GB; dev.tsv is
SST-2's own. Not real data of that size: only its size, its words and its labels are, which is
what memory depends on (the vocabulary is SST-2's, about 15,000 words, at every size).

For each size: the table written, then `python -m jaxdl.prepare` of the text classifier's
config on it (data.validation_size carves a validation split, as a table without a dev split
would need), in a fresh wrapper process: wall time and peak RSS.

  python experiments/data/text_prepare.py --out=/tmp/text-prepare --sizes=0.1,1
"""

import argparse
import os
import shutil
import sys

import numpy as np

from lm_memory import REPO, measure

SST2 = os.path.join(REPO, "..", "shared", "data", "sst2")


def make_table(directory: str, gigabytes: float) -> int:
  """Writes train.tsv of SST-2's training rows, reshuffled each pass, up to `gigabytes`, and
  copies dev.tsv; returns the training rows written."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(SST2, "train.tsv"), encoding="utf-8", newline="") as f:
    header, *rows = f.read().split("\n")
  rows = [row + "\n" for row in rows if row.strip()]
  target, written, count, rng = int(gigabytes * 1e9), 0, 0, np.random.default_rng(0)
  with open(os.path.join(directory, "train.tsv"), "w", encoding="utf-8", newline="") as f:
    f.write(header + "\n")
    while written < target:
      for i in rng.permutation(len(rows)):
        f.write(rows[i])
        written += len(rows[i].encode("utf-8"))
        count += 1
        if written >= target:
          break
  shutil.copy(os.path.join(SST2, "dev.tsv"), directory)
  return count


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--sizes", default="0.1,1", help="train.tsv sizes, GB")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  print("| train.tsv | rows | prepare: wall time, peak RSS | records |")
  print("|---|---|---|---|")
  for size in [float(s) for s in args.sizes.split(",")]:
    table = os.path.join(args.out, f"sst2-{size:g}GB")
    rows = make_table(table, size)
    out = os.path.join(args.out, f"sst2-{size:g}GB-records")
    shutil.rmtree(out, ignore_errors=True)
    seconds, peak, _ = measure([
        sys.executable, "-m", "jaxdl.prepare", "--config=configs/text_classifier.py",
        f"--config.data.path={table}", "--config.data.validation_size=0.01", f"--out={out}"])
    written = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"| {size:g} GB | {rows:,} | {seconds:.0f} s, {peak:.2f} GB | {written / 1e9:.2f} GB |",
          flush=True)
    shutil.rmtree(table)


if __name__ == "__main__":
  main()
