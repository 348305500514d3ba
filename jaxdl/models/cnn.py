"""The seed document's MNIST CNN: conv32-pool-conv64-pool-dense512-dense10, 843,658 params.

Two implementations of the same function with the same parameter tree (checkpoints move freely
between them), picked by config.model.impl:
  'flax'        nn.Conv and nn.max_pool.
  'cpu'         max-pooling as reshape + max. Its gradient is a compare-and-select that XLA's CPU
                backend fuses, where nn.max_pool's gradient (select_and_scatter) is slow there: the
                seed CNN's CPU train step runs ~2.5x faster (experiments/bench/README.md).
  'cpu_im2col'  'cpu' plus each 3x3 convolution as one matmul over 9 shifted slices (im2col).
                Measured slower than XLA's convolution here; kept for other CPUs to try.
'auto' (the config default) is 'cpu' on the CPU backend and 'flax' elsewhere. The results match
to float rounding; only a max-pool window with two equal largest values could route its gradient
differently, and after the ReLU those ties are zeros, whose gradient is zero either way.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLS = ("auto", "flax", "cpu", "cpu_im2col")  # config.model.impl


def resolve_impl(impl: str) -> str:
  """'auto' → 'cpu' on the CPU backend, 'flax' on accelerators; other names unchanged."""
  if impl == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "flax"
  return impl


def _torch_kernel_init():
  """PyTorch's default for Conv2d/Linear weights: kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
  """PyTorch's default bias: U(±1/sqrt(fan_in)); flax's bias init never sees fan_in, so pass it."""
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
  """nn.max_pool(x, (2, 2), strides=(2, 2)) as reshape + max (an odd last row/column is dropped,
  as VALID pooling does)."""
  b, h, w, c = x_BxHxWxC.shape
  x = x_BxHxWxC[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Im2colConv(nn.Module):
  """nn.Conv(features, kernel_size, padding='VALID') with the same params, as one matmul of the
  kernel with the kh*kw shifted slices of the input concatenated on the channel axis."""
  features: int
  kernel_size: tuple[int, int]
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    c = x_BxHxWxC.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (kh, kw, c, self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    h, w = x_BxHxWxC.shape[1] - kh + 1, x_BxHxWxC.shape[2] - kw + 1
    # Channel index (i * kw + j) * c + ch, the row-major order of kernel's first three axes.
    cols = jnp.concatenate([x_BxHxWxC[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)],
                           axis=-1)
    return cols @ kernel.reshape(kh * kw * c, self.features) + bias


class CNN(nn.Module):
  """Images uint8[B,H,W,C] in 0..255 → logits[B,num_classes].

  Attributes:
    num_classes: output width.
    init_scheme: 'flax' (lecun_normal kernels, zero biases) or 'torch' (PyTorch's default init, which the
      seed recipe's result depends on).
    dropout: rate applied to the inputs of both dense layers during training.
    impl: 'flax', 'cpu' or 'cpu_im2col' (see the module docstring); 'auto' is resolved here.
  """
  num_classes: int = 10
  init_scheme: str = "flax"
  dropout: float = 0.0
  impl: str = "flax"

  def _inits(self, fan_in: int) -> dict:
    if self.init_scheme == "torch":
      return {"kernel_init": _torch_kernel_init(), "bias_init": _torch_bias_init(fan_in)}
    return {}

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, *, train: bool) -> jax.Array:
    impl = resolve_impl(self.impl)
    x = images_BxHxWxC.astype(jnp.float32) / 255.0  # the seed program's ToTensor(), no mean/std
    for i, features in enumerate((32, 64)):
      fan_in = 3 * 3 * x.shape[-1]
      if impl == "cpu_im2col":  # named as nn.Conv would be, so the param trees are identical
        x = Im2colConv(features, (3, 3), name=f"Conv_{i}", **self._inits(fan_in))(x)
      else:
        x = nn.Conv(features, (3, 3), padding="VALID", **self._inits(fan_in))(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2)) if impl == "flax" else max_pool_2x2(x)
    x_BxF = x.reshape(x.shape[0], -1)  # 5*5*64 = 1600 for 28x28 inputs
    x_BxF = nn.Dropout(self.dropout, deterministic=not train)(x_BxF)
    h_Bx512 = nn.relu(nn.Dense(512, **self._inits(x_BxF.shape[-1]))(x_BxF))
    h_Bx512 = nn.Dropout(self.dropout, deterministic=not train)(h_Bx512)
    return nn.Dense(self.num_classes, **self._inits(512))(h_Bx512)
