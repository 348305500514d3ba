"""Dense layers of the Transformer LM, and the logical axis names that shard them.

`impl` (config.model.impl) picks the dense layers that read the LayerNorm outputs and the
attention output: 'flax' (nn.Dense, nn.DenseGeneral) or 'cpu' (CpuDense: the same params, init
and function, with a hand-written kernel gradient that XLA's CPU backend runs ~25% faster over
the whole step); 'auto' is 'cpu' on the CPU backend and 'flax' elsewhere.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLS = ("auto", "flax", "cpu")  # config.model.impl


def resolve_impl(impl: str) -> str:
  """'auto' → 'cpu' on the CPU backend, 'flax' on accelerators; other names unchanged."""
  if impl == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "flax"
  return impl


@jax.custom_vjp
def matmul_cpu(x_NxK: jax.Array, w_KxM: jax.Array) -> jax.Array:
  """x @ w, whose kernel gradient is x's transpose, made on its own, times the output gradient.

  Autodiff's kernel gradient contracts the rows of x and of the output gradient g, and leaves
  the layouts to XLA. XLA:CPU transposed g instead of x, fused into the op that makes g (the
  GELU's backward for mlp_in, the attention's for out and qkv), which then wrote strided at
  ~10 ns an element: 1.5-3.5 ms per layer in the tiny LM's profile. Transposing x (the 128-wide
  LayerNorm or attention output) behind an optimization barrier, so that XLA keeps it a plain
  copy, leaves two row-major products."""
  return x_NxK @ w_KxM


def _matmul_cpu_fwd(x_NxK, w_KxM):
  return x_NxK @ w_KxM, (x_NxK, w_KxM)


def _matmul_cpu_bwd(residuals, g_NxM):
  x_NxK, w_KxM = residuals
  return g_NxM @ w_KxM.T, jax.lax.optimization_barrier(x_NxK.T) @ g_NxM


matmul_cpu.defvjp(_matmul_cpu_fwd, _matmul_cpu_bwd)


class CpuDense(nn.Module):
  """nn.DenseGeneral over the last `in_axes` input axes, by matmul_cpu. The same parameter
  tree, init and function as nn.Dense (in_axes=1, int features) and nn.DenseGeneral, so
  checkpoints move between the two."""
  features: int | tuple[int, ...]
  in_axes: int = 1
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  param_dtype: jnp.dtype = jnp.float32
  kernel_axes: tuple = ()  # logical axis names of the kernel (and the bias: its feature axes)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = self.features if isinstance(self.features, tuple) else (self.features,)
    in_shape = x.shape[-self.in_axes:]
    k, m = math.prod(in_shape), math.prod(features)
    # Drawn as a K×M matrix and reshaped, as nn.DenseGeneral does, so the values are the same.
    init = lambda key, shape: self.kernel_init(key, (k, m), self.param_dtype).reshape(shape)
    kernel = self.param("kernel", named(init, self.kernel_axes), (*in_shape, *features))
    y = matmul_cpu(x.reshape(-1, k).astype(self.dtype), kernel.reshape(k, m).astype(self.dtype))
    y = y.reshape(*x.shape[:-self.in_axes], *features)
    if self.use_bias:
      bias_axes = self.kernel_axes[self.in_axes:] if self.kernel_axes else ()
      y = y + self.param("bias", named(nn.initializers.zeros_init(), bias_axes), features,
                         self.param_dtype).astype(self.dtype)
    return y


def named(init: Callable, axes: tuple) -> Callable:
  """init, its param annotated with logical axis names (parallel.LOGICAL_RULES maps them to
  the mesh: Megatron-style tensor parallelism over 'model'); unannotated without names."""
  return nn.with_logical_partitioning(init, axes) if axes else init


def dense(impl: str, features, *, in_axes: int = 1, use_bias: bool, dtype: jnp.dtype,
           param_dtype: jnp.dtype, std: float, axes: tuple, name: str) -> nn.Module:
  """A dense layer of the resolved impl, with normal(std) kernels whose axes carry the logical
  names `axes` (inputs then features; the bias takes the features' names)."""
  if impl == "cpu":
    return CpuDense(features, in_axes, use_bias, dtype, nn.initializers.normal(std),
                    param_dtype, axes, name=name)
  return nn.DenseGeneral(features, axis=tuple(range(-in_axes, 0)), use_bias=use_bias,
                         dtype=dtype, param_dtype=param_dtype,
                         kernel_init=named(nn.initializers.normal(std), axes),
                         bias_init=named(nn.initializers.zeros_init(), axes[in_axes:]),
                         name=name)
