"""The seed program in PyTorch, written for the side-by-side benchmark (not part of jaxdl).

The seed CNN (conv32-pool-conv64-pool-dense512-dense10, PyTorch's default init), SGD lr 0.01,
batch 64, on the same IDX files jaxdl reads. The whole split sits in memory as tensors and each
epoch is a torch.randperm over it: the fastest plain eager-mode input path, so the comparison
measures the framework's step, not a DataLoader.

  pip install torch==2.13.0   # CPU wheel; not a jaxdl dependency (see pyproject's `bench` extra)
  python experiments/bench/torch_cnn.py --data=../shared/data/mnist-10k --epochs=10

Prints one JSON line: per-epoch training seconds (eval excluded), images/s, test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

try:
  import torch
  from torch import nn
except ImportError:
  sys.exit("this benchmark needs PyTorch: pip install torch==2.13.0 (or pip install -e .[bench])")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from jaxdl.data.idx import load_idx_dir  # pylint: disable=g-import-not-at-top


class SeedCNN(nn.Module):
  """The seed document's CNN on 1x28x28 inputs scaled to [0, 1]."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 32, 3)
    self.conv2 = nn.Conv2d(32, 64, 3)
    self.fc1 = nn.Linear(64 * 5 * 5, 512)
    self.fc2 = nn.Linear(512, 10)

  def forward(self, x):
    x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
    x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
    x = torch.relu(self.fc1(x.flatten(1)))
    return self.fc2(x)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="directory with the four MNIST IDX files")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = default")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  splits = load_idx_dir(args.data)
  to_x = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).float() / 255.0
  x_train, y_train = to_x(splits["train"]["image"]), torch.from_numpy(splits["train"]["label"]).long()
  x_test, y_test = to_x(splits["test"]["image"]), torch.from_numpy(splits["test"]["label"]).long()
  model = SeedCNN()
  opt = torch.optim.SGD(model.parameters(), lr=0.01)
  loss_fn = nn.CrossEntropyLoss()
  epoch_s = []
  n = len(x_train)
  for _ in range(args.epochs):
    model.train()
    start = time.perf_counter()
    order = torch.randperm(n)
    for i in range(0, n, args.batch_size):
      idx = order[i:i + args.batch_size]
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(model(x_train[idx]), y_train[idx])
      loss.backward()
      opt.step()
    epoch_s.append(time.perf_counter() - start)
  model.eval()
  with torch.no_grad():
    correct = sum(int((model(x_test[i:i + 500]).argmax(1) == y_test[i:i + 500]).sum())
                  for i in range(0, len(x_test), 500))
  warm = epoch_s[1:] or epoch_s  # epoch 1 includes one-off warm-up (allocator, kernels)
  print(json.dumps({
      "impl": "torch", "threads": torch.get_num_threads(), "torch": torch.__version__,
      "epoch_s": [round(s, 3) for s in epoch_s],
      "images_per_s": n * len(warm) / sum(warm), "train_s": sum(epoch_s),
      "test_accuracy": correct / len(x_test)}))


if __name__ == "__main__":
  main()
