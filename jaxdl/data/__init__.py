"""Data: sources that load whole splits into memory, and the deterministic batch iterators."""

from jaxdl.data.images import load as load_images
from jaxdl.data.iterator import TrainBatches, eval_batches

__all__ = ["load_images", "TrainBatches", "eval_batches"]
