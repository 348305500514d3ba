"""Models: `get_model(config, **model_info)` is the one place a config name becomes a Module.

`model_info` is what only the data knows (Dataset.model_info): a text classifier's vocabulary
size and number of classes, for example.
"""

import flax.linen as nn

from jaxdl.errors import UserError
from jaxdl.models.cnn import CNN
from jaxdl.models.text import TextClassifier

# config.model.name → the task it serves (validate.py checks that they agree).
MODEL_TASKS = {"cnn": "image_classification", "text_lstm": "text_classification",
               "text_cnn": "text_classification", "text_transformer": "text_classification"}
MODEL_NAMES = tuple(MODEL_TASKS)
INIT_SCHEMES = ("flax", "torch")


def get_model(config, **model_info) -> nn.Module:
  """Returns the Module named by config.model.name (an explicit choice, not a registry)."""
  m = config.model
  if m.name == "cnn":
    if m.init not in INIT_SCHEMES:
      raise UserError(f"model.init={m.init!r} is not one of {', '.join(INIT_SCHEMES)}")
    return CNN(num_classes=m.num_classes, init_scheme=m.init, dropout=m.dropout)
  if m.name in ("text_lstm", "text_cnn", "text_transformer"):
    return TextClassifier(
        encoder=m.name[len("text_"):], vocab_size=model_info["vocab_size"],
        num_classes=model_info["num_classes"], embed_dim=m.embed_dim, hidden_dim=m.hidden_dim,
        num_layers=m.num_layers, num_heads=m.num_heads, kernel_sizes=tuple(m.kernel_sizes),
        max_len=config.data.max_len, head_dim=m.head_dim, dropout=m.dropout,
        embed_dropout=m.embed_dropout, word_dropout=m.word_dropout)
  raise UserError(f"model.name={m.name!r} is not one of {', '.join(MODEL_NAMES)}")
