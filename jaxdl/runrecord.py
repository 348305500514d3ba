"""WORKDIR/run.json: what ran, where, with which code, from when to when, and what it reached.

{"config": latest resolved config, "final": latest final metrics (null until a segment ends),
 "segments": [one per start of the command: a fresh run, then each resume]}. A segment holds the
command line, the git commit and dirty flag of the jaxdl checkout, package versions, devices,
host, its start and end time and steps, the last checkpoint it committed, its final metrics and
its config. `end_time` null: the
process was killed; `end_time` set with `final` null: stopped by SIGTERM/SIGINT after saving,
or, with `error` set, by that error (a diverged loss).
Written atomically by process 0.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from typing import Any

from absl import logging
import jax

from jaxdl import files
from jaxdl.errors import first_line

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def command_line(argv: list[str] | None = None) -> str:
  """The command as typed: `python -m jaxdl.main ...` when run as a module, else argv joined."""
  argv = list(sys.argv if argv is None else argv)
  if argv and argv[0].endswith(os.path.join("jaxdl", "main.py")):
    argv = ["python", "-m", "jaxdl.main", *argv[1:]]
  return shlex.join(argv)


def git_state(directory: str | None = None) -> dict[str, Any]:
  """{'commit': sha, 'dirty': bool} of the checkout holding jaxdl; nulls outside a git checkout."""
  directory = directory or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  def git(*args):
    return subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()
  try:
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
  except (OSError, subprocess.SubprocessError):  # no git, not a checkout, or too slow
    return {"commit": None, "dirty": None}


def versions() -> dict[str, str | None]:
  out = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def begin(workdir: str, config: dict[str, Any], start_step: int, num_steps: int,
          init_from: dict[str, Any] | None = None) -> None:
  """Appends this run's segment (a fresh run or a resume) to WORKDIR/run.json; a fresh run
  started from earlier weights names them (`init_from`: initfrom.Source.record)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "run.json")
  record = _read(path) if files.exists(path) else None
  record = record or {"segments": []}
  device = jax.devices()[0]
  record["config"] = config
  record["segments"].append({
      "command": command_line(),
      "cwd": os.getcwd(),
      "git": git_state(),
      "versions": versions(),
      "devices": {"kind": device.device_kind, "platform": device.platform,
                  "count": jax.device_count(), "local_count": jax.local_device_count()},
      "process_count": jax.process_count(),
      "host": socket.gethostname(),
      "start_time": now(), "start_step": start_step, "num_steps": num_steps,
      "end_time": None, "end_step": None, "last_checkpoint": None, "final": None,
      "config": config,
      **({"init_from": init_from} if init_from else {}),
  })
  record.setdefault("final", None)
  files.write_json(path, record)


def saved(workdir: str, step: int) -> None:
  """Names `step` the latest segment's last committed checkpoint (history.py reads it: a record
  whose checkpoints are gone is then known to have had some)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "run.json")
  record = _read(path) if files.exists(path) else None
  if record and record["segments"]:
    record["segments"][-1]["last_checkpoint"] = step
    files.write_json(path, record)


def _read(path: str) -> dict[str, Any] | None:
  """run.json's record; None, with the damaged file kept aside beside it and a WARNING, when it
  is not a record (a damaged disk, a hand edit gone wrong): it never stops a run."""
  try:
    record = json.loads(files.read_text(path))
    if isinstance(record, dict) and isinstance(record.get("segments"), list):
      return record
    why = "not a run record"
  except (ValueError, UnicodeDecodeError) as e:
    why = first_line(e)
  kept = f"{path}.damaged-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
  files.Path(path).rename(kept)  # every byte kept: a rename, locally or on gs://
  logging.warning("%s is damaged (%s); kept as %s, and a new record starts", path, why, kept)
  return None


def end(workdir: str, step: int, final: dict[str, Any] | None, error: str | None = None) -> None:
  """Closes the latest segment: end time and step, and the final metrics (None for a run
  stopped by SIGTERM/SIGINT after saving its checkpoint, or by `error`)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "run.json")
  record = files.read_json(path)
  record["segments"][-1].update(end_time=now(), end_step=step, final=final,
                                **({"error": error} if error else {}))
  if final is not None:
    record["final"] = final
  files.write_json(path, record)
