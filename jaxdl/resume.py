"""What a resumed run may change: the config guard between a workdir's config.json and today's.

A workdir with checkpoints resumes only under a config that means the same run: the harmless
keys may change (run length, verbosity, layout, float rounding), keys added to the configs since
the run was made take the value that does what it did (adopt_added_keys), and any other
difference is refused with one line listing the keys. Reads only; nothing here writes.

Each room declares its own keys (declared()): this file lists only the shared blocks' keys
(configs/common.py), and the run's task module, its model family's file (with precision.py's
keys, which every family shares) or a user's model module add theirs as RESUME_HARMLESS (a
tuple of dotted keys) and RESUME_ADDED ({dotted key: the value that reproduces older runs}).
"""

from __future__ import annotations

import json
import os
from types import ModuleType
from typing import Any, NamedTuple

from jaxdl import files, models
from jaxdl.checkpoint import has_checkpoints
from jaxdl.errors import UserError, first_line

# The shared blocks' keys that a resumed run may change: they decide how long and how verbosely
# the run goes on, not what the saved params, optimizer state and data position mean
# (steps_per_dispatch and train.grad_accum_steps change only float rounding, and the last the
# dropout draws). Any other difference from the workdir's config.json (seed, batch_size, opt.*,
# and every task or model key that its room does not declare harmless) is refused. Changing
# the run length also stretches the lr schedule.
HARMLESS = ("num_train_steps", "num_epochs", "min_train_steps", "log_every", "eval_every",
            "checkpoint_every", "keep_checkpoints", "eval_batch_size", "train.skip_nonfinite",
            "parallel.mode", "parallel.fsdp", "parallel.fsdp_min_size",
            "parallel.mesh_shape",  # Orbax reshards on restore
            "parallel.cpu_devices", "steps_per_dispatch", "train.grad_accum_steps",
            "profile_steps",  # a trace of a resumed run changes nothing it computes
            # Like the run length, patience decides only when the run ends: the checkpoints keep
            # the best value and step and the evals since it, and a new patience applies to them
            # from the next eval (a larger one lets an early-stopped run go on).
            # checkpoint.keep_best and best_mode are not here: the saved best was judged by
            # them, and another metric or direction would compare unlike values.
            "early_stopping.patience",
            # A resumed run's own checkpoint wins over init_from (initfrom.py), which is read
            # only by a fresh run's start.
            "init_from", "init_from_keys")

# The shared blocks' keys added after runs were made without them, each with the value that
# does what those runs did: a workdir whose config.json lacks one resumes with that value
# (adopt_added_keys; the run says so), so upgrading jaxdl neither strands a run nor changes what
# it computes. The same holds the other way for a key removed from a config: a config.json that
# has it with this value resumes.
ADDED = {"train.ema_decay": 0.0, "parallel.cpu_devices": 0, "train.ema_warmup": False,
         "train.grad_accum_steps": 1, "checkpoint.keep_best": "", "checkpoint.best_mode": "min",
         "early_stopping.patience": 0, "init_from": "", "init_from_keys": "",
         # Read by the wsd schedule only, which no run before them used: any value does what
         # those runs did, and the defaults make resuming say nothing. (opt.kwargs, an empty
         # dict, needs no entry: it is no difference from a config.json without it.)
         "opt.cooldown_fraction": 0.2, "opt.cooldown_shape": "linear"}


class Keys(NamedTuple):
  """The merged declarations of one run: what may change on resume, and what was added since."""
  harmless: tuple[str, ...]
  added: dict[str, Any]


def _declaration(module: ModuleType, name: str, kind: type) -> Any:
  """module.NAME (RESUME_HARMLESS or RESUME_ADDED) if it has one and it is well-formed."""
  value = getattr(module, name, kind())
  if not (isinstance(value, kind) and all(isinstance(k, str) and k for k in value)):
    shape = ("a tuple of dotted config keys" if kind is tuple
             else "a dict {dotted config key: the value older runs had}")
    raise UserError(f"{module.__name__} ({getattr(module, '__file__', '?')}): {name} must be "
                    f"{shape}, not {type(value).__name__} {value!r:.80}")
  return value


