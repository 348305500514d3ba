"""Sentence encoders for text classification: int32 tokens[B,L] (0 = padding) → logits[B,C].

Three encoders share one embedding front end and one classifier head; only the middle differs:
  lstm         bidirectional LSTM (as in Flax's SST-2 example), then masked max+mean pooling
               or (pool='attention') a learned softmax-weighted average of its outputs
  cnn          1-D convolutions of several widths (Kim 2014), masked max pooling
  transformer  pre-LayerNorm Transformer encoder with learned positions, masked mean pooling

Padding is right padding with id 0. Every encoder masks it: padded positions are zeroed before
any convolution, never attended to, never update an LSTM carry and never enter a pool, so a
sentence gets the same logits however much padding follows it (tests/test_text_models.py).
All randomness (word and embedding dropout, hidden dropout) uses the 'dropout' rng, which
steps.py derives from the step number.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.errors import require
from jaxdl.models import precision

PAD_ID = 0  # token id of padding (the vocabulary reserves it)
OOV_ID = 1  # token id of out-of-vocabulary words; word dropout replaces tokens with it


def _policy(module: nn.Module) -> dict:
  """The module's precision policy as layer kwargs (models/precision.py)."""
  return {"dtype": module.dtype, "param_dtype": module.param_dtype}


class _Embed(nn.Module):
  """Token embedding with word dropout (token → OOV) and embedding dropout; zero at padding."""
  vocab_size: int
  embed_dim: int
  word_dropout: float
  embed_dropout: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens_BxL: jax.Array, mask_BxL: jax.Array, train: bool) -> jax.Array:
    if train and self.word_dropout > 0:
      drop_BxL = jax.random.bernoulli(self.make_rng("dropout"), self.word_dropout,
                                      tokens_BxL.shape)
      tokens_BxL = jnp.where(drop_BxL & mask_BxL, OOV_ID, tokens_BxL)
    x_BxLxD = nn.Embed(self.vocab_size, self.embed_dim, **_policy(self),
                       embedding_init=nn.initializers.normal(stddev=0.1))(tokens_BxL)
    x_BxLxD = nn.Dropout(self.embed_dropout, deterministic=not train)(x_BxLxD)
    return x_BxLxD * mask_BxL[..., None]


