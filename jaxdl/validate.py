"""Config checks that run after the command-line overrides and before any work or any write.

Types and unknown keys are already enforced by the locked ConfigDict and config_flags; this adds
the value rules. Each failure is a `UserError` whose one line names the key and the value.
Checks that need the devices or the data (batch divisibility, batch larger than the dataset)
run where those are known, still before the workdir is touched.
"""

from __future__ import annotations

import math
import os

from jaxdl import data as data_lib, models, optim, profiler
from jaxdl.data import images, lm, text
from jaxdl.errors import UserError


def _require(ok: bool, key: str, value, rule: str) -> None:
  if not ok:
    raise UserError(f"config.{key}={value!r}: {rule}")


def _check_workdir(workdir: str) -> None:
  """The workdir is a writable directory, or can be created as one; nothing is created here."""
  if not workdir:
    raise UserError("--workdir is required")
  if "://" in workdir:
    return  # gs://bucket/run: Orbax and etils.epath write there; access shows at the first write
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


def _check_text(config) -> None:
  """Value rules of the text-classification keys (configs/text_classifier.py)."""
  model, data = config.model, config.data
  for key in ("embed_dim", "hidden_dim", "num_layers", "num_heads"):
    _require(model[key] > 0, f"model.{key}", model[key], "must be > 0")
  _require(model.head_dim >= 0, "model.head_dim", model.head_dim, "must be >= 0 (0 = linear)")
  for key in ("embed_dropout", "word_dropout"):
    _require(0 <= model[key] < 1, f"model.{key}", model[key], "must be in [0, 1)")
  _require(len(model.kernel_sizes) > 0 and all(k > 0 for k in model.kernel_sizes),
           "model.kernel_sizes", model.kernel_sizes, "must be one or more widths > 0")
  if model.name == "text_transformer":
    _require(model.hidden_dim % model.num_heads == 0, "model.hidden_dim", model.hidden_dim,
             f"must be divisible by model.num_heads={model.num_heads}")
  _require(data.source in text.SOURCES, "data.source", data.source,
           f"must be one of {', '.join(text.SOURCES)}")
  _require(data.max_len > 0, "data.max_len", data.max_len, "must be > 0")
  _require(data.min_count >= 1, "data.min_count", data.min_count, "must be >= 1")
  _require(data.max_vocab == 0 or data.max_vocab >= 3, "data.max_vocab", data.max_vocab,
           "must be 0 (no cap) or >= 3 (<pad>, <oov> and a word)")
  _require(data.prefix_backoff >= 0, "data.prefix_backoff", data.prefix_backoff,
           "must be >= 0 (0 = off)")
  _require(data.bucket >= 0, "data.bucket", data.bucket, "must be >= 0 (0 = off)")
  _require(data.sort_pool >= 0, "data.sort_pool", data.sort_pool, "must be >= 0 (0 = off)")


