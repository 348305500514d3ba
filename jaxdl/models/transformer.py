"""Decoder-only Transformer LM (GPT-2 style): pre-LayerNorm blocks, causal attention, MLP.

Positions are learned embeddings or rotary (RoPE). The same module runs in two modes:
  - training / evaluation: `model.apply({'params': p}, inputs_BxL, train=...)` → logits_BxLxV,
    every position attending to itself and the positions before it;
  - decoding: `model.apply({'params': p, 'cache': c}, chunk_BxT, train=False, decode=True,
    mutable=['cache'])` appends the chunk's keys and values to a cache of `block_size`
    positions and returns the chunk's logits, so generating one character costs one position's
    compute instead of a pass over the whole context. `init_cache` makes an empty cache.

The dense layers (config.model.impl: flax | cpu | auto) and the logical axis names that
shard them over a 'model' mesh axis are in dense.py.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import parallel
from jaxdl.errors import UserError, require
from jaxdl.models import dense, precision

POSITIONS = ("learned", "rope")
REMATS = ("none", "block")  # config.model.remat, or one of these jax.checkpoint_policies:
REMAT_POLICIES = ("dots_saveable", "dots_with_no_batch_dims_saveable", "checkpoint_dots",
                  "checkpoint_dots_with_no_batch_dims", "nothing_saveable",
                  "everything_saveable")
_INIT_STD = 0.02  # GPT-2's init: normal(0.02) everywhere, residual projections scaled down


ATTENTIONS = ("auto", "xla", "cudnn")  # config.model.attention
FUSED_IMPLEMENTATION = "cudnn"  # jax.nn.dot_product_attention's, for attention='cudnn'

# Resume declarations (jaxdl/resume.py). The dense layers' implementation, the attention kernel
# and rematerialisation compute the same params' same function, differing only in rounding
# and memory, so they may change on resume. Runs made before remat, attention and scan_layers
# existed kept activations, materialised the scores and stored block_0.. unstacked.
RESUME_HARMLESS = ("model.impl", "model.attention", "model.remat")
RESUME_ADDED = {"model.remat": "none", "model.attention": "xla", "model.scan_layers": False}


def resolve_attention(attention: str, dtype, dropout: float) -> str:
  """'auto' → 'cudnn' on a GPU with a 16-bit compute dtype and no attention dropout (what the
  fused kernel supports), else 'xla'; other names unchanged."""
  if attention == "auto":
    fits = jnp.dtype(dtype).itemsize == 2 and dropout == 0
    return "cudnn" if jax.default_backend() == "gpu" and fits else "xla"
  return attention


def _rope(x_BxTxHxD: jax.Array, positions_T: jax.Array, block_size: int,
          decode: bool) -> jax.Array:
  """Rotary position embedding: rotates each (first half, second half) feature pair of q or k
  by an angle proportional to its absolute position, so q·k depends on the distance only."""
  d = x_BxTxHxD.shape[-1]
  # The sin/cos tables are numpy constants of the compiled program, not jnp.sin/jnp.cos of the
  # positions: XLA fuses those into every consumer and recomputes them per element there (on
  # CPU the attention backward that joins the q/k/v gradients took ~1 ms a layer; the tables
  # took the :nanogpt_cpu step from 40.8 to 37.8 ms, experiments/bench/README.md section 7).
  t = x_BxTxHxD.shape[1]
  inv_freq_F = 1.0 / (10_000 ** (np.arange(0, d // 2, dtype=np.float64) / (d // 2)))
  angles_LxF = np.arange(max(block_size, t), dtype=np.float64)[:, None] * inv_freq_F[None, :]
  sin_LxF, cos_LxF = np.sin(angles_LxF).astype(np.float32), np.cos(angles_LxF).astype(np.float32)
  if decode:  # the chunk's positions are data (where the cache ends)
    sin_TxF, cos_TxF = (jnp.take(table, positions_T, axis=0) for table in (sin_LxF, cos_LxF))
  else:  # positions 0..T-1
    sin_TxF, cos_TxF = sin_LxF[:t], cos_LxF[:t]
  sin, cos = sin_TxF[:, None, :], cos_TxF[:, None, :]  # T×1×F
  x1, x2 = jnp.split(x_BxTxHxD.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxD.dtype)


def _layer_norm(use_bias: bool, dtype, param_dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=dense.named(nn.initializers.ones_init(), ("embed",)),
                      bias_init=dense.named(nn.initializers.zeros_init(), ("embed",)))


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention, with a key/value cache in decode mode."""
  num_heads: int
  block_size: int
  positions: str
  dropout: float
  num_layers: int
  use_bias: bool
  dtype: jnp.dtype
  impl: str
  attention: str = "xla"  # resolved: xla | cudnn (resolve_attention)
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_T: jax.Array, *, train: bool,
               decode: bool) -> jax.Array:
    b, t, d = x_BxTxD.shape
    h = self.num_heads
    linear = functools.partial(dense.dense, self.impl, use_bias=self.use_bias,
                               dtype=self.dtype, param_dtype=self.param_dtype)
    # Column-parallel qkv (heads split over 'model'), row-parallel out: one all-reduce.
    qkv_BxTx3xHxK = linear((3, h, d // h), std=_INIT_STD, axes=("embed", None, "heads", "kv"),
                           name="qkv")(x_BxTxD)
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (qkv_BxTx3xHxK[:, :, i] for i in range(3))
    if self.positions == "rope":
      rope = lambda x: _rope(x, positions_T, self.block_size, decode)
      q_BxTxHxK, k_BxTxHxK = rope(q_BxTxHxK), rope(k_BxTxHxK)

    if decode:
      # Write this chunk's keys/values at its positions; attend over the whole cache, masking
      # the positions after each query (which includes every slot not written yet).
      shape = (b, self.block_size, h, d // h)
      cached_k = self.variable("cache", "key", jnp.zeros, shape, k_BxTxHxK.dtype)
      cached_v = self.variable("cache", "value", jnp.zeros, shape, v_BxTxHxK.dtype)
      start = positions_T[0]
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BxTxHxK, (0, start, 0, 0))
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BxTxHxK, (0, start, 0, 0))
      k_BxSxHxK, v_BxSxHxK = cached_k.value, cached_v.value
      key_positions_S = jnp.arange(self.block_size)
    else:
      k_BxSxHxK, v_BxSxHxK, key_positions_S = k_BxTxHxK, v_BxTxHxK, positions_T
    if self.attention == "cudnn" and not decode:
      # cuDNN's fused flash attention: the T×S scores never reach memory. No dropout on the
      # attention weights (check() refuses one), so train and eval are the same call.
      out_BxTxHxK = jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, is_causal=True,
                                                 implementation=FUSED_IMPLEMENTATION)
    else:
      mask_TxS = positions_T[:, None] >= key_positions_S[None, :]
      scores_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK) / jnp.sqrt(d // h)
      scores_BxHxTxS = jnp.where(mask_TxS, scores_BxHxTxS.astype(jnp.float32), -1e30)
      weights_BxHxTxS = jax.nn.softmax(scores_BxHxTxS, axis=-1).astype(self.dtype)
      weights_BxHxTxS = nn.Dropout(self.dropout, deterministic=not train)(weights_BxHxTxS)
      out_BxTxHxK = jnp.einsum("bhts,bshk->bthk", weights_BxHxTxS, v_BxSxHxK)
    return linear(d, in_axes=2, std=_INIT_STD / (2 * self.num_layers) ** 0.5,
                  axes=("heads", "kv", "embed"), name="out")(out_BxTxHxK)



class Block(nn.Module):
  """x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)): the pre-LayerNorm block."""
  num_heads: int
  mlp_ratio: int
  block_size: int
  positions: str
  dropout: float
  num_layers: int
  use_bias: bool
  dtype: jnp.dtype
  impl: str
  attention: str = "xla"
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_T: jax.Array, train: bool,
               decode: bool) -> jax.Array:
    # train and decode are positional: under nn.remat they are static (static_argnums).
    d = x_BxTxD.shape[-1]
    norm = lambda name: _layer_norm(self.use_bias, self.dtype, self.param_dtype, name)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    y = CausalSelfAttention(self.num_heads, self.block_size, self.positions, self.dropout,
                            self.num_layers, self.use_bias, self.dtype, self.impl,
                            self.attention, self.param_dtype, name="attn")(
                                norm("ln_attn")(x_BxTxD), positions_T, train=train, decode=decode)
    x_BxTxD = x_BxTxD + drop(y)
    y = norm("ln_mlp")(x_BxTxD)
    # Column-parallel mlp_in (its outputs split over 'model'), row-parallel mlp_out.
    y = dense.dense(self.impl, self.mlp_ratio * d, use_bias=self.use_bias, dtype=self.dtype,
                    param_dtype=self.param_dtype, std=_INIT_STD, axes=("embed", "mlp"),
                    name="mlp_in")(y)
    y = nn.gelu(y)  # tanh-approximate GELU (GPT-2's; nanoGPT's PyTorch nn.GELU() is the erf one)
    # Always nn.Dense: its input is the wide one, whose transpose costs what CpuDense saves.
    y = nn.Dense(d, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="mlp_out", kernel_init=dense.named(nn.initializers.normal(
                     _INIT_STD / (2 * self.num_layers) ** 0.5), ("mlp", "embed")),
                 bias_init=dense.named(nn.initializers.zeros_init(), ("embed",)))(y)
    return x_BxTxD + drop(y)


