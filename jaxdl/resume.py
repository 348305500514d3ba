"""What a resumed run may change: the config guard between a workdir's config.json and today's.

A workdir with checkpoints resumes only under a config that means the same run: the keys in
HARMLESS_KEYS may change (run length, verbosity, layout, float rounding), keys added to the
configs since the run was made take the value that does what it did (ADDED_KEYS), and any other
difference is refused with one line listing the keys. Reads only; nothing here writes.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jaxdl import files
from jaxdl.checkpoint import has_checkpoints
from jaxdl.errors import UserError, first_line

# Config keys a resumed run may change: they decide how long and how verbosely the run goes on,
# not what the saved params, optimizer state and data position mean (steps_per_dispatch,
# model.impl, model.attention, model.remat, model.dtype (the compute dtype; the params keep
# model.param_dtype) and train.grad_accum_steps change only float rounding, and the last the
# dropout draws). Any other difference from
# the workdir's config.json (model.*, data.name/path/source, task, seed, batch_size, opt.*,
# loss.*, ...) is refused. Changing the run length also stretches the lr schedule.
HARMLESS_KEYS = ("num_train_steps", "num_epochs", "min_train_steps", "log_every", "eval_every",
                 "checkpoint_every", "keep_checkpoints", "eval_batch_size", "data.download_dir",
                 "train.skip_nonfinite", "parallel.mode", "parallel.fsdp",
                 "parallel.fsdp_min_size", "parallel.mesh_shape",  # Orbax reshards on restore
                 "parallel.cpu_devices",
                 "steps_per_dispatch", "model.impl", "train.grad_accum_steps", "model.remat",
                 "model.attention", "model.dtype",
                 "profile_steps",  # a trace of a resumed run changes nothing it computes
                 # Like the run length, patience decides only when the run ends: the checkpoints
                 # keep the best value and step and the evals since it, and a new patience
                 # applies to them from the next eval (a larger one lets an early-stopped run go
                 # on). checkpoint.keep_best and best_mode are not here: the saved best was
                 # judged by them, and another metric or direction would compare unlike values.
                 "early_stopping.patience")

# Keys added to the configs after runs were made without them, each with the value that does what
# those runs did: a workdir whose config.json lacks one resumes with that value (adopt_added_keys;
# the run says so), so upgrading jaxdl neither strands a run nor changes what it computes. The
# same holds the other way for a key removed from a config (loss.label_smoothing left the
# language model's, which never read it): a config.json that has it with this value resumes.
ADDED_KEYS = {"train.ema_decay": 0.0, "data.prefix_backoff": 0, "parallel.cpu_devices": 0,
              "data.image_size": 0, "loss.label_smoothing": 0.0, "data.validation_size": 0,
              "data.train_size": 0, "train.ema_warmup": False, "train.grad_accum_steps": 1,
              "model.remat": "none", "model.attention": "xla", "model.param_dtype": "float32",
              "model.dtype": "float32", "model.scan_layers": False, "data.num_classes": 0,
              "checkpoint.keep_best": "", "checkpoint.best_mode": "min",
              "early_stopping.patience": 0}


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


def _saved_value(key: str, old: Any) -> str:
  """How a refusal shows a key's value in config.json (ADDED_KEYS: what its absence meant)."""
  if old is None and key in ADDED_KEYS:
    return f"absent (so {ADDED_KEYS[key]!r}, from before the key existed)"
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


def adopt_added_keys(config, saved: dict | None) -> dict[str, tuple[Any, Any]]:
  """Sets each ADDED_KEYS key that the saved config lacks (and `config` has) to the value that
  does what the saved run did; {key: (value it had, value adopted)} for those it changed."""
  adopted = {}
  for key, value in ADDED_KEYS.items() if saved is not None else ():
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


def check_resume_config(workdir: str, saved: dict | None,
                        resolved: dict) -> dict[str, tuple[Any, Any]]:
  """The harmless config changes since the run that wrote workdir's checkpoints, whose
  config.json is `saved` (saved_config(workdir), read once per start).

  Raises UserError listing the keys when any other key differs. Reads only; a workdir without
  checkpoints or without config.json (saved is None) has nothing to check.
  """
  if saved is None:
    return {}
  changes = {k: (old, new) for k, (old, new) in config_changes(saved, resolved).items()
             if not (k in ADDED_KEYS and (old, new) in ((None, ADDED_KEYS[k]),
                                                         (ADDED_KEYS[k], None)))}
  refused = [key for key in changes if key not in HARMLESS_KEYS]
  if refused:
    listed = "; ".join(f"{k}: {_saved_value(k, changes[k][0])} -> {changes[k][1]!r}"
                       for k in refused)
    raise UserError(f"--workdir={workdir} holds checkpoints of another experiment; these keys "
                    f"differ from its config.json: {listed}. Use a new --workdir or --restart (only "
                    f"{', '.join(HARMLESS_KEYS)} may change on resume)")
  return changes
