"""The seed document's MNIST CNN: conv32-pool-conv64-pool-dense512-dense10, 843,658 params.

Three implementations of the training pass, with the same parameter tree (checkpoints move
freely between them), picked by config.model.impl:
  'flax'        nn.Conv and nn.max_pool.
  'cpu'         max-pooling as reshape + max, whose gradient is a compare-and-select that XLA's CPU
                backend fuses (nn.max_pool's gradient, select_and_scatter, is slow there: the seed
                CNN's step ~2.5x faster); the rows and columns that pooling drops are not computed.
  'cpu_im2col'  'cpu' with the convolutions by conv_cpu: matmuls of the im2col windows, with a
                hand-written gradient. The seed CNN's CPU train step ~1.3x faster than 'cpu'.
'auto' (the config default) is 'cpu_im2col' on the CPU backend and 'flax' elsewhere. A forward-only
pass (train=False: eval, predict) always uses the flax layers, the fastest forward on CPU too.
The results match to float rounding, except that a max-pool window with tied largest values
routes its gradient differently (nn.max_pool: all of it to the first; the CPU layers: split
evenly, as autodiff of a max does); ties need exactly equal activations, as in constant image
regions. Measurements: experiments/bench/README.md.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.errors import UserError, require
from jaxdl.models import precision

IMPLS = ("auto", "flax", "cpu", "cpu_im2col")  # config.model.impl

# Resume declarations (jaxdl/resume.py): the implementations share one parameter tree and
# differ only in rounding (and tied max-pool gradients), so model.impl may change on resume.
RESUME_HARMLESS = ("model.impl",)


def resolve_impl(impl: str) -> str:
  """'auto' → 'cpu_im2col' on the CPU backend, 'flax' on accelerators; other names unchanged."""
  if impl == "auto":
    return "cpu_im2col" if jax.default_backend() == "cpu" else "flax"
  return impl


def _torch_kernel_init():
  """PyTorch's default for Conv2d/Linear weights: kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
  """PyTorch's default bias: U(±1/sqrt(fan_in)); flax's bias init never sees fan_in, so pass it."""
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _pool_windows(x_BxHxWxC: jax.Array) -> jax.Array:
  """[B, H/2, 2, W/2, 2, C]: the 2x2 windows (an odd last row/column dropped, as VALID pooling
  does)."""
  b, h, w, c = x_BxHxWxC.shape
  return x_BxHxWxC[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)


def _max_pool_2x2_fwd(x_BxHxWxC):
  windows = _pool_windows(x_BxHxWxC)
  pooled = windows.max(axis=(2, 4))
  return pooled, (windows, pooled, x_BxHxWxC.shape)


@jax.custom_vjp
def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
  """nn.max_pool(x, (2, 2), strides=(2, 2)) as reshape + max, with a hand-written gradient.

  The gradient is autodiff's (each window's gradient split evenly between its tied maxima), in
  one fused select: autodiff's own also materialises the tie indicators and sums them in a
  separate reduction, ~1.3 ms more of the seed CNN's ~12 ms CPU step.
  """
  return _max_pool_2x2_fwd(x_BxHxWxC)[0]


