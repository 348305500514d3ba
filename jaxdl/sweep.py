"""python -m jaxdl.sweep CONFIG KEY=V1,V2 [KEY=V ...] [--root=DIR] [-j N]: a grid of runs.

Each combination of the values runs `python -m jaxdl.main --config=CONFIG --workdir=ROOT/NAME
--config.KEY=V ...` in its own workdir, named from the keys with more than one value
('opt.lr=0.1,seed=2'); a key with one value is a setting shared by every run and not part of
the names. Runs go one after another, or N at a time with -j N; each one's output goes to
ROOT/NAME.log (ROOT may be gs://bucket/dir, like any workdir). Re-running the sweep skips
finished runs (a `final` event in metrics.jsonl) and resumes unfinished ones from their newest
checkpoint. At the end it prints the report table.

  experiments/sweep.sh configs/mnist.py 'opt.lr=0.1,0.03' 'seed=0,1,2' -j 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time

from jaxdl import errors, files, metrics, report
from jaxdl.errors import UserError


def parse_axes(axes: list[str]) -> list[tuple[str, list[str]]]:
  """['opt.lr=0.1,0.03', 'seed=0'] -> [('opt.lr', ['0.1', '0.03']), ('seed', ['0'])]."""
  out, seen = [], set()
  for axis in axes:
    key, sep, values = axis.partition("=")
    key = key.strip().removeprefix("--config.")
    items = [v.strip() for v in values.split(",")]
    if not sep or not key or not all(items):
      raise UserError(f"{axis!r}: expected KEY=VALUE[,VALUE...], e.g. 'opt.lr=0.1,0.03'")
    if key in seen:
      raise UserError(f"{axis!r}: {key} is given twice")
    seen.add(key)
    out.append((key, items))
  return out


def check_keys(config_arg: str, axes: list[tuple[str, list[str]]]) -> None:
  """Every key names a field of the config file (loaded as config_flags would)."""
  path, _, preset = config_arg.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such config file")
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    config = module.get_config(preset or None)
  except Exception as e:  # pylint: disable=broad-except  (whatever the config file raises)
    raise UserError(f"--config={config_arg}: {e}") from None
  for key, _ in axes:
    node = config
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node.keys():
        raise UserError(f"{key}: no such config key in {path}")
      node = node[part]


def run_name(combination: dict[str, str], axes: list[tuple[str, list[str]]]) -> str:
  """The workdir name: 'key=value' for every key with more than one value, joined by ','."""
  parts = [f"{key}={combination[key]}".replace(os.sep, "_")
           for key, values in axes if len(values) > 1]
  return ",".join(parts) or "run"


def status(workdir: str) -> str:
  """'finished' (a final event), 'unfinished' (something written) or 'new'."""
  events = metrics.read_events(os.path.join(workdir, "metrics.jsonl"))
  if any(e["event"] == "final" for e in events):
    return "finished"
  path = files.Path(workdir)  # a local directory or gs://
  return "unfinished" if path.is_dir() and any(path.iterdir()) else "new"


def _run_logged(command: list[str], log_path: str) -> tuple[int, str]:
  """Runs command with its output appended to log_path; (exit code, last non-empty line).

  A gs:// log cannot be appended to while the run writes it: the output goes to a local
  temporary file, added to the log object when the run ends."""
  local = not files.is_url(log_path)
  with (open(log_path, "a") if local else tempfile.NamedTemporaryFile("w+")) as log:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, check=False).returncode
    if not local:
      log.seek(0)
      old = files.read_text(log_path) if files.exists(log_path) else ""
      files.write_text(log_path, old + log.read())
  lines = [line.strip() for line in files.read_text(log_path).splitlines() if line.strip()]
  return code, lines[-1] if lines else ""


def sweep(config_arg: str, axes: list[tuple[str, list[str]]], root: str, jobs: int = 1,
          out=None) -> dict[str, str]:
  """Runs every combination not yet finished.

  Returns {workdir: 'skipped' | 'done' | 'failed' | 'stopped'} ('stopped': SIGTERM, resumable).
  """
  out = out or sys.stdout
  combinations = [dict(zip([k for k, _ in axes], values))
                  for values in itertools.product(*[v for _, v in axes])]
  files.Path(root).mkdir(parents=True, exist_ok=True)  # nothing to make on gs://
  lock = threading.Lock()
  def say(line):
    with lock:
      print(line, file=out, flush=True)

  def one(index: int, combination: dict[str, str]) -> tuple[str, str]:
    name = run_name(combination, axes)
    workdir = os.path.join(root, name)
    tag = f"[{index + 1}/{len(combinations)}] {name}"
    before = status(workdir)
    if before == "finished":
      say(f"{tag}: finished already, skipped")
      return workdir, "skipped"
    say(f"{tag}: {'resuming' if before == 'unfinished' else 'starting'} in {workdir}")
    command = [sys.executable, "-m", "jaxdl.main", f"--config={config_arg}",
               f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in combination.items())]
    log_path = os.path.join(root, f"{name}.log")
    start = time.time()
    code, last = _run_logged(command, log_path)
    if code != 0:
      say(f"{tag}: FAILED (exit {code}): {last} (log: {log_path})")
      return workdir, "failed"
    if status(workdir) != "finished":  # exit 0 without a final event: stopped by SIGTERM
      say(f"{tag}: stopped before its end (log: {log_path}); re-run the sweep to resume it")
      return workdir, "stopped"
    say(f"{tag}: done in {time.time() - start:.0f}s (log: {log_path})")
    return workdir, "done"

  pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
  try:
    results = dict(pool.map(lambda args: one(*args), enumerate(combinations)))
  except KeyboardInterrupt:  # Ctrl-C reached the runs too; start no new one
    pool.shutdown(wait=True, cancel_futures=True)
    raise
  pool.shutdown()
  return results


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m jaxdl.sweep", description=__doc__.split("\n")[0],
      epilog="example: experiments/sweep.sh configs/mnist.py 'opt.lr=0.1,0.03' 'seed=0,1,2'")
  parser.add_argument("config", help="config file, optionally :preset (as --config)")
  parser.add_argument("axes", nargs="+", metavar="KEY=V1,V2",
                      help="config overrides; each comma-separated value is one run")
  parser.add_argument("--root", default="",
                      help="directory of the sweep's workdirs (runs/sweep-<config name>)")
  parser.add_argument("-j", "--jobs", type=int, default=1, help="runs at a time (1)")
  args = parser.parse_args(argv)
  with errors.reported("re-run the same command to resume the sweep"):
    if args.jobs < 1:
      raise UserError(f"-j {args.jobs}: must be >= 1")
    axes = parse_axes(args.axes)
    check_keys(args.config, axes)
    stem = os.path.splitext(os.path.basename(args.config.split(":")[0]))[0]
    preset = args.config.partition(":")[2]
    root = args.root or os.path.join("runs", f"sweep-{stem}" + (f"-{preset}" if preset else ""))
    results = sweep(args.config, axes, root, args.jobs)
    runs = [report.load_run(w) for w in results
            if files.exists(os.path.join(w, "config.json"))]
    if runs:
      print()
      print(report.table(runs))
    failed = [w for w, r in results.items() if r in ("failed", "stopped")]
    if failed:
      errors.fail(f"{len(failed)} of {len(results)} runs failed or stopped; re-run the same "
                  "command to retry or resume them")


if __name__ == "__main__":
  main()
