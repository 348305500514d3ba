"""Where numbers go: WORKDIR/metrics.jsonl, TensorBoard event files, the console, JSON files.

metrics.jsonl (one JSON object per event) is the record that plot, report and sweep read. The
TensorBoard event files in the workdir mirror it: each event's numbers become scalars tagged
'<event>/<key>' ('train/loss', 'eval/test_accuracy', 'final/test_accuracy'). Only process 0
writes, so a multi-host job logs once.
"""

from __future__ import annotations

import datetime
import json
import io
import os
import struct
import sys
import tempfile
import time
from typing import Any

from etils import epath
import jax
import numpy as np

from jaxdl.errors import UserError

EVENT_FILES = "events.out.tfevents.*"  # TensorBoard's event file names, in the workdir itself
TMP_PREFIX = ".tmp-"  # write_text's temporary files (a kill may leave one)


def to_host(sums: dict[str, Any]) -> dict[str, np.ndarray]:
  """Summed metrics (see losses.py) as float64 host arrays, for a task's summarise()."""
  return {k: np.asarray(v, np.float64) for k, v in jax.device_get(sums).items()}


def loss_and_count(sums: dict[str, np.ndarray]) -> dict[str, Any]:
  """The mean loss and the count it is over (examples, or tokens for a language model)."""
  count = float(sums["count"])
  return {"loss": float(sums["loss_sum"]) / max(count, 1.0), "count": int(count)}


def accuracy(sums: dict[str, np.ndarray]) -> float:
  return float(sums["correct"]) / max(float(sums["count"]), 1.0)


def confusion_scores(confusion: np.ndarray) -> dict[str, Any]:
  """Per-class and macro precision/recall/F1 of a confusion matrix (rows: true class, columns:
  predicted class), and the matrix itself as integers."""
  tp = np.diag(confusion)
  # An empty denominator (no predictions or no examples of a class) scores 0, as sklearn does.
  precision = np.divide(tp, confusion.sum(0), out=np.zeros_like(tp), where=confusion.sum(0) > 0)
  recall = np.divide(tp, confusion.sum(1), out=np.zeros_like(tp), where=confusion.sum(1) > 0)
  pr = precision + recall
  f1 = np.divide(2 * precision * recall, pr, out=np.zeros_like(tp), where=pr > 0)
  return dict(precision=precision.tolist(), recall=recall.tolist(), f1=f1.tolist(),
              macro_precision=float(precision.mean()), macro_recall=float(recall.mean()),
              macro_f1=float(f1.mean()), confusion=confusion.astype(int).tolist())


def brief_accuracy(split: str, m: dict[str, Any]) -> str:
  """A classifier's console text: 'test accuracy 98.20% (982/1000) | test loss 0.0500'."""
  return (f"{split} accuracy {100 * m['accuracy']:.2f}% ({round(m['accuracy'] * m['count'])}/"
          f"{m['count']}) | {split} loss {m['loss']:.4f}")


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
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=TMP_PREFIX)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):  # a full disk: no empty temporary file left behind
      os.remove(tmp)
    raise


def object_store(path: str):
  """(fsspec filesystem, path without its scheme) of a URL such as gs://bucket/run: the one
  gcsfs instance under etils.epath, for what epath has no call for (compose, preconditions)."""
  import fsspec  # pylint: disable=g-import-not-at-top  (gcsfs, only for gs:// workdirs)
  scheme, key = path.split("://", 1)
  return fsspec.filesystem(scheme), key


_COMPACT_EVERY = 1000  # composed appends before an object is rewritten whole (see below)