class TransformerLM(nn.Module):
  """Token ids int32[B,L] → next-token logits float32[B,L,vocab_size].

  Attributes:
    vocab_size: number of token ids (the data's vocabulary).
    num_layers, num_heads, width, mlp_ratio: sizes; width must divide by num_heads.
    block_size: the longest context (learned position table size; decode cache length).
    positions: 'learned' (a table added to the token embedding) or 'rope' (rotary, in q and k).
    dropout: rate on attention weights and on each residual branch during training.
    tie_embeddings: the output layer reuses the token embedding (GPT-2, nanoGPT).
    use_bias: biases in the dense layers and LayerNorms (nanoGPT's default is none).
    dtype: compute dtype of the matmuls (params stay float32; logits are float32).
    impl: 'auto', 'flax' or 'cpu': the dense layers (module docstring).
    attention: 'xla' (scores materialised, softmax in float32; the only one with attention
      dropout), 'cudnn' (jax.nn.dot_product_attention's fused flash kernel, GPU, bf16/fp16), or
      'auto' (cudnn where it can run, else xla).
    remat: 'none', 'block' (each block's activations recomputed in the backward pass, only its
      input kept) or a jax.checkpoint_policies name (what the policy saves is kept).
    scan_layers: the blocks as one lax.scan over params stacked on a leading 'layers' axis
      (params['blocks'], its leaves [num_layers, ...]) instead of params['block_0'], ...: the
      same function, another param layout, a compile time that does not grow with depth.
  """
  vocab_size: int
  num_layers: int = 4
  num_heads: int = 4
  width: int = 128
  mlp_ratio: int = 4
  block_size: int = 64
  positions: str = "learned"
  dropout: float = 0.0
  tie_embeddings: bool = True
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  impl: str = "flax"
  remat: str = "none"
  attention: str = "xla"
  param_dtype: jnp.dtype = jnp.float32
  scan_layers: bool = False

  @nn.compact
  def __call__(self, inputs_BxL: jax.Array, *, train: bool, decode: bool = False) -> jax.Array:
    t = inputs_BxL.shape[1]
    if decode:  # the chunk continues where the cache ends
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      positions_T = index.value + jnp.arange(t)
      index.value = index.value + t
    else:
      positions_T = jnp.arange(t)
    # Vocab-parallel: the table's rows (and so the tied output layer's logits) split over 'model'.
    embed = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="embed", embedding_init=dense.named(
                         nn.initializers.normal(_INIT_STD), ("vocab", "embed")))
    x_BxTxD = embed(inputs_BxL)
    if self.positions == "learned":
      x_BxTxD = x_BxTxD + nn.Embed(
          self.block_size, self.width, param_dtype=self.param_dtype, name="pos_embed",
          embedding_init=dense.named(nn.initializers.normal(_INIT_STD), ("positions", "embed")))(
              positions_T).astype(self.dtype)
    x_BxTxD = self.perturb("embedded", x_BxTxD)  # a no-op hook for gradient tests
    x_BxTxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxTxD)
    block = Block if self.remat == "none" else nn.remat(  # self=0, so train=3 and decode=4
        Block, static_argnums=(3, 4), policy=remat_policy(self.remat),
        prevent_cse=not self.scan_layers)  # a scan body needs no CSE barrier (jax.checkpoint)
    make = functools.partial(block, self.num_heads, self.mlp_ratio, self.block_size,
                             self.positions, self.dropout, self.num_layers, self.use_bias,
                             self.dtype, dense.resolve_impl(self.impl),
                             resolve_attention(self.attention, self.dtype, self.dropout),
                             self.param_dtype)
    if self.scan_layers:
      # One block's program run num_layers times by lax.scan, over params (and decode caches)
      # stacked on a leading 'layers' axis: compiled once, and under remat the one form in
      # which XLA:CPU frees each block's activations (experiments/bench/README.md section 8).
      # The carry keeps its batch on 'data' (parallel.ACTIVATION_RULES says why).
      batch_on_data = lambda x: nn.with_logical_constraint(x, ("batch", None, None),
                                                           rules=parallel.ACTIVATION_RULES)

      def body(module: nn.Module, x_BxTxD: jax.Array, positions_T: jax.Array):
        return batch_on_data(module(batch_on_data(x_BxTxD), positions_T, train, decode)), None

      blocks = nn.scan(body, variable_axes={"params": 0, "cache": 0},
                       split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,),
                       length=self.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x_BxTxD, _ = blocks(make(name="blocks"), x_BxTxD, positions_T)
    else:
      for i in range(self.num_layers):
        x_BxTxD = make(name=f"block_{i}")(x_BxTxD, positions_T, train, decode)
    x_BxTxD = _layer_norm(self.use_bias, self.dtype, self.param_dtype, "ln_final")(x_BxTxD)
    if self.tie_embeddings:
      logits_BxTxV = embed.attend(x_BxTxD)
    else:
      logits_BxTxV = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype,
                              param_dtype=self.param_dtype, name="head",
                              kernel_init=dense.named(nn.initializers.normal(_INIT_STD),
                                                      ("embed", "vocab")))(x_BxTxD)
    return logits_BxTxV.astype(jnp.float32)