def _masked_max(x_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
  x_BxLxD = jnp.where(mask_BxL[..., None], x_BxLxD, -jnp.inf)
  return jnp.where(mask_BxL.any(-1, keepdims=True), x_BxLxD.max(1), 0.0)  # empty row → 0


def _masked_mean(x_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
  m_BxLx1 = mask_BxL[..., None].astype(x_BxLxD.dtype)
  return (x_BxLxD * m_BxLx1).sum(1) / jnp.maximum(m_BxLx1.sum(1), 1.0)


class _AttentionPool(nn.Module):
  """Softmax-weighted average over real positions, the weights scored from each vector alone
  (a query-free additive attention, as Flax's SST-2 example pools its LSTM)."""
  hidden_dim: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
    scores_BxL = nn.Dense(1, use_bias=False, **_policy(self))(
        nn.tanh(nn.Dense(self.hidden_dim, use_bias=False, **_policy(self))(x_BxLxD)))[..., 0]
    scores_BxL = jnp.where(mask_BxL, scores_BxL.astype(jnp.float32), -jnp.inf)  # softmax: f32
    # An empty row (all padding) would be 0/0: its weights become 0 and its pool 0.
    weights_BxL = jnp.where(mask_BxL.any(-1, keepdims=True), nn.softmax(scores_BxL, -1), 0.0)
    return jnp.einsum("bl,bld->bd", weights_BxL.astype(x_BxLxD.dtype), x_BxLxD)


class _Head(nn.Module):
  """Dropout → Dense(hidden) → ReLU → dropout → Dense(num_classes)."""
  hidden_dim: int
  num_classes: int
  dropout: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h_BxF: jax.Array, train: bool) -> jax.Array:
    h_BxF = nn.Dropout(self.dropout, deterministic=not train)(h_BxF)
    if self.hidden_dim:
      h_BxF = nn.relu(nn.Dense(self.hidden_dim, **_policy(self))(h_BxF))
      h_BxF = nn.Dropout(self.dropout, deterministic=not train)(h_BxF)
    return nn.Dense(self.num_classes, **_policy(self))(h_BxF).astype(jnp.float32)


class TextClassifier(nn.Module):
  """tokens int32[B,L] → logits float32[B,num_classes]; encoder 'lstm', 'cnn' or 'transformer'.

  Attributes:
    encoder: which middle to use (see the module docstring).
    vocab_size: rows of the embedding table, padding and OOV included.
    num_classes: output width.
    embed_dim: embedding width.
    hidden_dim: LSTM units per direction, CNN filters per width, or Transformer width.
    num_layers: Transformer blocks (the LSTM and CNN have one layer).
    num_heads: Transformer attention heads.
    kernel_sizes: CNN filter widths.
    max_len: longest input (the Transformer's position table size).
    head_dim: width of the classifier's hidden layer; 0 = a linear classifier.
    pool: how the LSTM's outputs become one vector: 'max_mean' or 'attention'.
    dropout: rate on pooled features and in the head (and inside Transformer blocks).
    embed_dropout: rate on embedding units.
    word_dropout: probability a real token is replaced by OOV during training.
    dtype, param_dtype: compute and storage dtypes (models/precision.py); logits are float32.
  """
  encoder: str
  vocab_size: int
  num_classes: int
  embed_dim: int = 128
  hidden_dim: int = 128
  num_layers: int = 2
  num_heads: int = 4
  kernel_sizes: tuple[int, ...] = (3, 4, 5)
  max_len: int = 64
  head_dim: int = 0
  pool: str = "max_mean"
  dropout: float = 0.0
  embed_dropout: float = 0.0
  word_dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens_BxL: jax.Array, *, train: bool) -> jax.Array:
    mask_BxL = tokens_BxL != PAD_ID
    x_BxLxD = _Embed(self.vocab_size, self.embed_dim, self.word_dropout,
                     self.embed_dropout, **_policy(self))(tokens_BxL, mask_BxL, train)
    if self.encoder == "lstm":
      h_BxF = self._lstm(x_BxLxD, mask_BxL, train)
    elif self.encoder == "cnn":
      h_BxF = self._cnn(x_BxLxD, mask_BxL)
    elif self.encoder == "transformer":
      h_BxF = self._transformer(x_BxLxD, mask_BxL, train)
    else:
      raise ValueError(f"unknown encoder {self.encoder!r}")  # text.check checks names
    return _Head(self.head_dim, self.num_classes, self.dropout, **_policy(self))(h_BxF, train)

  def _lstm(self, x_BxLxD, mask_BxL, train):
    # seq_lengths makes each direction skip padding: the forward carry stops at the last real
    # token and the backward pass starts there (flax flips each row within its own length).
    lengths_B = mask_BxL.sum(-1).astype(jnp.int32)
    bilstm = nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(self.hidden_dim, **_policy(self))),
                              nn.RNN(nn.OptimizedLSTMCell(self.hidden_dim, **_policy(self))))
    h_BxLx2H = bilstm(x_BxLxD, seq_lengths=lengths_B)
    if self.pool == "attention":  # dropout on the outputs the weights are scored from
      h_BxLx2H = nn.Dropout(self.dropout, deterministic=not train)(h_BxLx2H)
      return _AttentionPool(2 * self.hidden_dim, **_policy(self))(h_BxLx2H, mask_BxL)
    if self.pool == "max_mean":
      return jnp.concatenate([_masked_max(h_BxLx2H, mask_BxL),
                              _masked_mean(h_BxLx2H, mask_BxL)], -1)
    raise ValueError(f"unknown pool {self.pool!r}")  # text.check checks names

  def _cnn(self, x_BxLxD, mask_BxL):
    # 'SAME' convolutions over zeroed padding equal convolutions over the unpadded sentence
    # (which SAME pads with zeros too), so real positions never see how much padding follows.
    pooled = []
    for width in self.kernel_sizes:
      h_BxLxH = nn.relu(nn.Conv(self.hidden_dim, (width,), padding="SAME", **_policy(self))(
          x_BxLxD))
      pooled.append(_masked_max(h_BxLxH, mask_BxL))
    return jnp.concatenate(pooled, -1)

  def _transformer(self, x_BxLxD, mask_BxL, train):
    length = x_BxLxD.shape[1]
    p = _policy(self)
    x_BxLxH = nn.Dense(self.hidden_dim, **p)(x_BxLxD)
    pos_LxH = self.param("pos_embed", nn.initializers.normal(0.02), (self.max_len, self.hidden_dim),
                         self.param_dtype)
    x_BxLxH = x_BxLxH + pos_LxH[:length].astype(self.dtype)
    attn_mask_Bx1xLxL = nn.make_attention_mask(mask_BxL, mask_BxL)  # pad keys never attended
    for _ in range(self.num_layers):
      h = nn.LayerNorm(**p)(x_BxLxH)
      h = nn.MultiHeadDotProductAttention(self.num_heads, dropout_rate=self.dropout,
                                          deterministic=not train, **p)(h, h,
                                                                        mask=attn_mask_Bx1xLxL)
      x_BxLxH = x_BxLxH + nn.Dropout(self.dropout, deterministic=not train)(h)
      h = nn.Dense(4 * self.hidden_dim, **p)(nn.LayerNorm(**p)(x_BxLxH))
      h = nn.Dense(self.hidden_dim, **p)(nn.gelu(h))
      x_BxLxH = x_BxLxH + nn.Dropout(self.dropout, deterministic=not train)(h)
    return _masked_mean(nn.LayerNorm(**p)(x_BxLxH), mask_BxL)