def append_object(path: str, text: str, appends: int) -> int:
  """Appends `text` to an object-store file (gs://) and returns the new count of appends since
  it was last rewritten whole.

  An object cannot be appended to, and rewriting the whole file at each event made a long
  run's log quadratic. On GCS the line is uploaded as an object of its own and composed onto
  the file (a server-side concatenation: one small upload, one compose, one delete). Every
  _COMPACT_EVERY appends the file is rewritten as one plain object, so that its composite
  never grows without bound. A store without compose (fsspec's `merge`) is rewritten whole."""
  fs, key = object_store(path)
  fs.invalidate_cache(key)
  if not hasattr(fs, "merge") or appends >= _COMPACT_EVERY or not fs.exists(key):
    old = epath.Path(path).read_text() if exists(path) else ""
    write_text(path, old + text)
    return 0
  part = f"{key}.append"
  fs.pipe_file(part, text.encode("utf-8"))
  fs.merge(key, [key, part])
  fs.rm_file(part)
  fs.invalidate_cache(key)
  return appends + 1


def read_json(path: str) -> Any:
  return json.loads(epath.Path(path).read_text())


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def read_text(path: str) -> str:
  """A local or gs:// file's text (etils.epath)."""
  return epath.Path(path).read_text()


def read_events(path: str, strict: bool = False) -> list[dict[str, Any]]:
  """The events of a metrics.jsonl file, up to a line cut short by a kill ([] if no file).

  Bytes that are not UTF-8 (a damaged disk block) make their line unreadable, not the file. A
  line that is not an event followed by more lines is damage, not a kill's cut: `strict` (the
  trainer, which rewrites the file from what it read) refuses it in one line, since rewriting
  would drop every event after it; readers (plot, report) stop there."""
  if not exists(path):
    return []
  events = []
  lines = epath.Path(path).read_bytes().decode("utf-8", errors="replace").splitlines()
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      event = json.loads(line)
      event["event"], event["step"]  # pylint: disable=pointless-statement
      if "\ufffd" in line:
        raise ValueError("bytes that are not UTF-8")
    except (ValueError, KeyError, TypeError) as e:
      if strict and any(rest.strip() for rest in lines[i + 1:]):
        raise UserError(f"{path}:{i + 1}: not an event ({type(e).__name__}: {e}), and lines "
                        f"follow it, so it is damage, not a kill's cut: rewriting the file "
                        f"from its events would lose them; repair that line or move the file "
                        f"away") from None
      break
    events.append(event)
  return events


def format_duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(seconds)))