def validate(config, workdir: str) -> None:
  """Raises UserError for the first config value or workdir that cannot work."""
  _require(config.task in data_lib.TASKS, "task", config.task,
           f"must be one of {', '.join(data_lib.TASKS)}")
  for key in ("batch_size", "eval_batch_size", "log_every", "checkpoint_every",
              "keep_checkpoints", "steps_per_dispatch"):
    _require(config[key] > 0, key, config[key], "must be > 0")
  if config.num_train_steps <= 0:
    _require(config.num_epochs > 0, "num_epochs", config.num_epochs,
             "must be > 0 (or set num_train_steps > 0)")
  _require(config.eval_every >= 0, "eval_every", config.eval_every,
           "must be >= 0 (0 evaluates once per epoch)")

  opt = config.opt
  for key in ("lr", "warmup_steps", "momentum", "weight_decay", "grad_clip_norm", "end_lr_factor"):
    _require(math.isfinite(opt[key]) and opt[key] >= 0, f"opt.{key}", opt[key],
             "must be finite and >= 0")
  for key in ("b1", "b2"):
    _require(0 <= opt[key] < 1, f"opt.{key}", opt[key], "must be in [0, 1)")
  _require(not opt.nesterov or opt.momentum > 0, "opt.nesterov", opt.nesterov,
           "needs opt.momentum > 0")
  optim.make(opt, 1)  # raises for an unknown opt.name or opt.schedule

  model = config.model
  _require(0 <= model.dropout < 1, "model.dropout", model.dropout, "must be in [0, 1)")
  _require(model.name in models.MODEL_NAMES, "model.name", model.name,
           f"must be one of {', '.join(models.MODEL_NAMES)}")
  _require(models.MODEL_TASKS[model.name] == config.task, "model.name", model.name,
           f"is a {models.MODEL_TASKS[model.name]} model, but task={config.task!r}")
  _require(0 <= config.loss.label_smoothing < 1, "loss.label_smoothing",
           config.loss.label_smoothing, "must be in [0, 1)")
  _require(0 <= config.train.ema_decay < 1, "train.ema_decay", config.train.ema_decay,
           "must be in [0, 1) (0 = off)")
  _require(config.seed >= 0, "seed", config.seed, "must be >= 0")
  profiler.parse(config.profile_steps)  # raises unless '' or 'START:STOP'

  par = config.parallel
  _require(par.mode in ("jit", "pmap"), "parallel.mode", par.mode, "must be one of jit, pmap")
  _require(not (par.fsdp and par.mode == "pmap"), "parallel.fsdp", par.fsdp,
           "needs parallel.mode='jit' (pmap keeps a full copy of the state on every device)")
  _require(par.fsdp_min_size >= 0, "parallel.fsdp_min_size", par.fsdp_min_size, "must be >= 0")
  _require(len(par.mesh_shape) == 1 and all(isinstance(n, int) and (n > 0 or n == -1)
                                            for n in par.mesh_shape),
           "parallel.mesh_shape", par.mesh_shape,
           "must be one device count (or -1) for the one mesh axis, 'data', e.g. (8,)")

  data = config.data
  if config.task == "image_classification":
    _require(model.num_classes > 1, "model.num_classes", model.num_classes, "must be > 1")
    models.get_model(config)  # raises for an unknown model.init or model.impl
    _require(data.source in images.SOURCES, "data.source", data.source,
             f"must be one of {', '.join(images.SOURCES)}")
    _require(data.random_shift >= 0, "data.random_shift", data.random_shift, "must be >= 0")
    _require(data.synthetic_size > 0, "data.synthetic_size", data.synthetic_size, "must be > 0")
  if config.task == "text_classification":
    _check_text(config)
  if config.task == "language_model":
    for key in ("num_layers", "num_heads", "width", "mlp_ratio", "block_size"):
      _require(model[key] > 0, f"model.{key}", model[key], "must be > 0")
    _require(model.width % model.num_heads == 0, "model.width", model.width,
             f"must be divisible by model.num_heads={model.num_heads}")
    _require(model.positions != "rope" or (model.width // model.num_heads) % 2 == 0,
             "model.positions", model.positions,
             "needs an even head width (model.width / model.num_heads) for rotary pairs")
    models.get_model(config, vocab_size=2)  # raises for an unknown positions or dtype
    _require(data.source in lm.SOURCES, "data.source", data.source,
             f"must be one of {', '.join(lm.SOURCES)}")
    _require(data.vocab in lm.VOCABS, "data.vocab", data.vocab,
             f"must be one of {', '.join(lm.VOCABS)}")
    _require(0 < data.val_fraction < 1, "data.val_fraction", data.val_fraction,
             "must be in (0, 1)")
    _require(data.eval_windows >= 0, "data.eval_windows", data.eval_windows,
             "must be >= 0 (0 evaluates every validation window)")
  for key in ("path", "tfds_dir"):
    if data.get(key):
      path = os.path.expanduser(data[key])
      _require(os.path.exists(path), f"data.{key}", data[key], "does not exist")
      if key == "tfds_dir" or config.task == "image_classification":  # text may be one file
        _require(os.path.isdir(path), f"data.{key}", data[key], "is not a directory")
  _check_workdir(workdir)
