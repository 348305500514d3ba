"""Training batches streamed from record shards through Grain: TrainBatches' batches, from disk.

Global batch `step` holds the same rows as in memory: the epoch permutation drawn from
(seed, epoch) (TrainBatches.indices), of which this process reads only its own part, by global
index (data/records.py). A streaming run and an in-memory one on the same records train on the
same batches, bit for bit, on any number of processes.

Grain reads ahead. The pipeline is a pure MapDataset over blocks of BLOCK_STEPS steps, each
element this process's batches of those steps (their records read in one call), iterated with
`data.prefetch` blocks in flight: on a thread of this process (data.workers=0), or in
`data.workers` worker processes (mp_prefetch). The data position is jaxdl's own (the step, in
every checkpoint): Grain's iterator state, per process and per worker, is never saved, so a
checkpoint restores on another process count.

batch(step) takes the next element when `step` follows the last one asked for, and restarts the
pipeline at `step` otherwise; a lone out-of-order request (the runner's sample batch, the first
step of a run) is read in place, so that worker processes start once.

On a 2-core machine the reads need no workers: a record decodes with one np.frombuffer, one
reader thread keeps ahead of the seed CNN's step, and more threads or workers only take the
step's cores (experiments/data/README.md). Workers start in seconds (each imports jax), and pay
off for host-side work heavier than that.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from absl import flags
import numpy as np

from jaxdl import files
from jaxdl.data import records
from jaxdl.data.iterator import Batch, TrainBatches
from jaxdl.errors import UserError, first_line, require

_HORIZON = 1 << 40  # blocks in the pipeline's MapDataset: more than any run takes
# Steps read by one call into the records: ArrayRecord's cost per record falls from 7 us in
# calls of 64 records to 2.2 us in calls of 512 (measured, MNIST's 788-byte records).
BLOCK_STEPS = 8


class _Block:
  """Block j: the batches of steps start + j*k .. start + (j+1)*k - 1, their records read in
  one call. What Grain's thread or worker runs: its own copy of the order (a TrainBatches
  keeps its epoch permutation as it goes) and of the readers, pickled without open files."""

  def __init__(self, order: TrainBatches, start: int, k: int):
    self.order, self.start, self.k = copy.copy(order), start, k
    self.order.arrays = order.arrays.fresh()  # its own open files, apart from evaluation's

  def __call__(self, j: int) -> list[Batch]:
    first = self.start + j * self.k
    parts = [self.order.local_indices(step) for step in range(first, first + self.k)]
    rows = self.order.arrays.read(np.concatenate([idx for idx, _ in parts]), keep=False)
    out, at = [], 0
    for idx, mask in parts:  # data.iterator.take's batches, cut from the one read
      out.append({**{key: v[at:at + len(idx)] for key, v in rows.items()}, "mask": mask})
      at += len(idx)
    return out


class StreamingBatches:
  """A data.TrainIterator: `order` (a TrainBatches over data/records.RecordRows) read ahead by
  Grain. Not a RowIterator: its rows stay on disk."""

  def __init__(self, order: TrainBatches, workers: int = 0, prefetch: int = 4):
    self.order, self.workers, self.prefetch = order, workers, prefetch
    self.size, self.steps_per_epoch = order.size, order.steps_per_epoch
    self._iterator: Any = None
    self._ready: list[Batch] = []  # the current block's batches not yet asked for
    self._next = self._last = None  # the step _ready starts at; the last step asked for

  def position(self, step: int) -> dict:
    return self.order.position(step)

  def indices(self, step: int):
    """The order's global rows of batch `step` (data.iterator.CutBatches reads them)."""
    return self.order.indices(step)

  @property
  def lengths(self):  # a LengthGroupedBatches order's, for CutBatches
    return self.order.lengths

  def check_position(self, step: int, saved: dict) -> None:
    self.order.check_position(step, saved)

  def batch(self, step: int) -> Batch:
    """This process's rows of global batch `step`, as TrainBatches.batch gives them."""
    follows, self._last = self._last is not None and step == self._last + 1, step
    if step != self._next:
      if not follows:
        return self.order.batch(step)
      self._start(step)
    if not self._ready:
      try:
        self._ready = next(self._iterator)
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (a worker's error, as Grain raises it)
        self.close()
        raise UserError(f"data: reading batch {step} failed in Grain's "
                        f"{'worker processes' if self.workers else 'reader thread'} "
                        f"({type(e).__name__}: {first_line(e)})") from None
    self._next = step + 1
    return self._ready.pop(0)

  def _start(self, step: int) -> None:
    import grain  # pylint: disable=g-import-not-at-top  (its import takes ~1 s)
    self.close()
    blocks = grain.MapDataset.range(_HORIZON).map(_Block(self.order, step, BLOCK_STEPS))
    if self.workers:
      # Grain's workers read absl flags, which raise when unparsed (under pytest, in a user's
      # own program): grain#1355, fixed after 0.2.18.
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      dataset = blocks.to_iter_dataset(grain.ReadOptions(num_threads=0)).mp_prefetch(
          grain.MultiprocessingOptions(num_workers=self.workers,
                                       per_worker_buffer_size=self.prefetch))
    else:  # one thread: it keeps its block reader's state to itself
      dataset = blocks.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                         prefetch_buffer_size=self.prefetch))
    self._iterator, self._next, self._ready = iter(dataset), step, []
    # The pipeline's block reader keeps its own permutation and readers from here: this
    # thread's would double what grows with the data (measured: 45 MB of readers' index for
    # 3.8M records, and the permutation's 15 MB).
    self.order.forget()
    self.order.arrays.close()

  def close(self) -> None:
    """Stops the pipeline's thread or worker processes (their shared memory: grain#1031)."""
    iterator, self._iterator, self._next, self._ready = self._iterator, None, None, []
    if iterator is not None and hasattr(iterator, "close"):
      iterator.close()

  def __getstate__(self):
    return {**self.__dict__, "_iterator": None, "_next": None, "_ready": []}

