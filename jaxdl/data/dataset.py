"""`Dataset`: what a data loader hands the loop, whatever the task.

The loop needs only this: a train iterator addressed by step, whole eval splits in memory, which
split to evaluate when, the kwargs the model needs from the data (number of classes, vocabulary
size), and the files (a vocabulary) that must sit beside the checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import numpy as np


class TrainIterator(Protocol):
  """Global batch `step` as this process's rows; a pure function of (seed, step). What every
  train iterator implements, and all that the loop and the runner rely on."""
  size: int              # training examples (or windows' worth of tokens, for a language model)
  steps_per_epoch: int

  def batch(self, step: int) -> dict[str, np.ndarray]: ...  # always includes float32 'mask'
  def position(self, step: int) -> dict: ...                # saved with every checkpoint
  def check_position(self, step: int, saved: dict) -> None: ...  # UserError on mismatch


@runtime_checkable
class RowIterator(TrainIterator, Protocol):
  """A train iterator whose batches are rows of in-memory arrays: batch(step) is
  data.iterator.take(rows(), *indices(step)) on this process's share. The runner may then copy
  the arrays to the device once and gather each fused step's batch there."""

  def rows(self) -> dict[str, np.ndarray]: ...
  def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]: ...  # global rows, real ones


# An iterator may also set `shapes_vary = True`: its batches differ in shape from step to step
# (a text batch cut to its longest sentence), so steps cannot be fused (stacked) and the runner
# runs one step per call.


@dataclasses.dataclass
class Dataset:
  train: TrainIterator
  evals: dict[str, dict[str, np.ndarray]]  # split -> arrays, iterated by data.eval_batches
  eval_split: str                 # evaluated every config.eval_every steps
  final_splits: tuple[str, ...]   # evaluated once at the end
  source: str                     # where the data came from, in words (logged and recorded)
  describe: str                   # one start-up line of split sizes and the like
  model_info: dict[str, Any] = dataclasses.field(default_factory=dict)  # models.get kwargs
  files: dict[str, str] = dataclasses.field(default_factory=dict)  # workdir files to write