def _scalars(values: dict[str, Any]) -> dict[str, float]:
  """The plain numbers among an event's values (lists such as a confusion matrix are left out)."""
  return {k: float(v) for k, v in values.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def read_tensorboard(directory: str) -> list[tuple[str, int, float, float]]:
  """(tag, step, value, wall_time) of every scalar in directory's event files, in file order.

  Event files are TFRecord files (little-endian u64 length, u32 crc, payload, u32 crc) of
  `Event` protos; a record cut short by a kill ends a file. tensorboardX has no reader and
  TensorBoard's needs its server package, hence these few lines.
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars = []
  for path in event_files(directory):
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      if pos + 12 + length + 4 > len(data):
        break
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        scalars.append((value.tag, event.step, value.simple_value, event.wall_time))
  return scalars


def event_files(directory: str) -> list[epath.Path]:
  """The TensorBoard event files in a local or gs:// directory, in name (= time) order."""
  path = epath.Path(directory)
  return sorted(path.glob(EVENT_FILES)) if path.is_dir() else []


class _ObjectFile:
  """An event file on an object store (gs://), through etils.epath, for tensorboardX.

  An object cannot be appended to, so each flush (every few seconds, and on close) rewrites
  the whole file from the bytes written so far; event files are small (one float per scalar).
  tensorboardX's own gs:// writer would need google-cloud-storage and its credentials, another
  file-system layer besides the one every other workdir file goes through.
  """

  def __init__(self, path: str):
    self.path, self.buffer, self.flushed = epath.Path(path), io.BytesIO(), -1
    self.error: Exception | None = None  # of the last flush, for close() to raise
    self.closed = False

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    """Writes the object; a failure is kept for close(), not raised here: tensorboardX flushes
    from a thread of its own, which an error would end, and the bytes stay for the next try."""
    if self.closed or self.buffer.tell() == self.flushed:
      return
    try:
      self.path.write_bytes(self.buffer.getvalue())
    except Exception as e:  # pylint: disable=broad-except  (gcsfs: OSError, or its HttpError)
      self.error = e
      return
    self.flushed, self.error = self.buffer.tell(), None

  def close(self) -> None:
    """The last flush; its failure raises, once (tensorboardX closes again at exit)."""
    self.flush()
    self.closed = True
    error, self.error = self.error, None
    if error is not None:
      raise error


class _ObjectFiles:
  """tensorboardX's writer factory for one URL scheme (its directories need no making)."""

  def open(self, path: str) -> _ObjectFile:
    return _ObjectFile(path)

  def directory_check(self, path: str) -> None:
    del path


_SHORT_UNITS = {"examples": "ex", "tokens": "tok"}  # in the progress view


class Progress:
  """The console view of training, on process 0 only.

  On a terminal: a live bar (tqdm) with step, ETA, loss and throughput, redrawn in place.
  Written to a file or a pipe (a log on a TPU VM, `nohup`, CI): one plain line per train event,
  never a carriage return.
  """

  def __init__(self, start_step: int, num_steps: int, steps_per_epoch: int,
               live: bool | None = None, stream=None):
    self.stream = stream or sys.stdout
    self.live = self.stream.isatty() if live is None else live
    self.num_steps, self.steps_per_epoch = num_steps, steps_per_epoch
    self.last_step, self.last_time = start_step, time.time()
    self.bar = None
    if self.live:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      try:  # a pseudo-terminal may report a width of 0: then draw 100 columns
        sized = os.get_terminal_size(self.stream.fileno()).columns > 0
      except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        sized = False
      self.bar = tqdm(total=num_steps, initial=start_step, file=self.stream,
                      dynamic_ncols=sized, ncols=None if sized else 100,
                      bar_format="step {n_fmt}/{total_fmt} |{bar}| ETA {remaining}{postfix}")

  def advance(self, step: int) -> None:
    """Moves the bar to `step` (cheap: tqdm redraws at most 10 times a second)."""
    if self.bar is not None:
      self.bar.update(step - self.bar.n)

  def train(self, step: int, values: dict[str, Any]) -> None:
    """Shows a train event: the bar's numbers, or one plain line with an ETA."""
    parts = [f"loss {values['loss']:.4f}"]
    for key, value in values.items():  # the task's TRAIN_METRICS: accuracy in %, others as is
      if key not in ("loss", "lr", "skipped_nonfinite") and not key.endswith("_per_s"):
        parts.append(f"acc {100 * value:.2f}%" if key == "accuracy" else f"{key} {value:.4g}")
    for key, value in values.items():  # throughput: examples, tokens, or a task's own unit
      if key.endswith("_per_s"):
        unit = key[:-len("_per_s")]
        parts.append(f"{value:,.0f} {_SHORT_UNITS.get(unit, unit)}/s")
    if values.get("skipped_nonfinite"):
      parts.append(f"skipped {values['skipped_nonfinite']} non-finite update(s)")
    if self.bar is not None:
      self.advance(step)
      self.bar.set_postfix_str(" | ".join(parts))
      return
    now = time.time()
    seconds_per_step = (now - self.last_time) / max(step - self.last_step, 1)
    self.last_step, self.last_time = step, now
    eta = format_duration((self.num_steps - step) * seconds_per_step)
    self.print(f"step {step:>{len(str(self.num_steps))}}/{self.num_steps} | "
               f"epoch {step / self.steps_per_epoch:5.2f} | " + " | ".join(parts) + f" | ETA {eta}")

  def print(self, line: str) -> None:
    if self.bar is not None:
      self.bar.write(line, file=self.stream)  # clears the bar, prints, redraws it
    else:
      print(line, file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch. Its writer module imports torch when
  it is installed, only to accept torch tensors (jaxdl passes floats): 1.5 s of every start-up
  in an environment that also has PyTorch, against 0.2 s without."""
  hide = "torch" not in sys.modules  # else it is loaded already: nothing to save
  if hide:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, as if not installed
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter


class Writer:
  """Appends events to metrics.jsonl and TensorBoard, and prints console lines, on process 0.

  TensorBoard and resumes: a resumed run re-does the steps after its last checkpoint, so the
  first write (or `drop_after`) rebuilds the event files from metrics.jsonl: the old files are
  read for their wall times, deleted, and the surviving events written to one new file. So
  TensorBoard never shows a step twice, whatever its loader does with restarts, and a kill
  between the two (or before tensorboardX flushed) is repaired by the next start.
  """

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.workdir = workdir
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None  # tensorboardX.SummaryWriter, opened by the first write
    self._appends = 0  # gs://: lines composed onto metrics.jsonl since it was last rewritten
    self.progress: Progress | None = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def drop_after(self, step: int) -> None:
    """Removes events past `step`, and any 'final' event: a resumed run writes them again."""
    if not self.enabled:
      return
    if exists(self.path):
      count = sum(1 for line in epath.Path(self.path).read_bytes().splitlines() if line.strip())
      kept = [e for e in read_events(self.path, strict=True)
              if e["step"] <= step and e["event"] != "final"]
      if len(kept) != count:
        write_text(self.path, "".join(json.dumps(e) + "\n" for e in kept))
    self._open_tensorboard()

  def _open_tensorboard(self) -> None:
    """Rebuilds the event files from metrics.jsonl (see the class docstring), once."""
    if self._tb is not None:
      return
    SummaryWriter = _summary_writer_class()  # pylint: disable=invalid-name
    if is_url(self.workdir):
      from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
      record_writer.register_writer_factory(self.workdir.split("://")[0], _ObjectFiles())
    wall_times = {(tag, step): t for tag, step, _, t in read_tensorboard(self.workdir)}
    for path in event_files(self.workdir):
      path.unlink()
    # flush_secs: tensorboardX writes from a thread; events reach the file within 5 s.
    self._tb = SummaryWriter(self.workdir, flush_secs=5)
    for event in read_events(self.path):
      self._add_scalars(event["event"], event["step"], event, wall_times)

  def _add_scalars(self, event: str, step: int, values: dict[str, Any],
                   wall_times: dict | None = None) -> None:
    now = time.time()
    for key, value in _scalars(values).items():
      if key == "step" or key.endswith("count"):  # the replayed event's step; example counts
        continue
      tag = f"{event}/{key}"
      self._tb.add_scalar(tag, value, step, walltime=(wall_times or {}).get((tag, step), now))

  def write(self, event: str, step: int, values: dict[str, Any]) -> None:
    """One event: a metrics.jsonl line, TensorBoard scalars, and for 'train' the progress view."""
    if not self.enabled:
      return
    self._open_tensorboard()
    line = json.dumps({"event": event, "step": step, **values}) + "\n"
    if is_url(self.path):  # an object cannot be appended to: see append_object
      self._appends = append_object(self.path, line, self._appends)
    else:
      with open(self.path, "a") as f:
        f.write(line)
    if self._tb is not None:
      self._add_scalars(event, step, values)
    if event == "train" and self.progress is not None:
      self.progress.train(step, values)

  def start_progress(self, start_step: int, num_steps: int, steps_per_epoch: int) -> None:
    """From here on, train events show as a live bar (terminal) or plain lines (log file)."""
    if self.enabled:
      self.progress = Progress(start_step, num_steps, steps_per_epoch)

  def advance(self, step: int) -> None:
    if self.progress is not None:
      self.progress.advance(step)

  def print(self, line: str) -> None:
    if not self.enabled:
      return
    if self.progress is not None:
      self.progress.print(line)
    else:
      print(line, file=sys.stdout, flush=True)

  def close(self) -> None:
    """Ends the progress bar and writes out every queued TensorBoard event."""
    if self.progress is not None:
      self.progress.close()
      self.progress = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
