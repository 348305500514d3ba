"""Models: `get_model(config, **model_info)` is the one place a config name becomes a Module.

`model_info` is what only the data knows (Dataset.model_info): a text classifier's vocabulary
size and number of classes, for example.
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.errors import UserError
from jaxdl.models import cnn, transformer
from jaxdl.models.cnn import CNN
from jaxdl.models.text import TextClassifier
from jaxdl.models.transformer import POSITIONS, TransformerLM

# config.model.name → the task it serves (validate.py checks that they agree).
MODEL_TASKS = {"cnn": "image_classification", "text_lstm": "text_classification",
               "text_cnn": "text_classification", "text_transformer": "text_classification",
               "transformer": "language_model"}
MODEL_NAMES = tuple(MODEL_TASKS)
INIT_SCHEMES = ("flax", "torch")
POOLS = ("max_mean", "attention")  # config.model.pool of text_lstm
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config.model.dtype


def get_model(config, **model_info) -> nn.Module:
  """Returns the Module named by config.model.name (an explicit choice, not a registry).

  `model_info` holds what the data decides (Dataset.model_info), e.g. vocab_size=65.
  """
  m = config.model
  if m.name == "cnn":
    if m.init not in INIT_SCHEMES:
      raise UserError(f"model.init={m.init!r} is not one of {', '.join(INIT_SCHEMES)}")
    if m.impl not in cnn.IMPLS:
      raise UserError(f"model.impl={m.impl!r} is not one of {', '.join(cnn.IMPLS)}")
    return CNN(num_classes=m.num_classes, init_scheme=m.init, dropout=m.dropout, impl=m.impl)
  if m.name in ("text_lstm", "text_cnn", "text_transformer"):
    if m.pool not in POOLS:
      raise UserError(f"model.pool={m.pool!r} is not one of {', '.join(POOLS)}")
    return TextClassifier(
        encoder=m.name[len("text_"):], vocab_size=model_info["vocab_size"],
        num_classes=model_info["num_classes"], embed_dim=m.embed_dim, hidden_dim=m.hidden_dim,
        num_layers=m.num_layers, num_heads=m.num_heads, kernel_sizes=tuple(m.kernel_sizes),
        max_len=config.data.max_len, head_dim=m.head_dim, pool=m.pool, dropout=m.dropout,
        embed_dropout=m.embed_dropout, word_dropout=m.word_dropout)
  if m.name == "transformer":
    if m.positions not in POSITIONS:
      raise UserError(f"model.positions={m.positions!r} is not one of {', '.join(POSITIONS)}")
    if m.dtype not in DTYPES:
      raise UserError(f"model.dtype={m.dtype!r} is not one of {', '.join(DTYPES)}")
    if m.impl not in transformer.IMPLS:
      raise UserError(f"model.impl={m.impl!r} is not one of {', '.join(transformer.IMPLS)}")
    return TransformerLM(vocab_size=model_info["vocab_size"], num_layers=m.num_layers,
                         num_heads=m.num_heads, width=m.width, mlp_ratio=m.mlp_ratio,
                         block_size=m.block_size, positions=m.positions, dropout=m.dropout,
                         tie_embeddings=m.tie_embeddings, use_bias=m.use_bias,
                         dtype=DTYPES[m.dtype], impl=m.impl)
  raise UserError(f"model.name={m.name!r} is not one of {', '.join(MODEL_NAMES)}")