def remat_policy(remat: str) -> Callable | None:
  """What nn.remat keeps of a block for the backward pass: nothing but its input ('block'),
  or what the named jax.checkpoint_policies policy saves (e.g. 'dots_saveable': the matmuls'
  outputs, so only the elementwise ops are recomputed)."""
  if remat in REMATS:
    return None
  # The others in jax.checkpoint_policies are factories.
  require(remat in REMAT_POLICIES, "model.remat", remat,
          f"must be one of {', '.join(REMATS + REMAT_POLICIES)}")
  return getattr(jax.checkpoint_policies, remat)


def init_cache(model: TransformerLM, batch_size: int) -> dict:
  """An empty decode cache (zeros, index 0) for `batch_size` sequences, without running it."""
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((batch_size, 1), jnp.int32),
                         train=False, decode=True))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def check(m) -> None:
  """The Transformer LM's keys of config.model (model.dropout: models.check)."""
  for key in ("num_layers", "num_heads", "width", "mlp_ratio", "block_size"):
    require(m[key] > 0, f"model.{key}", m[key], "must be > 0")
  require(m.width % m.num_heads == 0, "model.width", m.width,
          f"must be divisible by model.num_heads={m.num_heads}")
  require(m.positions in POSITIONS, "model.positions", m.positions,
          f"must be one of {', '.join(POSITIONS)}")
  require(m.positions != "rope" or (m.width // m.num_heads) % 2 == 0, "model.positions",
          m.positions, "needs an even head width (model.width / model.num_heads) for rotary pairs")
  precision.check(m)
  require(m.impl in dense.IMPLS, "model.impl", m.impl, f"must be one of {', '.join(dense.IMPLS)}")
  remat_policy(m.remat)  # raises for an unknown name
  require(m.attention in ATTENTIONS, "model.attention", m.attention,
          f"must be one of {', '.join(ATTENTIONS)}")
  if m.attention == "cudnn":
    for ok, why in ((jax.default_backend() == "gpu",
                     f"needs a GPU (this job's backend is {jax.default_backend()})"),
                    (precision.compute_dtype(m.dtype) == jnp.bfloat16,
                     f"needs a bfloat16 compute dtype (model.dtype={m.dtype!r})"),
                    (m.dropout == 0, f"has no attention dropout; set model.dropout=0 (it is "
                                     f"{m.dropout})")):
      require(ok, "model.attention", m.attention, f"{why}; 'auto' picks it where it runs")


def check_model_axis(m, size: int) -> None:
  """The widths that a 'model' mesh axis of `size` devices splits (parallel.LOGICAL_RULES)."""
  for key, value in (("num_heads", m.num_heads), ("mlp_ratio * width", m.mlp_ratio * m.width)):
    if value % size:
      raise UserError(f"config.parallel.mesh_shape: a 'model' axis of {size} devices must divide "
                      f"model.{key}={value}")


def from_config(m, *, vocab_size: int) -> TransformerLM:
  """The decoder of config.model; the vocabulary size comes from the data."""
  return TransformerLM(vocab_size=vocab_size, num_layers=m.num_layers, num_heads=m.num_heads,
                       width=m.width, mlp_ratio=m.mlp_ratio, block_size=m.block_size,
                       positions=m.positions, dropout=m.dropout,
                       tie_embeddings=m.tie_embeddings, use_bias=m.use_bias,
                       dtype=precision.compute_dtype(m.dtype),
                       param_dtype=precision.DTYPES[m.param_dtype], impl=m.impl, remat=m.remat,
                       attention=m.attention, scan_layers=m.scan_layers)
