"""Rows carved out of a training split by a fixed seed: a validation split for data that has
none (data.validation_size), and a smaller training set (data.train_size, for learning curves).

Both keys take a count (>= 1) or a fraction of the training split (0 < x < 1); 0 is off. The
seed is fixed, not config.seed: the carved rows are part of the data, so runs with different
seeds train and validate on the same rows, and their spread is the training's alone.

A task's load() carves in one line, `splits, sizes = subsets.with_validation(splits,
config.data)`, after its check() called `subsets.check(config.data, "validation_size")`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from jaxdl.errors import UserError, require

CARVE_SEED = 1729  # fixed: changing it changes every carved split, so it is never a config key


def check(data_cfg, key: str) -> None:
  """config.data.<key>: 0 (off), a fraction in (0, 1), or a whole count >= 1."""
  value = data_cfg[key]
  require(value == 0 or 0 < value < 1 or (value >= 1 and float(value).is_integer()),
          f"data.{key}", value, "must be 0 (off), a fraction of the training split in (0, 1), or "
          "a whole number of examples >= 1")


def count(amount: float, n: int, key: str) -> int:
  """How many of n rows data.<key>=amount means (a fraction rounds, and keeps at least one)."""
  rows = max(1, round(amount * n)) if amount < 1 else int(amount)
  if rows >= n:
    raise UserError(f"config.data.{key}={amount!r} is {rows:,} of the training split's {n:,} "
                    f"examples; it must be fewer")
  return rows


def carve(n: int, amount: float, key: str, salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(carved, rest): sorted row indices, `count(amount)` of them carved at random by the fixed
  seed (`salt` tells two carvings of one split apart), the rest in their file order."""
  rows = count(amount, n, key)
  order = permutation(n, [CARVE_SEED, salt])
  return np.sort(order[:rows]), np.sort(order[rows:])


def permutation(n: int, seed) -> np.ndarray:
  """np.random.default_rng(seed).permutation(n)'s order (it shuffles an arange), as int32
  below 2**31 rows: half the memory, and no int64 transient, for the millions of rows of a
  streamed split (3.8M: 15 MB, not 30)."""
  order = arange(n)
  np.random.default_rng(seed).shuffle(order)
  return order


def arange(n: int) -> np.ndarray:
  """Row indices 0..n-1, int32 below 2**31 rows."""
  return np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)


def carve_train(n: int, validation_size: float, train_size: float
                ) -> tuple[np.ndarray, np.ndarray | None]:
  """(training rows, validation rows or None) of an n-row training split: validation_size rows
  are carved first, then train_size of the rest are kept (0 = all of them)."""
  train, val = arange(n), None
  if validation_size:
    val, train = carve(n, validation_size, "validation_size", salt=0)
  if train_size:
    kept, _ = carve(len(train), train_size, "train_size", salt=1)
    train = train[kept]
  return train, val


def _take_rows(split: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
  """A split of equal-length arrays ({'image': [N, ...], 'label': [N]}) at `rows`; a split on
  disk (data/records.RecordRows) is a view of those rows, still on disk."""
  if hasattr(split, "take"):
    return split.take(rows)
  return {key: array[rows] for key, array in split.items()}


def _num_rows(split: dict[str, np.ndarray]) -> int:
  return len(next(iter(split.values())))


def with_validation(splits: dict[str, Any], data_cfg,
                    take: Callable[[Any, np.ndarray], Any] = _take_rows,
                    size: Callable[[Any], int] = _num_rows) -> tuple[dict[str, Any], str]:
  """(splits, sizes): 'val' carved out of 'train' by data.validation_size, and train cut to
  data.train_size of the rest where the config has that key; 'sizes' is the start-up line's
  text of the two ('train 3,367 of 67,349 | val 800 carved from train').

  Data with a 'val' split of its own (an ImageFolder val/) keeps it and carves none. A split is
  a dict of equal-length arrays, or anything that `take(split, rows)` and `size(split)` read.
  """
  full, own_val = splits["train"], splits.get("val")
  n = size(full)
  train_size = data_cfg.train_size if "train_size" in data_cfg else 0  # an optional key
  kept, val = carve_train(n, 0 if own_val is not None else data_cfg.validation_size, train_size)
  out = dict(splits)
  if len(kept) < n:  # nothing carved: train stays the arrays it was, not a copy of them
    out["train"] = take(full, kept)
  if val is not None:
    out["val"] = take(full, val)
  sizes = describe(n, kept, val)
  return out, sizes + (f" | val {size(own_val):,}" if own_val is not None else "")


def describe(n: int, train: np.ndarray, val: np.ndarray | None) -> str:
  """'train 3,367 of 67,349 | val 800 carved from train' for the start-up line ('of N' only
  when train_size dropped rows)."""
  carved = 0 if val is None else len(val)
  text = f"train {len(train):,}" + (f" of {n:,}" if len(train) + carved < n else "")
  return text + (f" | val {carved:,} carved from train" if val is not None else "")