MODES = ("auto", "on", "off")


def settings(data_cfg) -> tuple[str, float, int, int]:
  """(data.streaming, data.memory_budget_gb, data.workers, data.prefetch), with their defaults
  for a user's data block that has none of them."""
  get = lambda key, default: data_cfg[key] if key in data_cfg else default
  return (get("streaming", "auto"), get("memory_budget_gb", 8.0), get("workers", 0),
          get("prefetch", 4))


def check(data_cfg) -> None:
  mode, budget, workers, prefetch = settings(data_cfg)
  require(mode in MODES, "data.streaming", mode, f"must be one of {', '.join(MODES)}")
  require(budget > 0, "data.memory_budget_gb", budget, "must be > 0")
  require(workers >= 0, "data.workers", workers, "must be >= 0 (0: threads of this process)")
  require(prefetch >= 1, "data.prefetch", prefetch, "must be >= 1")


PREPARE = ("write it as records with python -m jaxdl.prepare --config=... "
           "--config.data.path=... --out=DIR, then train with --config.data.path=DIR")


def check_in_memory(data_cfg, path: str) -> None:
  """Before a data.path that is not a record directory is loaded whole: data.streaming='on'
  cannot stream it, and under 'auto' one larger than data.memory_budget_gb is refused rather
  than swapped or killed; each says how to prepare it as records."""
  mode, budget, *_ = settings(data_cfg)
  prepare = PREPARE.replace("--config.data.path=...", f"--config.data.path={path}")
  if mode == "on":
    raise UserError(f"config.data.streaming='on' streams a record directory or a prepared TFDS "
                    f"copy, and data.path={path!r} is neither: {prepare}")
  if mode == "auto" and path and not files.is_url(path):
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(path)
               for f in names) if os.path.isdir(path) else os.path.getsize(path)
    if size > budget * 1e9:
      raise UserError(f"data.path={path!r} holds {size / 1e9:.1f} GB, more than "
                      f"config.data.memory_budget_gb={budget:g}, and is loaded whole unless it "
                      f"is records: {prepare} (or raise the budget)")


def check_streamed(splits: dict, data_cfg, source: str) -> None:
  """data.streaming='on' and data that came whole (a download, a sample): one line."""
  if settings(data_cfg)[0] == "on" and not isinstance(splits["train"], records.RecordRows):
    raise UserError(f"config.data.streaming='on' streams a record directory or a prepared TFDS "
                    f"copy, and the data came from {source}: {PREPARE}")


def in_memory(splits: dict, data_cfg) -> tuple[dict, dict]:
  """(splits, identity): record splits (data/records.RecordRows) loaded into memory under
  data.streaming='off', left on disk otherwise; identity is {'records_sha256': ...} of the
  training split's records (saved in the data position, whichever the mode), {} for other
  data."""
  train = splits["train"]
  if not isinstance(train, records.RecordRows):
    return splits, {}
  identity = {"records_sha256": train.records.sha256}
  if settings(data_cfg)[0] == "off":
    splits = {k: v.load() if isinstance(v, records.RecordRows) else v for k, v in splits.items()}
  return splits, identity


def streamed(order: TrainBatches, data_cfg):
  """`order` itself over arrays in memory; StreamingBatches over it when its rows are on
  disk (data/records.RecordRows)."""
  if not isinstance(order.arrays, records.RecordRows):
    return order
  _, _, workers, prefetch = settings(data_cfg)
  return StreamingBatches(order, workers, prefetch)
