"""The seed document's MNIST CNN: conv32-pool-conv64-pool-dense512-dense10, 843,658 params."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def _torch_kernel_init():
  """PyTorch's default for Conv2d/Linear weights: kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
  """PyTorch's default bias: U(±1/sqrt(fan_in)); flax's bias init never sees fan_in, so pass it."""
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class CNN(nn.Module):
  """Images uint8[B,H,W,C] in 0..255 → logits[B,num_classes].

  Attributes:
    num_classes: output width.
    init_scheme: 'flax' (lecun_normal kernels, zero biases) or 'torch' (PyTorch's default init, which the
      seed recipe's result depends on).
    dropout: rate applied to the inputs of both dense layers during training.
  """
  num_classes: int = 10
  init_scheme: str = "flax"
  dropout: float = 0.0

  def _inits(self, fan_in: int) -> dict:
    if self.init_scheme == "torch":
      return {"kernel_init": _torch_kernel_init(), "bias_init": _torch_bias_init(fan_in)}
    return {}

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, *, train: bool) -> jax.Array:
    x = images_BxHxWxC.astype(jnp.float32) / 255.0  # the seed program's ToTensor(), no mean/std
    for features in (32, 64):
      fan_in = 3 * 3 * x.shape[-1]
      x = nn.Conv(features, (3, 3), padding="VALID", **self._inits(fan_in))(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x_BxF = x.reshape(x.shape[0], -1)  # 5*5*64 = 1600 for 28x28 inputs
    x_BxF = nn.Dropout(self.dropout, deterministic=not train)(x_BxF)
    h_Bx512 = nn.relu(nn.Dense(512, **self._inits(x_BxF.shape[-1]))(x_BxF))
    h_Bx512 = nn.Dropout(self.dropout, deterministic=not train)(h_Bx512)
    return nn.Dense(self.num_classes, **self._inits(512))(h_Bx512)
