"""Streaming MNIST against in-memory MNIST, side by side in one process: images/s of the :seed
preset trained on the same record directory with data.streaming=on and =off (alternating,
REPEATS times each), and the loader alone (StreamingBatches.batch, no training).

The records are MNIST's 10k sample (../shared/data/mnist-10k, 8,000 train digits) prepared by
`python -m jaxdl.prepare` into --out. A run's images/s is the mean of its train events'
examples_per_s after the first (which holds the compilation); the figures are the medians of
the runs and of the pairs' ratios (this shared machine's speed varies by up to 30% from one
run to the next, on both modes alike). Both modes train on the same
batches, so their metrics must be equal too: the script checks that losses and accuracies match.

  python experiments/data/stream_speed.py --out=/tmp/stream-speed [--epochs=3 --repeats=8]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MNIST = os.path.join(REPO, "..", "shared", "data", "mnist-10k")


def _events(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _numbers(events: list[dict]) -> list[dict]:
  """The events without their timings: what both modes must agree on."""
  return [{k: v for k, v in e.items() if not k.endswith("_per_s") and k not in ("time",)}
          for e in events if e.get("event") in ("train", "eval")]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=8)
  parser.add_argument("--loader_steps", type=int, default=2000)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  records_dir = os.path.join(args.out, "mnist-records")
  if not os.path.exists(records_dir):
    subprocess.run([sys.executable, "-m", "jaxdl.prepare", "--config=configs/mnist.py",
                    f"--config.data.path={MNIST}", f"--out={records_dir}"], cwd=REPO, check=True)

  from absl import logging  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from jaxdl import train  # pylint: disable=g-import-not-at-top
  from jaxdl.configs import mnist  # pylint: disable=g-import-not-at-top
  from jaxdl.data import records, stream  # pylint: disable=g-import-not-at-top
  from jaxdl.data.iterator import TrainBatches  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)

  def run(mode: str, repeat: int) -> tuple[float, list[dict]]:
    config = mnist.get_config("seed")
    config.data.path, config.data.streaming = records_dir, mode
    config.num_epochs, config.log_every = args.epochs, 125
    workdir = os.path.join(args.out, f"run-{mode}-{repeat}")
    shutil.rmtree(workdir, ignore_errors=True)
    train.train_and_evaluate(config, workdir)
    events = _events(workdir)
    rates = [e["examples_per_s"] for e in events if e.get("event") == "train"][1:]
    return statistics.mean(rates), _numbers(events)

  rates = {"off": [], "on": []}
  numbers = {}
  for repeat in range(args.repeats):
    # Pairs in alternating order (off, on; on, off; ...): a drift of the machine's speed over
    # the script's minutes falls on both modes alike.
    for mode in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
      rate, numbers[mode] = run(mode, repeat)
      rates[mode].append(rate)
      print(f"repeat {repeat} data.streaming={mode}: {rate:,.0f} images/s", flush=True)
    assert numbers["off"] == numbers["on"], "streaming and in-memory runs differ"

  meta = records.read_meta(records_dir)
  rows = records.RecordRows(records.Records(records_dir, "train", meta))
  loader = stream.StreamingBatches(TrainBatches(rows, 64, 0), workers=0, prefetch=4)
  loader.batch(0)
  loader.batch(1)  # starts the pipeline
  start = time.time()
  for step in range(2, 2 + args.loader_steps):
    loader.batch(step)
  loader_rate = args.loader_steps * 64 / (time.time() - start)
  loader.close()

  memory, streaming = statistics.median(rates["off"]), statistics.median(rates["on"])
  pair_ratios = [on / off for on, off in zip(rates["on"], rates["off"])]
  result = {
      "in_memory_images_per_s": memory, "streaming_images_per_s": streaming,
      "ratio": streaming / memory, "median_pair_ratio": statistics.median(pair_ratios),
      "pair_ratios": pair_ratios, "loader_images_per_s": loader_rate,
      "loader_over_step": loader_rate / memory, "runs": rates, "metrics_equal": True,
      "epochs": args.epochs, "repeats": args.repeats, "jax": jax.__version__,
      "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d")}
  print(json.dumps(result, indent=1))
  with open(os.path.join(args.out, "result.json"), "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
