"""Models: `get(config.model, **model_info)` is the one place a model name becomes a Module.

Each built-in family file provides `check(model_config)` (its own keys) and
`from_config(model_config, **model_info)`; `model_info` is what only the data knows
(Dataset.model_info: a vocabulary size, a number of classes). A user's model is named by its
import path, `model.name='PACKAGE.MODULE:ATTR'` (importable from the current directory or
PYTHONPATH), and built as `ATTR(model_config, **model_info)`:
  - flax.linen: ATTR returns a linen Module;
  - Flax NNX: ATTR takes `rngs` too (as NNX constructors do), e.g. an nnx.Module class with
    `__init__(self, config, num_classes, *, rngs)`. It is wrapped by flax.nnx.bridge.ToLinen,
    so its params live in the same TrainState and checkpoints as a linen model's, initialised
    from config.seed, and the train step stays one pure jitted function.
Either way `module(inputs, train=bool)` returns what the task expects (logits).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import flax.linen as nn
from flax import nnx

from jaxdl.errors import UserError, first_line, import_user_module, require
from jaxdl.models import cnn, text, transformer

FAMILIES = {"cnn": cnn, "text_lstm": text, "text_cnn": text, "text_transformer": text,
            "transformer": transformer}


def _user_builder(name: str) -> Callable[..., Any]:
  """The ATTR of 'PACKAGE.MODULE:ATTR', imported; UserError naming the value otherwise."""
  module_name, _, attr = name.partition(":")
  where = f"config.model.name={name!r}"
  if not module_name or not attr.isidentifier():
    raise UserError(f"{where}: expected PACKAGE.MODULE:ATTR (e.g. my_models:ResNet)")
  module = import_user_module(module_name, where)
  if not hasattr(module, attr):
    raise UserError(f"{where}: {module_name!r} ({module.__file__}) has no {attr!r}")
  build = getattr(module, attr)
  if not callable(build):
    raise UserError(f"{where}: {attr!r} is a {type(build).__name__}, not a callable that "
                    f"returns a Flax module")
  return build


def _takes_rngs(build: Callable[..., Any]) -> bool:
  """An NNX constructor: an nnx.Module class, or a function that takes `rngs`."""
  if isinstance(build, type):  # NNX's metaclass hides __init__'s signature from the class
    return issubclass(build, nnx.Module)
  try:
    return "rngs" in inspect.signature(build).parameters
  except (TypeError, ValueError):  # a builtin without a signature
    return False


def check(model_config, task_models: tuple[str, ...]) -> None:
  """model.name is one of the task's families (and that family's keys are valid), or an
  importable PACKAGE.MODULE:ATTR. Builds nothing."""
  name = model_config.name
  require(name in task_models or ":" in name, "model.name", name,
          f"must be one of {', '.join(task_models)} (this task's models), or "
          f"PACKAGE.MODULE:ATTR for your own")
  if name in task_models:
    # Every built-in family has model.dropout: its rule, once.
    require(0 <= model_config.dropout < 1, "model.dropout", model_config.dropout,
            "must be in [0, 1)")
    FAMILIES[name].check(model_config)
  else:
    _user_builder(name)


def check_model_axis(model_config, size: int) -> None:
  """A built-in family's widths that a 'model' mesh axis of `size` devices must divide (a
  family without tensor-parallel names is refused by steps.Runner instead)."""
  family = FAMILIES.get(model_config.name)
  if size > 1 and hasattr(family, "check_model_axis"):
    family.check_model_axis(model_config, size)


def get(model_config, **model_info) -> nn.Module:
  """The linen Module config.model names (an NNX model comes wrapped as one)."""
  name = model_config.name
  if name in FAMILIES:
    FAMILIES[name].check(model_config)  # also for callers that skipped validate (tools, tests)
    return FAMILIES[name].from_config(model_config, **model_info)
  build = _user_builder(name)
  where = f"config.model.name={name!r}"
  args = ", ".join(["model_config", *(f"{k}={v!r}" for k, v in model_info.items())])
  if _takes_rngs(build):  # NNX: built inside linen's init/apply, with rngs from the run's keys
    return nnx.bridge.ToLinen(functools.partial(build, model_config, **model_info))
  try:
    module = build(model_config, **model_info)
  except TypeError as e:
    raise UserError(f"{where}: cannot be called as {name.partition(':')[2]}({args}): "
                    f"{first_line(e)}") from None
  if isinstance(module, nnx.Module):
    raise UserError(f"{where}: returned an NNX module already built; give "
                    f"{name.partition(':')[2]} an `rngs` argument so that jaxdl builds it "
                    f"from config.seed (see jaxdl/models/__init__.py)")
  if not isinstance(module, nn.Module):
    raise UserError(f"{where}: returned a {type(module).__name__}, not a Flax module "
                    f"(flax.linen.Module, or an NNX class taking rngs)")
  return module
