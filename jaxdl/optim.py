"""optax transformation from config.opt: schedule, optimizer, clipping, weight decay."""

import math

import jax
import optax

from jaxdl.errors import UserError, require

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")
DECAY_MASKS = ("all", "matrices")  # config.opt.decay_mask


def check(opt_cfg) -> None:
  """The names and values of config.opt; builds nothing."""
  for key, valid in (("name", OPTIMIZERS), ("schedule", SCHEDULES), ("decay_mask", DECAY_MASKS)):
    require(opt_cfg[key] in valid, f"opt.{key}", opt_cfg[key], f"must be one of {', '.join(valid)}")
  for key in ("lr", "warmup_steps", "momentum", "weight_decay", "grad_clip_norm", "end_lr_factor"):
    require(math.isfinite(opt_cfg[key]) and opt_cfg[key] >= 0, f"opt.{key}", opt_cfg[key],
            "must be finite and >= 0")
  for key in ("b1", "b2"):
    require(0 <= opt_cfg[key] < 1, f"opt.{key}", opt_cfg[key], "must be in [0, 1)")
  require(not opt_cfg.nesterov or opt_cfg.momentum > 0, "opt.nesterov", opt_cfg.nesterov,
          "needs opt.momentum > 0")


def decay_mask(opt_cfg):
  """Which params weight decay touches: every one, or (nanoGPT's choice) only those with 2 or
  more dims (kernels, embeddings), sparing biases and LayerNorm scales/offsets."""
  if opt_cfg.decay_mask == "all":
    return None
  if opt_cfg.decay_mask == "matrices":
    return lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  raise UserError(f"opt.decay_mask={opt_cfg.decay_mask!r} is not one of {', '.join(DECAY_MASKS)}")


def schedule(opt_cfg, num_train_steps: int) -> optax.Schedule:
  """Learning rate by step: constant, or linear warmup then cosine decay to lr * end_lr_factor."""
  if opt_cfg.schedule == "constant":
    return optax.constant_schedule(opt_cfg.lr)
  if opt_cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt_cfg.lr, warmup_steps=opt_cfg.warmup_steps,
        decay_steps=max(num_train_steps, opt_cfg.warmup_steps + 1),
        end_value=opt_cfg.lr * opt_cfg.end_lr_factor)
  raise UserError(f"opt.schedule={opt_cfg.schedule!r} is not one of {', '.join(SCHEDULES)}")


def applied_updates(opt_state) -> int | None:
  """How many updates the schedule has counted: the step of the next lr it gives. Updates that
  train.skip_nonfinite skipped kept the old optimizer state, so they are not counted and the
  schedule lags the train step by as many. None for a constant rate (no schedule state)."""
  counts = [s.count for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
            if isinstance(s, optax.ScaleByScheduleState)]
  return int(counts[0]) if counts else None


def make(opt_cfg, num_train_steps: int) -> optax.GradientTransformation:
  """The optimizer config.opt names, called by its optax name, with optional global-norm clip."""
  lr = schedule(opt_cfg, num_train_steps)
  mask = decay_mask(opt_cfg)
  if opt_cfg.name == "sgd":
    tx = optax.sgd(lr, momentum=opt_cfg.momentum or None, nesterov=opt_cfg.nesterov)
    if opt_cfg.weight_decay:  # coupled L2, as torch.optim.SGD(weight_decay=...) does
      tx = optax.chain(optax.add_decayed_weights(opt_cfg.weight_decay, mask), tx)
  elif opt_cfg.name == "adam":
    tx = optax.adam(lr, b1=opt_cfg.b1, b2=opt_cfg.b2)
  elif opt_cfg.name == "adamw":
    tx = optax.adamw(lr, b1=opt_cfg.b1, b2=opt_cfg.b2, weight_decay=opt_cfg.weight_decay,
                     mask=mask)
  else:
    raise UserError(f"opt.name={opt_cfg.name!r} is not one of {', '.join(OPTIMIZERS)}")
  if opt_cfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip_norm), tx)
  return tx
