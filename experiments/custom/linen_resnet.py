"""A small ResNet with BatchNorm in flax.linen, trained on MNIST by jaxdl's shipped image task.

  python -m jaxdl.main --config=experiments/custom/resnet_mnist.py --workdir=runs/resnet \
      --config.data.path=../shared/data/mnist-10k

jaxdl calls `ResNet(model_config, num_classes=...)` (the model.name in the config is
'experiments.custom.linen_resnet:ResNet', importable from the repo root) and gets a linen
Module back; `module(images, train=...)` returns logits. Its own keys (widths, blocks,
bn_momentum, dropout) sit in the config's model block.

BatchNorm's running averages are the model's state ('batch_stats', every collection but
'params'): jaxdl keeps them in the train state and its checkpoints, each train step normalises
by the batch's statistics and updates the averages, and evaluation and prediction normalise by
the averages (jaxdl/models/__init__.py `apply`; how the state behaves under jit, pmap and
gradient accumulation: jaxdl/steps.py). Under parallel.mode='pmap' each device normalises by
its own slice of the batch; `nn.BatchNorm(axis_name='data')` would sync the statistics there.
"""

import flax.linen as nn
import jax.numpy as jnp


class _Block(nn.Module):
  """Two 3x3 convolutions, each batch-normalised, and a skip connection."""
  width: int
  stride: int
  momentum: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=self.momentum)
    y = nn.Conv(self.width, (3, 3), (self.stride, self.stride), use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.width, (3, 3), use_bias=False)(y)
    y = norm()(y)
    if x.shape[-1] != self.width or self.stride != 1:  # project the skip to the new shape
      x = nn.Conv(self.width, (1, 1), (self.stride, self.stride), use_bias=False)(x)
      x = norm()(x)
    return nn.relu(x + y)


class _ResNet(nn.Module):
  widths: tuple[int, ...]
  blocks: int
  num_classes: int
  momentum: float
  dropout: float

  @nn.compact
  def __call__(self, images_BxHxWxC, *, train: bool):
    x = images_BxHxWxC.astype(jnp.float32) / 255.0
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x))
    # Every stage's first block halves the resolution (28 -> 14 -> 7 -> 4 on MNIST): at the
    # same cost, wider stages than with a first stage at full resolution (README: results).
    for width in self.widths:
      for i in range(self.blocks):
        x = _Block(width, stride=2 if i == 0 else 1, momentum=self.momentum)(x, train=train)
    x = x.mean(axis=(1, 2))  # global average pool
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


def ResNet(model_config, *, num_classes: int) -> nn.Module:  # pylint: disable=invalid-name
  """The builder jaxdl calls: the config's model block and what the data decided."""
  return _ResNet(widths=tuple(model_config.widths), blocks=model_config.blocks,
                 num_classes=num_classes, momentum=model_config.bn_momentum,
                 dropout=model_config.dropout)