def declared(task: ModuleType, model_config) -> Keys:
  """The shared blocks' keys and those that the task module and config.model's rooms (a
  built-in family's file and precision.py, or a user's model module) declare: the harmless
  keys joined in that order, the added ones merged. Two rooms that give an added key different
  values contradict each other about what older runs did: a UserError naming both."""
  harmless, added, owner = list(HARMLESS), dict(ADDED), dict.fromkeys(ADDED, __name__)
  for module in (task, *models.rooms(model_config)):
    harmless += _declaration(module, "RESUME_HARMLESS", tuple)
    for key, value in _declaration(module, "RESUME_ADDED", dict).items():
      if key in added and added[key] != value:
        raise UserError(f"RESUME_ADDED[{key!r}]: {owner[key]} declares {added[key]!r}, "
                        f"{module.__name__} {value!r}; one value reproduces the older runs")
      added[key], owner[key] = value, module.__name__
  return Keys(tuple(dict.fromkeys(harmless)), added)  # each key once, in the order declared


def config_changes(old: dict, new: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
  """{dotted key: (old, new)} for every leaf that differs between two config dicts; a key that
  one side lacks (a section added to the config since) shows as None on that side."""
  out = {}
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    b = list(b) if isinstance(b, tuple) else b  # config.json holds tuples as JSON lists
    if isinstance(a, dict) or isinstance(b, dict):
      if isinstance(a or {}, dict) and isinstance(b or {}, dict):
        out.update(config_changes(a or {}, b or {}, f"{prefix}{key}."))
        continue
    if a != b:
      out[f"{prefix}{key}"] = (a, b)
  return out


def _saved_value(key: str, old: Any, added: dict[str, Any]) -> str:
  """How a refusal shows a key's value in config.json (an added key: what its absence meant)."""
  if old is None and key in added:
    return f"absent (so {added[key]!r}, from before the key existed)"
  return repr(old)


def saved_config(workdir: str) -> dict | None:
  """The config.json of a workdir that holds checkpoints to resume; None without either."""
  config_path = os.path.join(workdir, "config.json")
  if not has_checkpoints(workdir) or not files.exists(config_path):
    return None
  try:
    return json.loads(files.read_text(config_path))
  except (OSError, ValueError) as e:
    raise UserError(f"{config_path}: unreadable ({first_line(e)}); use a new --workdir") from None


def adopt_added_keys(config, saved: dict | None, keys: Keys) -> dict[str, tuple[Any, Any]]:
  """Sets each added key (keys.added) that the saved config lacks (and `config` has) to the
  value that does what the saved run did; {key: (value it had, value adopted)} for those it
  changed."""
  adopted = {}
  for key, value in keys.added.items() if saved is not None else ():
    *parents, name = key.split(".")
    old, new = saved, config
    for part in parents:
      old, new = (old or {}).get(part), new.get(part) if new is not None else None
    if new is None or name not in new or (old is not None and name in old):
      continue
    if new[name] != value:
      adopted[key] = (new[name], value)
      new[name] = value
  return adopted


def check_resume_config(workdir: str, saved: dict | None, resolved: dict,
                        keys: Keys) -> dict[str, tuple[Any, Any]]:
  """The harmless config changes (keys.harmless) since the run that wrote workdir's
  checkpoints, whose config.json is `saved` (saved_config(workdir), read once per start).

  Raises UserError listing the keys when any other key differs. Reads only; a workdir without
  checkpoints or without config.json (saved is None) has nothing to check.
  """
  if saved is None:
    return {}
  added = keys.added
  changes = {k: (old, new) for k, (old, new) in config_changes(saved, resolved).items()
             if not (k in added and (old, new) in ((None, added[k]), (added[k], None)))}
  refused = [key for key in changes if key not in keys.harmless]
  if refused:
    listed = "; ".join(f"{k}: {_saved_value(k, changes[k][0], added)} -> {changes[k][1]!r}"
                       for k in refused)
    raise UserError(f"--workdir={workdir} holds checkpoints of another experiment; these keys "
                    f"differ from its config.json: {listed}. Use a new --workdir or --restart (only "
                    f"{', '.join(keys.harmless)} may change on resume)")
  return changes
