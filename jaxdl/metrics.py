"""Where a run's numbers go: WORKDIR/metrics.jsonl, TensorBoard event files, the console.

metrics.jsonl (one JSON object per event) is the record that plot, report and sweep read back
(read_events). The TensorBoard event files in the workdir mirror it: each event's numbers become
scalars tagged '<event>/<key>' ('train/loss', 'eval/test_accuracy', 'final/test_accuracy'). Only
process 0 writes, so a multi-host job logs once. What a number means (a percentage, its unit)
is the task's to say (its FORMATS); this file knows only 'loss', 'lr' and '<unit>_per_s'.
"""

from __future__ import annotations

import datetime
import json
import io
import os
import struct
import sys
import time
from typing import Any

import jax

from jaxdl import files
from jaxdl.errors import UserError

EVENT_FILES = "events.out.tfevents.*"  # TensorBoard's event file names, in the workdir itself


def read_events(path: str, strict: bool = False) -> list[dict[str, Any]]:
  """The events of a metrics.jsonl file, up to a line cut short by a kill ([] if no file).

  Bytes that are not UTF-8 (a damaged disk block) make their line unreadable, not the file. A
  line that is not an event followed by more lines is damage, not a kill's cut: `strict` (the
  trainer, which rewrites the file from what it read) refuses it in one line, since rewriting
  would drop every event after it; readers (plot, report) stop there."""
  if not files.exists(path):
    return []
  events = []
  lines = files.Path(path).read_bytes().decode("utf-8", errors="replace").splitlines()
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


def event_files(directory: str) -> list[files.Path]:
  """The TensorBoard event files in a local or gs:// directory, in name (= time) order."""
  path = files.Path(directory)
  return sorted(path.glob(EVENT_FILES)) if path.is_dir() else []


class Progress:
  """The console view of training, on process 0 only.

  On a terminal: a live bar (tqdm) with step, ETA, loss and throughput, redrawn in place.
  Written to a file or a pipe (a log on a TPU VM, `nohup`, CI): one plain line per train event,
  never a carriage return.
  """

  def __init__(self, start_step: int, num_steps: int, steps_per_epoch: int,
               formats: dict[str, str] | None = None, live: bool | None = None, stream=None):
    self.stream = stream or sys.stdout
    self.formats = formats or {}  # the task's FORMATS: {key: '{}'-format of its text}
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
    for key, value in values.items():  # the task's TRAIN_METRICS, as its FORMATS say
      if key not in ("loss", "lr", "skipped_nonfinite") and not key.endswith("_per_s"):
        parts.append(self.formats.get(key, key + " {:.4g}").format(value))
    for key, value in values.items():  # throughput: f'{task.UNIT}_per_s'
      if key.endswith("_per_s"):
        parts.append(self.formats.get(key, "{:,.0f} " + key[:-len("_per_s")] + "/s").format(value))
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
    if files.exists(self.path):
      count = sum(1 for line in files.Path(self.path).read_bytes().splitlines() if line.strip())
      kept = [e for e in read_events(self.path, strict=True)
              if e["step"] <= step and e["event"] != "final"]
      if len(kept) != count:
        files.write_text(self.path, "".join(json.dumps(e) + "\n" for e in kept))
    self._open_tensorboard()

  def _open_tensorboard(self) -> None:
    """Rebuilds the event files from metrics.jsonl (see the class docstring), once."""
    if self._tb is not None:
      return
    SummaryWriter = _summary_writer_class()  # pylint: disable=invalid-name
    if files.is_url(self.workdir):
      from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
      record_writer.register_writer_factory(self.workdir.split("://")[0], files.ObjectFiles())
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
    self._appends = files.append_line(self.path, line, self._appends)
    if self._tb is not None:
      self._add_scalars(event, step, values)
    if event == "train" and self.progress is not None:
      self.progress.train(step, values)

  def start_progress(self, start_step: int, num_steps: int, steps_per_epoch: int,
                     formats: dict[str, str] | None = None) -> None:
    """From here on, train events show as a live bar (terminal) or plain lines (log file), each
    number as `formats` (the task's FORMATS) says."""
    if self.enabled:
      self.progress = Progress(start_step, num_steps, steps_per_epoch, formats)

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
