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

A user's builder that takes `dtype` and/or `param_dtype` keywords gets the precision policy
(models/precision.py: model.dtype resolved, 'auto' included, and model.param_dtype); one that
does not computes as it chooses, and the run names model.dtype among the keys it did not read.
Keys of the model block that a user's model never reads (a shipped family's keys left in a
shipped config whose model.name was overridden) get one warning line (`unread_keys`).

The model contract, one function for every objective and tool (`apply`): variables in,
(outputs, new model state) out. `variables` is {'params': ..., **model state}, the state being
every other collection the model's init made (linen 'batch_stats', NNX BatchStat through the
bridge): in training it is updated and returned, in evaluation it is read and returned as it is.

Which model keys may change on resume is declared where they are read, as a task module
declares its own (jaxdl/tasks/__init__.py): a family file, precision.py (model.dtype and
model.param_dtype, merged for every built-in family) and a user's PACKAGE.MODULE may define
  RESUME_HARMLESS  a tuple of dotted keys that change only rounding, speed or memory
                   (('model.impl',)): they may change when a run resumes;
  RESUME_ADDED     {dotted key: value} of keys added after workdirs were made without them,
                   each with the value that reproduces those runs ({'model.remat': 'none'}).
rooms(model_config) names the modules that resume.declared reads.
"""

from __future__ import annotations

import copy
import functools
import inspect
from types import ModuleType
from typing import Any, Callable

import flax.linen as nn
from flax import nnx

from jaxdl.errors import UserError, first_line, import_user_module, require
from jaxdl.models import cnn, precision, text, transformer

FAMILIES = {"cnn": cnn, "text_lstm": text, "text_cnn": text, "text_transformer": text,
            "transformer": transformer}


# Collections of a model's variables that are not its state: 'params' are what the optimizer
# trains; 'intermediates' (sow), 'perturbations' (linen's perturb: zeros to take gradients of
# activations by) and 'cache' (the decoding cache) are made per call, not carried.
NOT_STATE = ("params", "intermediates", "perturbations", "cache")


def split_variables(variables) -> tuple[Any, dict[str, Any] | None]:
  """(params, model state or None) of a model's init variables: the state is every collection
  but NOT_STATE's ({'batch_stats': ...}); None when there is none, as in a stateless model's
  train state and checkpoints."""
  state = {k: v for k, v in variables.items() if k not in NOT_STATE}
  return variables["params"], state or None


def apply(model: nn.Module, variables, inputs, *, train: bool, rng=None, **kwargs):
  """(outputs, new model state) of `model` on `inputs`: the one way jaxdl and its tasks call a
  model. `variables` is {'params': ..., **state}; with train=True the state's collections are
  updated (BatchNorm's running averages) and returned, else returned as they came. `rng` is the
  'dropout' stream (NNX's nnx.Dropout draws from it too); kwargs go to the model's call."""
  state = {k: v for k, v in variables.items() if k != "params"}
  rngs = None if rng is None else {"dropout": rng}
  if train and state:
    outputs, new_state = model.apply(variables, inputs, train=True, rngs=rngs,
                                     mutable=list(state), **kwargs)
    return outputs, dict(new_state)
  return model.apply(variables, inputs, train=train, rngs=rngs, **kwargs), state


class _Reads:
  """A read-only view of a ConfigDict that records which of its keys were read (the user's
  builder and its module read the model block through it), for `unread_keys`. Whatever reads
  the block whole (iteration, keys/items/values, to_dict, a copy, a pickle) counts every key
  as read: what the model does with them is then unknown, so nothing is warned about."""

  def __init__(self, config, reads: set[str]):
    object.__setattr__(self, "_config", config)
    object.__setattr__(self, "_reads", reads)

  def __getattr__(self, key):
    if key.startswith("__") or key in ("_config", "_reads"):  # copy/pickle probe these first
      raise AttributeError(key)
    if key in ("keys", "items", "values", "to_dict", "to_json", "copy_and_resolve_references",
               "unlock", "lock", "iteritems", "iterkeys", "itervalues"):
      self._reads.update(self._config.keys())
    else:
      self._reads.add(key)
    return getattr(self._config, key)

  def __getitem__(self, key):
    self._reads.add(key)
    return self._config[key]

  def get(self, key, default=None):
    self._reads.add(key)
    return self._config.get(key, default)

  def __contains__(self, key):
    return key in self._config

  def __len__(self):
    return len(self._config)

  def __iter__(self):
    self._reads.update(self._config.keys())
    return iter(self._config)

  def _whole(self):
    self._reads.update(self._config.keys())
    return self._config

  def __copy__(self):  # a copy is the plain config, read whole
    return self._whole()

  def __deepcopy__(self, memo):
    return copy.deepcopy(self._whole(), memo)

  def __reduce__(self):
    return (copy.copy, (self._whole(),))

  def __setattr__(self, key, value):
    raise UserError(f"config.model.{key}: a model builder may not set keys of the config "
                    f"(set them in the config file, or with --config.model.{key}=...)")

  def __repr__(self):
    return repr(self._config)

  def __hash__(self):  # a linen module holding it stays hashable (jit's static arguments)
    return id(self)

  def __eq__(self, other):
    return self is other


def unread_keys(model_config, reads: set[str], task_keys: tuple[str, ...] = ()) -> list[str]:
  """The keys of a user's model block that neither its model (`reads`, from get's `reads`) nor
  the task (`task_keys`, its MODEL_KEYS) read: they do nothing in this run. [] for a built-in
  family, which checks its own keys."""
  if model_config.name in FAMILIES:
    return []
  return sorted(set(model_config.keys()) - reads - set(task_keys) - {"name"})


def _user_module(name: str) -> ModuleType:
  """The PACKAGE.MODULE of 'PACKAGE.MODULE:ATTR', imported; UserError naming the value
  otherwise."""
  module_name, _, attr = name.partition(":")
  where = f"config.model.name={name!r}"
  if not module_name or not attr.isidentifier():
    raise UserError(f"{where}: expected PACKAGE.MODULE:ATTR (e.g. my_models:ResNet)")
  return import_user_module(module_name, where)


def _user_builder(name: str) -> Callable[..., Any]:
  """The ATTR of 'PACKAGE.MODULE:ATTR', imported; UserError naming the value otherwise."""
  module_name, _, attr = name.partition(":")
  where = f"config.model.name={name!r}"
  module = _user_module(name)
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


def rooms(model_config) -> tuple[ModuleType, ...]:
  """The modules that own config.model's keys, whose resume declarations (RESUME_HARMLESS,
  RESUME_ADDED) resume.declared merges: precision.py (the dtype keys every built-in family
  shares) and the family's file, or the user's PACKAGE.MODULE (which may take precision.py's
  declarations into its own if it reads those keys)."""
  name = model_config.name
  if name in FAMILIES:
    return (precision, FAMILIES[name])
  return (_user_module(name),) if ":" in name else ()  # another name: check() refuses it


def check(model_config, task_models: tuple[str, ...], model_axis: int = 1) -> None:
  """The one check of config.model: model.name is one of the task's families (whose keys are
  then valid, and whose widths a 'model' mesh axis of `model_axis` devices divides), or an
  importable PACKAGE.MODULE:ATTR. Builds nothing."""
  name = model_config.name
  require(name in task_models or ":" in name, "model.name", name,
          f"must be one of {', '.join(task_models)} (this task's models), or "
          f"PACKAGE.MODULE:ATTR for your own")
  if name in task_models:
    # Every built-in family has model.dropout: its rule, once.
    require(0 <= model_config.dropout < 1, "model.dropout", model_config.dropout,
            "must be in [0, 1)")
    family = FAMILIES[name]
    family.check(model_config)
    if model_axis > 1 and not hasattr(family, "check_model_axis"):
      raise UserError(f"config.parallel.mesh_shape: a 'model' axis of {model_axis} devices "
                      f"needs a model whose params carry logical axis names (the "
                      f"transformer's: heads, mlp, vocab); model.name={name!r} has none")
    if model_axis > 1:
      family.check_model_axis(model_config, model_axis)
  else:
    _user_builder(name)
    precision.check(model_config)  # what a builder taking dtype / param_dtype would get


def _precision(build: Callable[..., Any], model_config, reads: set[str]) -> dict[str, Any]:
  """The precision keywords a user's builder takes (`dtype`, `param_dtype`), from the policy
  (the model block's dtype / param_dtype keys, where it has them)."""
  try:
    takes = inspect.signature(build).parameters
  except (TypeError, ValueError):  # a builtin without a signature
    return {}
  policy = {}
  if "dtype" in takes and "dtype" in model_config:
    policy["dtype"] = precision.compute_dtype(model_config.dtype)
    reads.add("dtype")
  if "param_dtype" in takes and "param_dtype" in model_config:
    policy["param_dtype"] = precision.DTYPES[model_config.param_dtype]
    reads.add("param_dtype")
  return policy


def get(model_config, reads: set[str] | None = None, **model_info) -> nn.Module:
  """The linen Module config.model names (an NNX model comes wrapped as one); its keys were
  checked by check() (validate.py) when the run began. With a set `reads`, a user's model sees
  its block through a view that adds each key it reads (at build, init or call) to it."""
  name = model_config.name
  if name in FAMILIES:
    return FAMILIES[name].from_config(model_config, **model_info)
  build = _user_builder(name)
  where = f"config.model.name={name!r}"
  if isinstance(build, type) and issubclass(build, nnx.Module):
    signature_of = build.__init__  # NNX's metaclass hides __init__'s signature from the class
  else:
    signature_of = build
  model_info = {**model_info, **_precision(signature_of, model_config, set() if reads is None
                                           else reads)}
  if reads is not None:
    model_config = _Reads(model_config, reads)
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
