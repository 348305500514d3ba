"""Models: `get_model(config)` is the one place a config name becomes a flax.linen Module."""

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.errors import UserError
from jaxdl.models.cnn import CNN
from jaxdl.models.transformer import POSITIONS, TransformerLM

MODEL_NAMES = ("cnn", "transformer")
INIT_SCHEMES = ("flax", "torch")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config.model.dtype


def get_model(config, **model_info) -> nn.Module:
  """Returns the Module named by config.model.name (an explicit choice, not a registry).

  `model_info` holds what the data decides (Dataset.model_info), e.g. vocab_size=65.
  """
  m = config.model
  if m.name == "cnn":
    if m.init not in INIT_SCHEMES:
      raise UserError(f"model.init={m.init!r} is not one of {', '.join(INIT_SCHEMES)}")
    return CNN(num_classes=m.num_classes, init_scheme=m.init, dropout=m.dropout)
  if m.name == "transformer":
    if m.positions not in POSITIONS:
      raise UserError(f"model.positions={m.positions!r} is not one of {', '.join(POSITIONS)}")
    if m.dtype not in DTYPES:
      raise UserError(f"model.dtype={m.dtype!r} is not one of {', '.join(DTYPES)}")
    return TransformerLM(vocab_size=model_info["vocab_size"], num_layers=m.num_layers,
                         num_heads=m.num_heads, width=m.width, mlp_ratio=m.mlp_ratio,
                         block_size=m.block_size, positions=m.positions, dropout=m.dropout,
                         tie_embeddings=m.tie_embeddings, use_bias=m.use_bias,
                         dtype=DTYPES[m.dtype])
  raise UserError(f"model.name={m.name!r} is not one of {', '.join(MODEL_NAMES)}")
