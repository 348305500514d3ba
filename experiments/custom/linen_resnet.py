"""A small ResNet in flax.linen, trained on MNIST by jaxdl's shipped image task.

  python -m jaxdl.main --config=experiments/custom/resnet_mnist.py --workdir=runs/resnet \
      --config.data.path=../shared/data/mnist-10k

jaxdl calls `ResNet(model_config, num_classes=...)` (the model.name in the config is
'experiments.custom.linen_resnet:ResNet', importable from the repo root) and gets a linen
Module back; `module(images, train=...)` returns logits. Its own keys (widths, blocks) sit in
the config's model block.
"""

import flax.linen as nn
import jax.numpy as jnp


class _Block(nn.Module):
  """Two 3x3 convolutions with batch-free (group) normalisation and a skip connection."""
  width: int
  stride: int

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.width, (3, 3), (self.stride, self.stride), use_bias=False)(x)
    y = nn.relu(nn.GroupNorm(num_groups=8)(y))
    y = nn.Conv(self.width, (3, 3), use_bias=False)(y)
    y = nn.GroupNorm(num_groups=8)(y)
    if x.shape[-1] != self.width or self.stride != 1:  # project the skip to the new shape
      x = nn.Conv(self.width, (1, 1), (self.stride, self.stride), use_bias=False)(x)
    return nn.relu(x + y)


class _ResNet(nn.Module):
  widths: tuple[int, ...]
  blocks: int
  num_classes: int
  dropout: float

  @nn.compact
  def __call__(self, images_BxHxWxC, *, train: bool):
    x = images_BxHxWxC.astype(jnp.float32) / 255.0
    x = nn.relu(nn.Conv(self.widths[0], (3, 3))(x))
    for stage, width in enumerate(self.widths):
      for i in range(self.blocks):
        x = _Block(width, stride=2 if stage > 0 and i == 0 else 1)(x)
    x = x.mean(axis=(1, 2))  # global average pool
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


def ResNet(model_config, *, num_classes: int) -> nn.Module:  # pylint: disable=invalid-name
  """The builder jaxdl calls: the config's model block and what the data decided."""
  return _ResNet(widths=tuple(model_config.widths), blocks=model_config.blocks,
                 num_classes=num_classes, dropout=model_config.dropout)
