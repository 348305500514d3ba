"""The model of the loop's tests: a 2-layer MLP for 28x28 images, named as a user names their
own model (`--config.model.name=small_models:mlp`; tests/ is on the tests' PYTHONPATH).

The tests of the loop (resume, faults, parallel modes, several processes, gs://) are about the
loop, not the model: this MLP compiles in a fraction of the seed CNN's time (6 CPU-s less per
new program), which the suite pays for every config it trains. The CNN has its own tests
(test_models.py) and trains end to end where a test names it.
"""

from flax import nnx
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import optax


class MLP(nn.Module):
  hidden: int = 32
  num_classes: int = 10
  dropout: float = 0.0
  dtype: Any = jnp.float32        # the compute dtype of its layers
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0
    dense = lambda n: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(dense(self.hidden)(x)))
    return dense(self.num_classes)(x).astype(jnp.float32)


def mlp(model_config, *, num_classes: int) -> nn.Module:
  """The MNIST config's model block, read for its dropout rate (the step rng's use)."""
  return MLP(num_classes=num_classes, dropout=model_config.dropout)


class BatchNormMLP(nn.Module):
  """The MLP with BatchNorm after its hidden layer: a model with state ('batch_stats'). The
  hidden layer has no bias, as before any BatchNorm: the norm subtracts it, so its gradient is
  float rounding, which Adam's m/sqrt(v) turns into full-size updates of either sign."""
  hidden: int = 32
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0
    x = nn.Dense(self.hidden, use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(self.num_classes)(nn.relu(x))


def bn_mlp(model_config, *, num_classes: int) -> nn.Module:
  del model_config  # no keys of its own
  return BatchNormMLP(num_classes=num_classes)


class NnxListMLP(nnx.Module):
  """An NNX MLP whose hidden layers are a list (NNX's state keys them 0 and 1, ints, which a
  checkpoint or a weights file names '0' and '1'), with BatchNorm: the export tests' NNX model."""

  def __init__(self, model_config, *, num_classes: int, rngs: nnx.Rngs):
    del model_config
    self.layers = nnx.List([nnx.Linear(28 * 28, 16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs)])
    self.norm = nnx.BatchNorm(16, momentum=0.5, rngs=rngs)
    self.out = nnx.Linear(16, num_classes, rngs=rngs)

  def __call__(self, x, *, train: bool):
    x = x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0
    for layer in self.layers:
      x = nnx.relu(layer(x))
    return self.out(self.norm(x, use_running_average=not train))


def mlp_with_policy(model_config, *, num_classes: int, dtype, param_dtype) -> nn.Module:
  """mlp, for a builder that takes the precision policy (models.get passes it)."""
  return MLP(num_classes=num_classes, dropout=model_config.dropout, dtype=dtype,
             param_dtype=param_dtype)


def bn_mlp_wide_head(model_config, *, num_classes: int) -> nn.Module:
  """bn_mlp with one more output than the data has classes: a new head, of another shape than
  a bn_mlp run's (init_from with init_from_keys)."""
  del model_config
  return BatchNormMLP(num_classes=num_classes + 1)


class SmallCNN(nn.Module):
  """An MNIST-shaped CNN the size of a test: a 3x3 convolution of 8 channels, a 4x4 max-pool
  and a dense layer (tests/test_optim.py trains it with other optimizers)."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x_BxHxWxC, *, train: bool):
    del train  # no dropout
    x = nn.relu(nn.Conv(8, (3, 3))(x_BxHxWxC.astype(jnp.float32) / 255.0))
    x = nn.max_pool(x, (4, 4), strides=(4, 4))
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def small_cnn(model_config, *, num_classes: int) -> nn.Module:
  del model_config  # no keys of its own
  return SmallCNN(num_classes=num_classes)


def nesterov_sgd(learning_rate, momentum: float = 0.9):
  """A user's optimizer, named as `opt.name=small_models:nesterov_sgd` and called as jaxdl
  calls optax's own factories (learning_rate = the schedule, opt.kwargs' keywords)."""
  return optax.sgd(learning_rate, momentum=momentum, nesterov=True)
