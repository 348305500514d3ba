"""Deterministic, resumable batches over in-memory arrays: shuffled epochs, length-grouped
epochs for variable-length texts (cut to their longest text), and evaluation batches.

Training batches are a pure function of (seed, step): epoch e's order is a permutation drawn from
(seed, e), so every example is seen once per epoch and a resumed run sees exactly the batches the
uninterrupted run would have. Every batch has the same shape (one compilation); the last batch
of an epoch is padded and carries `mask` = 0 on the padding, like evaluation batches.

In a multi-process job each process materialises only its own slice of every global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
import math

import numpy as np

from jaxdl.data import subsets
from jaxdl.errors import UserError

Batch = dict[str, np.ndarray]


def take(arrays: dict, index, mask) -> dict:
  """A batch: rows `index` of every array, and `mask` (1 for a real example, 0 for padding).
  The one definition of a batch of rows: on the host (numpy), and on the device in fused steps
  (steps.train_steps gathers from the arrays there)."""
  return {**{k: v[index] for k, v in arrays.items()}, "mask": mask}


def _local_slice(n: int, process_index: int, process_count: int) -> slice:
  per_process = n // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


class TrainBatches:
  """Epoch-shuffled global batches of `batch_size`, addressed by step."""

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1, identity: dict | None = None):
    self.arrays = arrays
    # What else the rows depend on, saved in the position: a record directory's hash
    # (data/stream.py), so a resume on other records is refused rather than shifted.
    self.identity = identity or {}
    self.size = len(next(iter(arrays.values())))
    if batch_size > self.size:
      raise UserError(f"batch_size={batch_size} is larger than the training split "
                      f"({self.size} examples)")
    self.batch_size = batch_size
    self.seed = seed
    self.steps_per_epoch = math.ceil(self.size / batch_size)
    self._local = _local_slice(batch_size, process_index, process_count)
    self._order_epoch, self._order = -1, np.empty(0, np.int64)

  def position(self, step: int) -> dict[str, int]:
    """Where step `step` reads: saved with every checkpoint so a resume can be checked."""
    return {"epoch": step // self.steps_per_epoch, "batch_in_epoch": step % self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch, "batch_size": self.batch_size,
            **self.identity}

  def check_position(self, step: int, saved: dict[str, int]) -> None:
    if saved != self.position(step):
      raise UserError(f"the checkpoint's data position {saved} does not match this config's "
                      f"{self.position(step)} (batch_size or dataset changed?)")

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if epoch != self._order_epoch:  # one permutation per epoch, drawn from (seed, epoch) alone
      self._order, self._order_epoch = subsets.permutation(self.size, [self.seed, epoch]), epoch
    return self._order

  def forget(self) -> None:
    """Drops the epoch's permutation it keeps (made again when asked for)."""
    self._order_epoch, self._order = -1, np.empty(0, np.int64)

  def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of global batch `step` (all processes) and which of them are real examples."""
    epoch, i = divmod(step, self.steps_per_epoch)
    order = self._epoch_order(epoch)
    idx = order[i * self.batch_size:(i + 1) * self.batch_size]
    valid = np.ones(self.batch_size, bool)
    valid[len(idx):] = False
    idx = np.pad(idx, (0, self.batch_size - len(idx)))  # padding repeats example 0, masked out
    return idx, valid

  def local_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's rows of global batch `step` and their float32 mask."""
    idx, valid = self.indices(step)
    return idx[self._local], valid[self._local].astype(np.float32)

  def batch(self, step: int) -> Batch:
    """This process's part of global batch `step` (padded and masked at an epoch's end)."""
    return take(self.arrays, *self.local_indices(step))

  def rows(self) -> dict[str, np.ndarray]:
    """The arrays every batch is rows of (batch(step) = take(rows, indices(step))), which fused
    steps may gather on the device (data.dataset.RowIterator)."""
    return self.arrays


class LengthGroupedBatches(TrainBatches):
  """TrainBatches of sequences of similar length (cut to their longest by CutBatches).

  Within each pool of `sort_pool` batches of an epoch's permutation, examples are sorted by
  length, cut into batches, and the batches shuffled (all from (seed, epoch), so still a pure
  function of the step). Lengths count the non-zero (non-padding) tokens.
  """

  def __init__(self, arrays, batch_size, seed, sort_pool, process_index=0, process_count=1,
               identity=None, lengths=None):
    super().__init__(arrays, batch_size, seed, process_index, process_count, identity)
    self.sort_pool = sort_pool
    # `lengths`: given for rows on disk (data/records.RecordRows), read once at the start
    self.lengths = (arrays["tokens"] != 0).sum(1) if lengths is None else lengths

  def position(self, step: int) -> dict[str, int]:
    # The length grouping decides which examples a step reads: a resume must keep it.
    return {**super().position(step), "sort_pool": self.sort_pool}

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if epoch == self._order_epoch or not self.sort_pool:
      return super()._epoch_order(epoch)
    order = super()._epoch_order(epoch).copy()
    rng = np.random.default_rng([self.seed, epoch, 1])
    pool = self.sort_pool * self.batch_size
    full = (self.size // self.batch_size) * self.batch_size  # a ragged last batch stays last
    for start in range(0, full, pool):
      idx = order[start:min(start + pool, full)]
      idx = idx[np.argsort(self.lengths[idx], kind="stable")].reshape(-1, self.batch_size)
      order[start:start + idx.size] = idx[rng.permutation(len(idx))].reshape(-1)
    self._order = order
    return order


class CutBatches:
  """A LengthGroupedBatches' batches with `tokens` cut to the batch's longest sequence, rounded
  up to a multiple of `bucket`. SST-2's training phrases average 9 words against a 64-token
  max_len, so the LSTM runs ~4x fewer steps. Each distinct width compiles once (<= max_len /
  bucket); steps of several widths cannot be fused (stacked), hence `shapes_vary`."""

  shapes_vary = True

  def __init__(self, grouped: LengthGroupedBatches, bucket: int):
    self.grouped, self.bucket = grouped, bucket
    self.size, self.steps_per_epoch = grouped.size, grouped.steps_per_epoch

  def position(self, step: int) -> dict[str, int]:
    return self.grouped.position(step)

  def check_position(self, step: int, saved: dict[str, int]) -> None:
    self.grouped.check_position(step, saved)

  def batch(self, step: int) -> Batch:
    out = self.grouped.batch(step)
    # The width comes from the whole global batch, so every process cuts the same.
    idx, valid = self.grouped.indices(step)
    longest = max(1, int(self.grouped.lengths[idx[valid]].max()))
    out["tokens"] = out["tokens"][:, :min(out["tokens"].shape[1],
                                          -(-longest // self.bucket) * self.bucket)]
    return out


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[Batch]:
  """Every example exactly once, in order; the last batch is padded and masked, never dropped."""
  size = len(next(iter(arrays.values())))
  local = _local_slice(batch_size, process_index, process_count)
  for start in range(0, size, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = idx < size
    idx = np.where(valid, idx, 0)
    yield take(arrays, idx[local], valid[local].astype(np.float32))