ENCODERS = ("lstm", "cnn", "transformer")
POOLS = ("max_mean", "attention")  # config.model.pool of text_lstm


def check(m) -> None:
  """The sentence encoders' keys of config.model (model.dropout: models.check)."""
  for key in ("embed_dim", "hidden_dim", "num_layers", "num_heads"):
    require(m[key] > 0, f"model.{key}", m[key], "must be > 0")
  require(m.head_dim >= 0, "model.head_dim", m.head_dim, "must be >= 0 (0 = linear)")
  for key in ("embed_dropout", "word_dropout"):
    require(0 <= m[key] < 1, f"model.{key}", m[key], "must be in [0, 1)")
  require(len(m.kernel_sizes) > 0 and all(k > 0 for k in m.kernel_sizes), "model.kernel_sizes",
          m.kernel_sizes, "must be one or more widths > 0")
  require(m.name != "text_transformer" or m.hidden_dim % m.num_heads == 0, "model.hidden_dim",
          m.hidden_dim, f"must be divisible by model.num_heads={m.num_heads}")
  require(m.pool in POOLS, "model.pool", m.pool, f"must be one of {', '.join(POOLS)}")
  precision.check(m)


def from_config(m, *, vocab_size: int, num_classes: int, max_len: int) -> TextClassifier:
  """model.name 'text_lstm' | 'text_cnn' | 'text_transformer' of config.model."""
  return TextClassifier(
      encoder=m.name[len("text_"):], vocab_size=vocab_size, num_classes=num_classes,
      embed_dim=m.embed_dim, hidden_dim=m.hidden_dim, num_layers=m.num_layers,
      num_heads=m.num_heads, kernel_sizes=tuple(m.kernel_sizes), max_len=max_len,
      head_dim=m.head_dim, pool=m.pool, dropout=m.dropout, embed_dropout=m.embed_dropout,
      word_dropout=m.word_dropout, dtype=precision.compute_dtype(m.dtype),
      param_dtype=precision.DTYPES[m.param_dtype])
