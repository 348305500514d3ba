"""Peak memory of a language-model run against the corpus's size: prepared token ids read by
offset (python -m jaxdl.prepare, data.path=DIR) against the text loaded whole (data.path=FILE).

Corpora are derived from Tiny Shakespeare: its lines shuffled by a seeded permutation, pass
after pass, until the file holds SIZE GB of text. Not real data of that size: only its size
and its characters are, which is what memory depends on.

For each size: the corpus written, `python -m jaxdl.prepare` (wall time, peak RSS), then
`python -m jaxdl.main` with the :nanogpt_cpu preset for STEPS steps on the prepared directory
(peak RSS, tokens/s), and with --in_memory_up_to, the same run on the text file itself. Each
command runs in a fresh wrapper process whose RUSAGE_CHILDREN is that command's alone.

  python experiments/data/lm_memory.py --out=/tmp/lm-memory --sizes=0.1,2 --in_memory_up_to=0.5
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAKESPEARE = os.path.join(REPO, "..", "shared", "data", "tiny_shakespeare", "input.txt")
# A wrapper that runs a command and prints its peak RSS (KiB): the max over this one child.
_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
         "sys.exit(r.returncode)")


def make_corpus(path: str, gigabytes: float) -> int:
  """Writes Shakespeare's lines, shuffled again for each pass, until `gigabytes` of text."""
  with open(SHAKESPEARE, encoding="utf-8") as f:
    lines = f.read().splitlines(keepends=True)
  target, written, rng = int(gigabytes * 1e9), 0, np.random.default_rng(0)
  with open(path, "w", encoding="utf-8", newline="") as f:
    while written < target:
      block = "".join(lines[i] for i in rng.permutation(len(lines)))[:target - written]
      f.write(block)
      written += len(block)
  return written


def measure(cmd: list[str]) -> tuple[float, float, str]:
  """(seconds, peak RSS in GB, stdout) of one command."""
  start = time.time()
  done = subprocess.run([sys.executable, "-c", _PEAK, *cmd], cwd=REPO, capture_output=True,
                        text=True)
  if done.returncode:
    raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
  peak_kib = int(done.stderr.strip().splitlines()[-1])
  return time.time() - start, peak_kib * 1024 / 1e9, done.stdout


def prepare_once(config: str, data: str, out: str) -> str:
  """The table's prepare cell: 'T s, P GB' of `python -m jaxdl.prepare` writing `out` from
  `data`, or '(reused)' where `out` was written by an earlier run of the script."""
  if os.path.exists(out):
    return "(reused)"
  seconds, peak, _ = measure([sys.executable, "-m", "jaxdl.prepare", f"--config={config}",
                              f"--config.data.path={data}", f"--out={out}"])
  return f"{seconds:.0f} s, {peak:.2f} GB"


def last_rate(workdir: str, key: str) -> float:
  """`key` (tokens_per_s, examples_per_s) of the run's last train event that has it."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    events = [json.loads(line) for line in f]
  return [e[key] for e in events if e["event"] == "train" and key in e][-1]


def train(data: str, workdir: str, steps: int) -> tuple[float, float, float, str]:
  """(seconds, peak RSS GB, tokens/s of the last train event, final line) of a fresh run."""
  shutil.rmtree(workdir, ignore_errors=True)
  seconds, peak, out = measure([
      sys.executable, "-m", "jaxdl.main", "--config=configs/tiny_lm.py:nanogpt_cpu",
      f"--workdir={workdir}", f"--config.data.path={data}", f"--config.num_train_steps={steps}",
      f"--config.eval_every={steps // 2}", "--config.data.eval_windows=64"])
  return seconds, peak, last_rate(workdir, "tokens_per_s"), out.strip().splitlines()[-1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--sizes", default="0.1,2", help="corpus sizes, GB of text")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--in_memory_up_to", type=float, default=0.5,
                      help="also run the text in memory for sizes up to this many GB")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  print("| text | prepare: time, peak RSS | prepared run: peak RSS, tok/s | in-memory run: "
        "peak RSS, tok/s |")
  print("|---|---|---|---|")
  for size in (float(s) for s in args.sizes.split(",")):
    text = os.path.join(args.out, f"shakespeare-{size:g}GB.txt")
    prepared = os.path.join(args.out, f"shakespeare-{size:g}GB-tokens")
    if not os.path.exists(text):
      make_corpus(text, size)
    prep = prepare_once("configs/tiny_lm.py:nanogpt_cpu", text, prepared)
    runs = os.path.join(args.out, "runs")
    _, peak, rate, _ = train(prepared, os.path.join(runs, f"prepared-{size:g}"), args.steps)
    row = f"| {os.path.getsize(text) / 1e9:.2f} GB | {prep} | {peak:.2f} GB, {rate:,.0f} |"
    if size <= args.in_memory_up_to:
      _, m_peak, m_rate, _ = train(text, os.path.join(runs, f"memory-{size:g}"), args.steps)
      row += f" {m_peak:.2f} GB, {m_rate:,.0f} |"
    else:
      row += " not run |"
    print(row, flush=True)


if __name__ == "__main__":
  main()
