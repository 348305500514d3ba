"""A language model's windows: random training windows addressed by step, fixed validation ones.

Training windows are a pure function of (seed, step): batch `step` takes `batch_size` windows of
`block_size + 1` tokens starting at offsets drawn from default_rng([seed, step]), so a resumed
run reads exactly what the uninterrupted one would. Evaluation uses a fixed set: the
non-overlapping windows at offsets 0, L, 2L, ... of the validation text (L = block_size; the
last partial window is left out), or `eval_windows` of them evenly spaced; each window predicts
its L next tokens, with the context available since the window start.

The token ids may be a prepared corpus's file (data/tokens.TokenFile): training windows and
evaluation rows are read from it by offset when a batch asks for them, so memory stays flat in
the corpus's size; batches are int32 either way.
"""

from __future__ import annotations

import math

import numpy as np

from jaxdl.errors import UserError

Batch = dict[str, np.ndarray]


def windows(ids, starts: np.ndarray, length: int) -> np.ndarray:
  """[len(starts), length] int32: `length` ids from each start, of an array or a TokenFile."""
  if hasattr(ids, "windows"):  # data/tokens.TokenFile: read from disk by offset
    return ids.windows(starts, length)
  return ids[starts[:, None] + np.arange(length)[None, :]].astype(np.int32)


class TrainWindows:
  """Global batch `step` = `batch_size` random windows drawn from (seed, step): a
  data.TrainIterator (windows are cut from the token stream, not rows of an array)."""

  def __init__(self, ids: np.ndarray, block_size: int, batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1, sha256: str = ""):
    if len(ids) <= block_size:
      raise UserError(f"the training text has {len(ids):,} tokens; model.block_size="
                      f"{block_size} needs at least {block_size + 1}")
    self.ids, self.block_size, self.batch_size, self.seed = ids, block_size, batch_size, seed
    self.sha256 = sha256  # a prepared corpus's file hash: a resume on another file is refused
    self.size = len(ids) - block_size  # distinct windows (each predicts block_size tokens)
    # An "epoch" is as many tokens as the training text has: num_epochs and eval_every=0 use it.
    self.steps_per_epoch = max(1, math.ceil(len(ids) / (batch_size * block_size)))
    per_process = batch_size // process_count
    self._local = slice(process_index * per_process, (process_index + 1) * per_process)

  def position(self, step: int) -> dict[str, int]:
    """What step `step` depends on besides the seed: saved with every checkpoint."""
    return {"step": step, "batch_size": self.batch_size, "block_size": self.block_size,
            "train_tokens": len(self.ids), **({"train_sha256": self.sha256} if self.sha256 else {})}

  def check_position(self, step: int, saved: dict[str, int]) -> None:
    if saved != self.position(step):
      raise UserError(f"the checkpoint's data position {saved} does not match this config's "
                      f"{self.position(step)} (batch_size, block_size or text changed?)")

  def batch(self, step: int) -> Batch:
    """This process's rows of global batch `step`: inputs, targets (shifted by one), mask."""
    starts_B = np.random.default_rng([self.seed, step]).integers(
        0, self.size, self.batch_size)[self._local]
    windows_BxL1 = windows(self.ids, starts_B, self.block_size + 1)
    return {"inputs": windows_BxL1[:, :-1], "targets": windows_BxL1[:, 1:],
            "mask": np.ones(len(starts_B), np.float32)}


class WindowRows:
  """Fixed windows of a token array as rows, read when indexed (what data.iterator.eval_batches
  takes of an array: len() and rows by an index array): row i is ids[start_i + shift :
  start_i + shift + length], as int32."""

  def __init__(self, ids: np.ndarray, starts: np.ndarray, length: int, shift: int = 0):
    self.ids, self.starts, self.length, self.shift = ids, starts, length, shift

  def __len__(self) -> int:
    return len(self.starts)

  @property
  def shape(self) -> tuple[int, int]:
    return (len(self.starts), self.length)

  def __array__(self, dtype=None, copy=None):  # every row: np.asarray(rows), for tests and tools
    del copy  # always a new array
    rows = self[np.arange(len(self))]
    return rows if dtype is None else rows.astype(dtype)

  def __getitem__(self, index) -> np.ndarray:
    starts = self.starts[index]
    rows = windows(self.ids, np.atleast_1d(starts) + self.shift, self.length)
    return rows if np.ndim(starts) else rows[0]


def eval_windows(ids: np.ndarray, block_size: int, max_windows: int = 0) -> dict[str, WindowRows]:
  """The fixed validation set: non-overlapping windows from offset 0 (partial tail left out),
  or `max_windows` of them evenly spaced when 0 < max_windows < their number; each read from
  `ids` when a batch asks for it."""
  n = (len(ids) - 1) // block_size
  if n == 0:
    raise UserError(f"the validation text has {len(ids):,} tokens; model.block_size={block_size} "
                    f"needs at least {block_size + 1} (lower data.val_fraction or block_size)")
  starts = np.arange(n) * block_size
  if 0 < max_windows < n:
    starts = starts[np.round(np.linspace(0, n - 1, max_windows)).astype(np.int64)]
  return {"inputs": WindowRows(ids, starts, block_size),
          "targets": WindowRows(ids, starts, block_size, shift=1)}
