"""Fine-tuning, measured: the SST-2 classifier's encoder with a new head, on small labelled
slices of a second text set, against the same model trained from scratch on each slice.

The second set is SST-2's test split (1,821 labelled sentences here): the source run
(configs/text_classifier.py on the train split) never trains on it, and selects nothing with it
(its evaluations are of dev). A seeded shuffle puts 821 sentences in the slices' common test
set and draws each training slice (100, 300, 1,000 sentences) from the other 1,000. Same task
and labels as the source; what is new is the head (fresh init: init_from_keys leaves
`params._Head_0` out) and the amount of data.

For each slice, two runs of the same config and steps: `finetune` (init_from=SOURCE, which
also encodes with the source's vocabulary) and `scratch` (its vocabulary built from the slice,
as a user training from scratch would). The source model itself (its own head, no training on
the slice) is measured on the same test set for reference.

  python experiments/text_classifier/finetune.py --source=runs/text_classifier \
      --data=../shared/data/sst2 --out=runs/finetune
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST = 821
HEAD = r"^(?!params\._Head_0\.)"  # every weight but the classifier head's


def _rows(path):
  with open(path, newline="") as f:
    return [(r["sentence"], int(r["label"])) for r in csv.DictReader(f, delimiter="\t")]


def _write(path, rows):
  with open(path, "w") as f:
    f.write("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))


def make_slices(data: str, out: str, sizes: list[int]) -> dict[int, str]:
  """{size: directory with train.tsv (the slice) and test.tsv (the common test set)}."""
  rows = _rows(os.path.join(data, "test.tsv"))
  order = np.random.default_rng(0).permutation(len(rows))
  test, pool = [rows[i] for i in order[:TEST]], [rows[i] for i in order[TEST:]]
  dirs = {}
  for size in sizes:
    dirs[size] = os.path.join(out, f"slice{size}")
    os.makedirs(dirs[size], exist_ok=True)
    _write(os.path.join(dirs[size], "train.tsv"), pool[:size])
    _write(os.path.join(dirs[size], "test.tsv"), test)
  return dirs


def train(workdir: str, data: str, steps: int, extra: list[str]) -> tuple[float, float]:
  """(test accuracy, seconds) of one run of configs/text_classifier.py."""
  start = time.time()
  subprocess.run([sys.executable, "-m", "jaxdl.main", "--config=configs/text_classifier.py",
                  f"--workdir={workdir}", f"--config.data.path={data}",
                  f"--config.num_train_steps={steps}", f"--config.eval_every={steps}",
                  f"--config.checkpoint_every={steps}", *extra], cwd=REPO, check=True,
                 stdout=subprocess.DEVNULL)
  seconds = time.time() - start
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    final = [json.loads(line) for line in f if '"final"' in line][-1]
  return final["test_accuracy"], seconds


def source_accuracy(source: str, data: str) -> float:
  """The source model, its own head, on the common test set."""
  sys.path.insert(0, REPO)
  import jaxdl  # pylint: disable=g-import-not-at-top
  rows = _rows(os.path.join(data, "test.tsv"))
  run = jaxdl.load(source)
  predicted = run.predict([s for s, _ in rows])  # [(label name, probability)]
  return float(np.mean([name == str(y) for (name, _), (_, y) in zip(predicted, rows)]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--source", required=True, help="the SST-2 run's workdir")
  parser.add_argument("--data", default="../shared/data/sst2")
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=300, help="train steps of every run")
  parser.add_argument("--sizes", default="100,300,1000", help="training slices' sentences")
  args = parser.parse_args()
  source, out = os.path.abspath(args.source), os.path.abspath(args.out)
  sizes = [int(n) for n in args.sizes.split(",")]
  dirs = make_slices(os.path.abspath(args.data), out, sizes)
  print(f"source model (its own head) on the {TEST} test sentences: "
        f"{100 * source_accuracy(source, dirs[sizes[0]]):.2f}%")
  print("| train sentences | scratch | fine-tuned (new head) | gain | times |")
  print("|---|---|---|---|---|")
  for size in sizes:
    scratch, t0 = train(f"{out}/scratch{size}", dirs[size], args.steps, [])
    tuned, t1 = train(f"{out}/finetune{size}", dirs[size], args.steps,
                      [f"--config.init_from={source}", f"--config.init_from_keys={HEAD}"])
    print(f"| {size:,} | {100 * scratch:.2f}% | {100 * tuned:.2f}% | "
          f"{100 * (tuned - scratch):+.2f} | {t0:.0f} s, {t1:.0f} s |", flush=True)


if __name__ == "__main__":
  main()
