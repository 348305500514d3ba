"""Start-up: seconds from the command to the first completed training dispatch, cold and warm.

Cold: an empty persistent compilation cache (a new --xla_cache_dir); warm: the same cache again.
The clock starts before `python -m jaxdl.main` is launched and stops when the loop prints its
'first ... took' line (written after the first dispatch's results are ready).

  flock /tmp/jaxdl-cpu.lock python experiments/bench/startup.py --data=../shared/data/mnist-10k
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def first_step_s(data: str, cache: str, extra: list[str]) -> tuple[float, str]:
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [sys.executable, "-m", "jaxdl.main", "--config=configs/mnist.py",
           f"--workdir={workdir}", f"--config.data.path={data}", f"--xla_cache_dir={cache}",
           "--config.num_train_steps=50", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    for line in proc.stdout:
      if line.startswith("first "):
        seconds = time.perf_counter() - start
        break
    proc.stdout.read()
    proc.wait()
    return seconds, line.strip()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  data = os.path.abspath(args.data)
  variants = {"MNIST default preset": []}
  rows = []
  for name, extra in variants.items():
    cold, warm = [], []
    for _ in range(args.repeats):
      with tempfile.TemporaryDirectory() as cache:
        s, line = first_step_s(data, cache, extra)
        cold.append(s)
        s, line = first_step_s(data, cache, extra)
        warm.append(s)
      print(f"{name}: cold {cold[-1]:.2f}s, warm {warm[-1]:.2f}s ({line})", flush=True)
    rows.append((name, cold, warm))
  print(f"\n| variant | cold cache (median of {args.repeats}) | warm cache | runs cold / warm |")
  print("|---|---|---|---|")
  for name, cold, warm in rows:
    print(f"| {name} | {statistics.median(cold):.2f} s | {statistics.median(warm):.2f} s | "
          f"{', '.join(f'{x:.1f}' for x in cold)} / {', '.join(f'{x:.1f}' for x in warm)} |")
  out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import jaxdl.train"],
                       cwd=REPO, capture_output=True, text=True).stderr.splitlines()
  rows = []
  for line in out:
    parts = line.split("|")
    if len(parts) == 3 and parts[1].strip().isdigit():
      rows.append((int(parts[1]), parts[2].rstrip()))
  print("\nimport jaxdl.train, largest cumulative import times (python -X importtime):")
  for us, name in sorted(rows, reverse=True)[:12]:
    print(f"  {us / 1e6:6.2f} s  {name}")


if __name__ == "__main__":
  main()
