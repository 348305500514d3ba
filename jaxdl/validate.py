"""Config checks that run after the command-line overrides and before any work or any write.

Types and unknown keys are already enforced by the locked ConfigDict and config_flags; this adds
the value rules. Each failure is a `UserError` whose one line names the key and the value.
Checks that need the devices or the data (batch divisibility, batch larger than the dataset)
run where those are known, still before the workdir is touched.
"""

from __future__ import annotations

import os

from jaxdl import models, optim
from jaxdl.errors import UserError

DATA_SOURCES = ("auto", "files", "tfds", "download", "sample", "synthetic")


def _require(ok: bool, key: str, value, rule: str) -> None:
  if not ok:
    raise UserError(f"config.{key}={value!r}: {rule}")


def _check_workdir(workdir: str) -> None:
  """The workdir is a writable directory, or can be created as one; nothing is created here."""
  if not workdir:
    raise UserError("--workdir is required")
  path = os.path.abspath(workdir)
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise UserError(f"--workdir={workdir}: exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
      raise UserError(f"--workdir={workdir}: directory is not writable")
    return
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"--workdir={workdir}: cannot be created ({parent} is not a writable directory)")


def validate(config, workdir: str) -> None:
  """Raises UserError for the first config value or workdir that cannot work."""
  for key in ("batch_size", "eval_batch_size", "log_every", "checkpoint_every",
              "keep_checkpoints"):
    _require(config[key] > 0, key, config[key], "must be > 0")
  if config.num_train_steps <= 0:
    _require(config.num_epochs > 0, "num_epochs", config.num_epochs,
             "must be > 0 (or set num_train_steps > 0)")
  _require(config.eval_every >= 0, "eval_every", config.eval_every,
           "must be >= 0 (0 evaluates once per epoch)")

  opt = config.opt
  _require(opt.lr >= 0, "opt.lr", opt.lr, "must be >= 0")
  _require(opt.name in optim.OPTIMIZERS, "opt.name", opt.name,
           f"must be one of {', '.join(optim.OPTIMIZERS)}")
  _require(opt.schedule in optim.SCHEDULES, "opt.schedule", opt.schedule,
           f"must be one of {', '.join(optim.SCHEDULES)}")
  for key in ("warmup_steps", "momentum", "weight_decay", "grad_clip_norm", "end_lr_factor"):
    _require(opt[key] >= 0, f"opt.{key}", opt[key], "must be >= 0")

  model = config.model
  _require(model.name in models.MODEL_NAMES, "model.name", model.name,
           f"must be one of {', '.join(models.MODEL_NAMES)}")
  _require(model.init in models.INIT_SCHEMES, "model.init", model.init,
           f"must be one of {', '.join(models.INIT_SCHEMES)}")
  _require(0 <= model.dropout < 1, "model.dropout", model.dropout, "must be in [0, 1)")
  _require(model.num_classes > 1, "model.num_classes", model.num_classes, "must be > 1")
  _require(0 <= config.loss.label_smoothing < 1, "loss.label_smoothing",
           config.loss.label_smoothing, "must be in [0, 1)")

  data = config.data
  _require(data.source in DATA_SOURCES, "data.source", data.source,
           f"must be one of {', '.join(DATA_SOURCES)}")
  _require(data.random_shift >= 0, "data.random_shift", data.random_shift, "must be >= 0")
  if data.path:
    _require(os.path.exists(data.path), "data.path", data.path, "does not exist")
    _require(os.path.isdir(data.path), "data.path", data.path, "is not a directory")
  _check_workdir(workdir)
