"""Data: sources that load whole splits into memory, and the deterministic batch iterators.

`load(config, workdir)` is the one place a task becomes a loader (an explicit choice).
"""

from jaxdl.data import images, lm, text
from jaxdl.data.dataset import Dataset
from jaxdl.data.iterator import TrainBatches, eval_batches
from jaxdl.errors import UserError

TASKS = ("image_classification", "text_classification", "language_model")  # config.task


def load(config, workdir: str) -> Dataset:
  """The Dataset for config.task; reads (never writes) files a previous run left in workdir."""
  if config.task == "image_classification":
    return images.load_dataset(config, workdir)
  if config.task == "text_classification":
    return text.load_dataset(config, workdir)
  if config.task == "language_model":
    return lm.load_dataset(config, workdir)
  raise UserError(f"task={config.task!r} is not one of {', '.join(TASKS)}")


__all__ = ["Dataset", "TASKS", "TrainBatches", "eval_batches", "load"]