def _max_pool_2x2_bwd(residuals, dpooled):
  windows, pooled, (b, h, w, c) = residuals
  is_max = (windows == pooled[:, :, None, :, None, :]).astype(dpooled.dtype)
  ties = (is_max[:, :, 0, :, 0] + is_max[:, :, 0, :, 1]
          + is_max[:, :, 1, :, 0] + is_max[:, :, 1, :, 1])  # >= 1: the max is in its window
  dx = (is_max * (dpooled / ties)[:, :, None, :, None, :]).reshape(b, h // 2 * 2, w // 2 * 2, c)
  return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def _windows(x_BxHxWxC: jax.Array, kh: int, kw: int) -> list[jax.Array]:
  """The kh*kw shifted VALID windows [B, H-kh+1, W-kw+1, C], in the row-major order (i, j) of a
  kernel's first two axes."""
  h, w = x_BxHxWxC.shape[1] - kh + 1, x_BxHxWxC.shape[2] - kw + 1
  return [x_BxHxWxC[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)]


def _im2col(x_BxHxWxC: jax.Array, kh: int, kw: int) -> jax.Array:
  """The windows concatenated on the channel axis: [B, H-kh+1, W-kw+1, kh*kw*C]. Channel index
  (i * kw + j) * C + c, the row-major order of an HWIO kernel's first three axes."""
  return jnp.concatenate(_windows(x_BxHxWxC, kh, kw), axis=-1)


def _xla_conv(x_BxHxWxC: jax.Array, kernel_HxWxIxO: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x_BxHxWxC, kernel_HxWxIxO, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _shift_add(x_BxHxWx1: jax.Array, kernel_HxWx1xO: jax.Array) -> jax.Array:
  """A VALID convolution of a 1-channel input as kh*kw broadcast multiply-adds of shifted
  windows, which XLA fuses into one loop."""
  kh, kw, _, out = kernel_HxWx1xO.shape
  taps_TxO = kernel_HxWx1xO.reshape(kh * kw, out)
  return sum(window * tap for window, tap in zip(_windows(x_BxHxWx1, kh, kw), taps_TxO))


def _conv_cpu_fwd(x_BxHxWxC, kernel_HxWxIxO):
  kh, kw, c, o = kernel_HxWxIxO.shape
  if c == 1:  # a matmul of depth kh*kw would be slower than the fused multiply-adds
    return _shift_add(x_BxHxWxC, kernel_HxWxIxO), (x_BxHxWxC, None, kernel_HxWxIxO)
  cols = _im2col(x_BxHxWxC, kh, kw)
  return cols @ kernel_HxWxIxO.reshape(kh * kw * c, o), (x_BxHxWxC, cols, kernel_HxWxIxO)


@jax.custom_vjp
def conv_cpu(x_BxHxWxC: jax.Array, kernel_HxWxIxO: jax.Array) -> jax.Array:
  """A VALID stride-1 convolution (nn.Conv's, without bias) with matmul kernel gradients.

  Forward: one matmul of the im2col windows with the kernel (fused multiply-adds for a 1-channel
  input). Backward: the kernel gradient is one plain matmul of the windows with the output
  gradient, and the input gradient is XLA's transposed convolution, which is fast on CPU.
  Why a custom VJP: XLA:CPU's own convolution kernel gradient is its slowest piece, and autodiff
  of the matmul form lets XLA fuse the window slicing into neighbouring ops, which was slower
  still. Seed CNN, each piece alone on 2 cores: conv2 forward 2.0 (windows) + 2.2 ms against
  XLA's 4.8 ms, its kernel gradient 3.6 against 8.6 ms; conv1 with its bias, ReLU, pooling and
  kernel gradient 3.4 against 4.6 ms (experiments/bench/README.md).
  """
  return _conv_cpu_fwd(x_BxHxWxC, kernel_HxWxIxO)[0]


def _conv_cpu_bwd(residuals, dy_BxHxWxO):
  x, cols, kernel = residuals
  kh, kw, _, o = kernel.shape
  if cols is None:
    cols = _im2col(x, kh, kw)
  rows = cols.shape[0] * cols.shape[1] * cols.shape[2]
  dkernel = (cols.reshape(rows, -1).T @ dy_BxHxWxO.reshape(rows, o)).reshape(kernel.shape)
  # Unused (and removed by XLA) when nothing upstream needs it, as for a first layer.
  dx = jax.vjp(lambda x_: _xla_conv(x_, kernel), x)[1](dy_BxHxWxO)[0]
  return dx, dkernel


conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


class Im2colConv(nn.Module):
  """nn.Conv(features, kernel_size, padding='VALID') with the same params, by conv_cpu."""
  features: int
  kernel_size: tuple[int, int]
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x_BxHxWxC.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    return conv_cpu(x_BxHxWxC.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(
        self.dtype)


class CNN(nn.Module):
  """Images uint8[B,H,W,C] in 0..255 → logits[B,num_classes].

  Attributes:
    num_classes: output width.
    init_scheme: 'flax' (lecun_normal kernels, zero biases) or 'torch' (PyTorch's default init, which the
      seed recipe's result depends on).
    dropout: rate applied to the inputs of both dense layers during training.
    impl: 'flax', 'cpu' or 'cpu_im2col' (see the module docstring); 'auto' is resolved here.
    dtype, param_dtype: compute and storage dtypes (models/precision.py); logits are float32.
  """
  num_classes: int = 10
  init_scheme: str = "flax"
  dropout: float = 0.0
  impl: str = "flax"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _inits(self, fan_in: int) -> dict:
    policy = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    if self.init_scheme == "torch":
      return {"kernel_init": _torch_kernel_init(), "bias_init": _torch_bias_init(fan_in), **policy}
    return policy

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, *, train: bool) -> jax.Array:
    # The CPU layers speed up the gradient; a forward-only pass (eval, predict) is fastest with
    # the flax layers on CPU too (seed CNN eval at batch 512: 26,800 images/s against 13,400 for
    # 'cpu' and 6,000 for 'cpu_im2col', whose windows are a 59 MB copy at that batch).
    impl = resolve_impl(self.impl) if train else "flax"
    h, w = images_BxHxWxC.shape[1:3]  # static: checked once, while the step is traced
    if min(h, w) < 10:  # two 3x3 VALID convolutions, each followed by a 2x2 pool, need 10 px
      raise UserError(f"the cnn model needs images of at least 10x10 pixels, these are {h}x{w} "
                      f"(set data.image_size >= 10)")
    x = images_BxHxWxC.astype(jnp.float32) / 255.0  # the seed program's ToTensor(), no mean/std
    for i, features in enumerate((32, 64)):
      fan_in = 3 * 3 * x.shape[-1]
      if impl != "flax":
        # The 2x2 pooling drops an odd last output row and column, so they need not be computed:
        # crop the input to what the pooled outputs see (conv2: 13x13 -> 12x12, 17% fewer
        # products, and no strided crop of the convolution's output).
        h, w = x.shape[1] - 2, x.shape[2] - 2  # the 3x3 VALID output size
        x = x[:, :h // 2 * 2 + 2, :w // 2 * 2 + 2]
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
    return nn.Dense(self.num_classes, **self._inits(512))(h_Bx512).astype(jnp.float32)


INIT_SCHEMES = ("flax", "torch")  # config.model.init


def check(m) -> None:
  """The CNN's keys of config.model (model.dropout: models.check)."""
  require(m.init in INIT_SCHEMES, "model.init", m.init, f"must be one of {', '.join(INIT_SCHEMES)}")
  require(m.impl in IMPLS, "model.impl", m.impl, f"must be one of {', '.join(IMPLS)}")
  precision.check(m)


def from_config(m, *, num_classes: int) -> CNN:
  """The CNN of config.model (model.num_classes, which the image task checked against its data)."""
  return CNN(num_classes=num_classes, init_scheme=m.init, dropout=m.dropout, impl=m.impl,
             dtype=precision.compute_dtype(m.dtype), param_dtype=precision.DTYPES[m.param_dtype])
