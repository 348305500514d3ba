"""Models: `get_model(config)` is the one place a config name becomes a flax.linen Module."""

import flax.linen as nn

from jaxdl.errors import UserError
from jaxdl.models.cnn import CNN, IMPLS

MODEL_NAMES = ("cnn",)
INIT_SCHEMES = ("flax", "torch")


def get_model(config) -> nn.Module:
  """Returns the Module named by config.model.name (an explicit choice, not a registry)."""
  m = config.model
  if m.init not in INIT_SCHEMES:
    raise UserError(f"model.init={m.init!r} is not one of {', '.join(INIT_SCHEMES)}")
  if m.name == "cnn":
    if m.impl not in IMPLS:
      raise UserError(f"model.impl={m.impl!r} is not one of {', '.join(IMPLS)}")
    return CNN(num_classes=m.num_classes, init_scheme=m.init, dropout=m.dropout, impl=m.impl)
  raise UserError(f"model.name={m.name!r} is not one of {', '.join(MODEL_NAMES)}")
