"""Where numbers go: console lines, WORKDIR/metrics.jsonl (one JSON object per event), JSON files.

Only process 0 writes, so a multi-host job logs once.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import tempfile
from typing import Any

from etils import epath
import jax
import numpy as np


def summarise(sums: dict[str, Any]) -> dict[str, Any]:
  """Means from summed metrics (see losses.py): the loss always; accuracy for a classifier;
  per-class and macro precision/recall/F1 with a confusion matrix; perplexity and bits per
  token for a language model (no 'correct' sum). `count` is examples (tokens for an LM)."""
  sums = {k: np.asarray(v, np.float64) for k, v in jax.device_get(sums).items()}
  count = float(sums["count"])
  out: dict[str, Any] = {"loss": float(sums["loss_sum"]) / max(count, 1.0), "count": int(count)}
  if "correct" in sums:
    out["accuracy"] = float(sums["correct"]) / max(count, 1.0)
  else:
    out["perplexity"] = math.exp(min(out["loss"], 700.0))  # capped: exp overflows past ~709
    out["bits_per_token"] = out["loss"] / math.log(2)
  if "confusion" in sums:
    confusion = sums["confusion"]  # rows: true class, columns: predicted class
    tp = np.diag(confusion)
    # An empty denominator (no predictions or no examples of a class) scores 0, as sklearn does.
    precision = np.divide(tp, confusion.sum(0), out=np.zeros_like(tp), where=confusion.sum(0) > 0)
    recall = np.divide(tp, confusion.sum(1), out=np.zeros_like(tp), where=confusion.sum(1) > 0)
    pr = precision + recall
    f1 = np.divide(2 * precision * recall, pr, out=np.zeros_like(tp), where=pr > 0)
    out.update(precision=precision.tolist(), recall=recall.tolist(), f1=f1.tolist(),
               macro_precision=float(precision.mean()), macro_recall=float(recall.mean()),
               macro_f1=float(f1.mean()), confusion=confusion.astype(int).tolist())
  return out


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temp file + rename): a reader never sees half a file."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def is_url(path: str) -> bool:
  """A workdir such as gs://bucket/run: files go through etils.epath (fsspec, gcsfs for GCS)."""
  return "://" in path


def write_text(path: str, text: str) -> None:
  """Writes text atomically, like write_json (a GCS object write is atomic by itself)."""
  if is_url(path):
    epath.Path(path).write_text(text)
    return
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  return json.loads(epath.Path(path).read_text())


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def format_duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(seconds)))


class Writer:
  """Appends events to metrics.jsonl and prints console lines, on process 0 only."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")

  def drop_after(self, step: int) -> None:
    """Removes events past `step`, and any 'final' event: a resumed run writes them again."""
    if not self.enabled or not exists(self.path):
      return
    lines = [line + "\n" for line in epath.Path(self.path).read_text().splitlines()
             if line.strip()]
    kept = []
    for line in lines:
      try:
        event = json.loads(line)
        if event["step"] <= step and event["event"] != "final":
          kept.append(line)
      except (ValueError, KeyError):
        break  # a line cut short by a kill ends the readable part of the file
    if len(kept) != len(lines):
      write_text(self.path, "".join(kept))

  def write(self, event: str, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    line = json.dumps({"event": event, "step": step, **values}) + "\n"
    if is_url(self.path):  # a GCS object cannot be appended to: rewrite it (it is small)
      old = epath.Path(self.path).read_text() if exists(self.path) else ""
      write_text(self.path, old + line)
    else:
      with open(self.path, "a") as f:
        f.write(line)

  def print(self, line: str) -> None:
    if self.enabled:
      print(line, file=sys.stdout, flush=True)
