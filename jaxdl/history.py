"""A run's history: what a fresh start may not erase, and how --restart keeps it aside.

A record is never erased in silence. A workdir that holds the record of a run that saved a
checkpoint (run.json names the last one committed, or a resumed or finished run; metrics.jsonl
has a `final` event; checkpoints were moved aside as damaged) but has no checkpoint to resume is
refused (`check_record`): a fresh start would empty its history. A run killed before its first
checkpoint committed left nothing that the fresh start does not redo, event for event, and is
not refused (a scheduler that restarts a killed job relies on that). Its events may lie past
the first checkpoint's step: saves are asynchronous, and the kill may cut the first one short.
`--restart` keeps everything the workdir holds in WORKDIR/previous-<time>/ (`keep_aside`, under
the run's lease) and starts afresh; nothing is ever deleted.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax

from jaxdl import files, metrics, parallel, runrecord
from jaxdl.errors import UserError

PREVIOUS = "previous-"  # WORKDIR/previous-<time>/: a record that --restart kept aside


def _events(workdir: str) -> list[dict[str, Any]]:
  try:
    return metrics.read_events(os.path.join(workdir, "metrics.jsonl"))
  except (OSError, ValueError):  # unreadable: judged by the other files
    return []


def _segments(workdir: str) -> list[dict[str, Any]]:
  try:
    record = files.read_json(os.path.join(workdir, "run.json"))
    return [s for s in record.get("segments", []) if isinstance(s, dict)]
  except (OSError, ValueError, AttributeError):
    return []


def record_evidence(workdir: str) -> list[str]:
  """What in WORKDIR shows a run that saved a checkpoint, now that none is left to resume
  (deleted to save space, or every one moved aside as damaged); [] for an empty workdir or the
  record of a run killed before its first checkpoint, which a fresh start redoes exactly."""
  damaged = sorted(p.name for p in files.Path(workdir, "checkpoints").glob("damaged-*"))
  events = _events(workdir)
  starts = _segments(workdir)
  saved = [s["last_checkpoint"] for s in starts if isinstance(s.get("last_checkpoint"), int)]
  # Records made before run.json named the last checkpoint: a resumed run, or one that ended
  # cleanly (finished, or stopped by a signal after saving), saved one.
  older = any(s.get("start_step") or (s.get("end_time") and not s.get("error"))
              for s in starts)
  finished = any(e["event"] == "final" for e in events)
  if not (damaged or saved or older or finished):
    return []
  found = []
  if events:
    found.append(f"metrics.jsonl: {len(events)} events up to step "
                 f"{max(e['step'] for e in events)}{', the run finished' if finished else ''}")
  if saved or older:
    found.append(f"run.json: {len(starts)} start(s), "
                 + (f"checkpoints saved up to step {max(saved)}" if saved else
                    "which saved checkpoints"))
  if damaged:
    found.append(f"checkpoints moved aside as damaged: {', '.join(damaged)}")
  return found


def refusal(workdir: str, found: list[str]) -> str:
  return (f"{workdir} holds the record of a run ({'; '.join(found)}) but no checkpoint to "
          f"resume; re-run with --restart to keep that record in "
          f"{os.path.join(workdir, PREVIOUS)}<time>/ and start afresh, or use another --workdir")


def check_record(workdir: str) -> None:
  """Refuses (UserError) a fresh start over a run's record; see `record_evidence`."""
  found = record_evidence(workdir)
  if found:
    raise UserError(refusal(workdir, found))


def keep_aside(workdir: str, keep: tuple[str, ...] = ()) -> str | None:
  """Moves everything in WORKDIR but `keep` (the lease) and earlier previous-* folders into a
  new WORKDIR/previous-<time>/, and returns its path (None when there was nothing to move).
  Never deletes. Process 0 moves; every process returns the same path."""
  target = ""
  if jax.process_index() == 0:
    root = files.Path(workdir)
    entries = sorted(p for p in root.iterdir() if p.name not in keep
                     and not p.name.startswith(PREVIOUS)) if root.is_dir() else []
    if entries:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      target_path = root / f"{PREVIOUS}{stamp}"
      n = 1
      while target_path.exists():
        n += 1
        target_path = root / f"{PREVIOUS}{stamp}-{n}"
      target_path.mkdir()
      # An object store has no empty folders: this note makes previous-<time>/ exist there.
      (target_path / "restarted.txt").write_text(
          f"kept aside by --restart at {time.strftime('%Y-%m-%d %H:%M:%S %z')}: "
          f"{runrecord.command_line()}\n")
      for entry in entries:
        entry.rename(target_path / entry.name)  # etils.epath: os.rename, or gs://'s move
      target = os.fspath(target_path)
  target = parallel.broadcast_text(target)
  return target or None
