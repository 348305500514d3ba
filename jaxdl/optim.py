"""optax transformation from config.opt: schedule, optimizer, clipping, weight decay.

opt.name is any optax optimizer, by its optax name ('lion', 'adafactor'; 'contrib.muon' for
optax.contrib.muon), or a user's factory by its import path, 'PACKAGE.MODULE:ATTR', called as
optax's own are: ATTR(learning_rate=SCHEDULE, **keywords) returning an
optax.GradientTransformation, so that `optax.lion` and a factory of yours are interchangeable.
Its keywords:
  - sgd, adam and adamw take the shared keys as they always did (sgd: momentum, nesterov;
    adam, adamw: b1, b2). Any other optimizer gets optax's own defaults: the shared keys were
    tuned for these three, and another optimizer's keyword of the same name often means another
    default (lion's b2 is 0.99, novograd's 0.25; nadam is adam with nesterov=True).
  - opt.kwargs, a dict, gives any other keyword: `--config.opt.kwargs="{'b2': 0.98}"` replaces
    the whole dict (the config is locked: --config.opt.kwargs.b2=... is an unknown key).
  - Weight decay (opt.weight_decay, masked by opt.decay_mask) goes to the optimizer's own
    `weight_decay` and mask keyword (`mask` or `weight_decay_mask`: adamw, lion, lamb, muon...).
    An optimizer whose weight_decay takes no mask gets it only with decay_mask='all'. One with
    no weight_decay at all gets coupled L2 (optax.add_decayed_weights before it, the decay added
    to the gradient), as torch.optim does: sgd always did. adam alone ignores it, as it always
    did (adamw is adam with decay), so that old adam runs train as they did.
check() builds the optimizer and traces one update on a tiny tree before the run, so a wrong
name, keyword or value is one line before anything is written.
"""

import inspect
import math

import jax
import jax.numpy as jnp
import optax
from optax import contrib as optax_contrib

from jaxdl.errors import UserError, first_line, import_user_module, require

SCHEDULES = ("constant", "cosine", "linear", "wsd", "rsqrt")
COOLDOWN_SHAPES = ("linear", "cosine", "1-sqrt")  # config.opt.cooldown_shape (wsd)
DECAY_MASKS = ("all", "matrices", "no_bias_norm")  # config.opt.decay_mask
NOT_DECAYED = ("bias", "scale")  # Flax's names of biases, norm scales and norm offsets ('bias')

# optax's optimizers that jaxdl's train step cannot drive, and why; the others are OPTIMIZERS.
UNSUPPORTED = {
    "lbfgs": "its update needs the loss and the loss function (value, grad, value_fn)",
    "contrib.momo": "its update needs the loss (value=)",
    "contrib.momo_adam": "its update needs the loss (value=)",
    "contrib.sophia": "its update needs the objective function (obj_fn=)",
    "contrib.dpsgd": "it needs per-example gradients",
    "rprop": "it takes no learning-rate schedule", "sm3": "it takes no learning-rate schedule",
    "optimistic_adam": "it takes no learning-rate schedule (optimistic_adam_v2 does)",
}


def _optimizers() -> dict:
  """{name: factory}: every public function of optax and optax.contrib whose first parameter is
  `learning_rate` (optax's optimizers), but the scale_by_* building blocks and UNSUPPORTED."""
  found = {}
  for prefix, module in (("", optax), ("contrib.", optax_contrib)):
    for name in dir(module):
      factory = getattr(module, name)
      if name.startswith(("_", "scale_by_")) or isinstance(factory, type) or not callable(factory):
        continue
      try:
        first = next(iter(inspect.signature(factory).parameters), None)
      except (TypeError, ValueError):  # a builtin without a signature
        continue
      if first == "learning_rate" and prefix + name not in UNSUPPORTED:
        found[prefix + name] = factory
  return dict(sorted(found.items()))


OPTIMIZERS = _optimizers()


def _where(opt_cfg) -> str:
  return f"config.opt.name={opt_cfg.name!r}"


def _factory(opt_cfg):
  """(the factory opt.name names, how messages call it); UserError naming the value otherwise."""
  name = opt_cfg.name
  if name in OPTIMIZERS:
    return OPTIMIZERS[name], f"optax.{name}"
  if name in UNSUPPORTED:
    raise UserError(f"{_where(opt_cfg)}: not supported by jaxdl's train step: {UNSUPPORTED[name]}")
  if ":" not in name:
    raise UserError(f"{_where(opt_cfg)}: not an optimizer of optax {optax.__version__} (one of "
                    f"{', '.join(OPTIMIZERS)}), nor PACKAGE.MODULE:ATTR for your own")
  module_name, _, attr = name.partition(":")
  if not module_name or not attr.isidentifier():
    raise UserError(f"{_where(opt_cfg)}: expected PACKAGE.MODULE:ATTR (e.g. my_optim:factory)")
  factory = getattr(import_user_module(module_name, _where(opt_cfg)), attr, None)
  if not callable(factory):
    raise UserError(f"{_where(opt_cfg)}: {module_name!r} has no function {attr!r}")
  return factory, attr


def _parameters(factory) -> tuple[tuple[str, ...], bool]:
  """(the factory's keyword names, whether it takes **kwargs too)."""
  try:
    params = inspect.signature(factory).parameters.values()
  except (TypeError, ValueError):  # a builtin without a signature: anything goes
    return (), True
  return (tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)),
          any(p.kind == p.VAR_KEYWORD for p in params))


def _shared(opt_cfg) -> dict:
  """The shared keys sgd, adam and adamw take, as jaxdl always passed them; {} for the others."""
  if opt_cfg.name == "sgd":
    return {"momentum": opt_cfg.momentum or None, "nesterov": opt_cfg.nesterov}
  if opt_cfg.name in ("adam", "adamw"):
    return {"b1": opt_cfg.b1, "b2": opt_cfg.b2}
  return {}


def _decay(opt_cfg, takes: tuple[str, ...]) -> tuple[str, str | None]:
  """How weight decay reaches the optimizer: ('own', its mask keyword), ('own', None) for a
  weight_decay without a mask, ('coupled', None) for L2 chained before it, ('none', None)."""
  mask_key = next((k for k in ("mask", "weight_decay_mask") if k in takes), None)
  if "weight_decay" in takes:
    require(mask_key or opt_cfg.decay_mask == "all" or not opt_cfg.weight_decay,
            "opt.decay_mask", opt_cfg.decay_mask, f"{opt_cfg.name}'s weight_decay takes no mask: "
            f"set opt.decay_mask='all' (or opt.weight_decay=0)")
    return "own", mask_key
  return ("none" if opt_cfg.name == "adam" else "coupled"), None


def _keywords(opt_cfg, factory, label: str) -> tuple[dict, str]:
  """(every keyword the factory gets but learning_rate, how weight decay is applied); one
  UserError naming opt.kwargs' keys that it does not take, with those it does."""
  takes, any_keyword = _parameters(factory)
  kwargs = opt_cfg.kwargs.to_dict() if hasattr(opt_cfg.kwargs, "to_dict") else dict(opt_cfg.kwargs)
  decay, mask_key = _decay(opt_cfg, takes)
  set_by = {"learning_rate": "opt.lr and opt.schedule", "mask": "opt.decay_mask",
            "weight_decay_mask": "opt.decay_mask", **{k: f"opt.{k}" for k in _shared(opt_cfg)}}
  if decay == "own":
    set_by["weight_decay"] = "opt.weight_decay"
  for key in kwargs:
    if key in set_by:
      raise UserError(f"config.opt.kwargs: {key!r} is set by config.{set_by[key]}, not here")
  unknown = [k for k in kwargs if k not in takes]
  if unknown and not any_keyword:
    valid = [k for k in takes if k not in set_by] or ["nothing"]
    raise UserError(f"config.opt.kwargs: {', '.join(unknown)}: not keywords of {label}, which "
                    f"takes {', '.join(valid)}")
  kwargs.update(_shared(opt_cfg))
  if decay == "own":
    kwargs["weight_decay"] = opt_cfg.weight_decay
    if mask_key:
      kwargs[mask_key] = decay_mask(opt_cfg)
  return kwargs, decay


def check(opt_cfg) -> None:
  """The names and values of config.opt; then the optimizer is built and one update traced
  (jax.eval_shape: no compiling, no arrays) on a tiny tree, so that a factory or keyword
  value it rejects is one line before any work."""
  for key, valid in (("schedule", SCHEDULES), ("decay_mask", DECAY_MASKS),
                     ("cooldown_shape", COOLDOWN_SHAPES)):
    require(opt_cfg[key] in valid, f"opt.{key}", opt_cfg[key], f"must be one of {', '.join(valid)}")
  for key in ("lr", "warmup_steps", "momentum", "weight_decay", "grad_clip_norm", "end_lr_factor"):
    require(math.isfinite(opt_cfg[key]) and opt_cfg[key] >= 0, f"opt.{key}", opt_cfg[key],
            "must be finite and >= 0")
  for key in ("b1", "b2"):
    require(0 <= opt_cfg[key] < 1, f"opt.{key}", opt_cfg[key], "must be in [0, 1)")
  require(not opt_cfg.nesterov or opt_cfg.momentum > 0, "opt.nesterov", opt_cfg.nesterov,
          "needs opt.momentum > 0")
  require(0 <= opt_cfg.cooldown_fraction <= 1, "opt.cooldown_fraction", opt_cfg.cooldown_fraction,
          "must be in [0, 1]")
  require(opt_cfg.schedule != "rsqrt" or opt_cfg.warmup_steps >= 1, "opt.warmup_steps",
          opt_cfg.warmup_steps, "must be >= 1 for opt.schedule='rsqrt' (its time scale)")
  factory, label = _factory(opt_cfg)
  _keywords(opt_cfg, factory, label)

  def one_update(params):
    tx = make(opt_cfg, 10)
    return tx.update(params, tx.init(params), params)[0]
  tiny = {"dense": {"kernel": jax.ShapeDtypeStruct((4, 3), jnp.float32),
                    "bias": jax.ShapeDtypeStruct((3,), jnp.float32)}}
  try:
    jax.eval_shape(one_update, tiny)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (optax's or the user's code)
    raise UserError(f"{_where(opt_cfg)}: {label}(learning_rate=<schedule>, ...) failed, built "
                    f"and given one update of a tiny tree, tx.update(grads, state, params) "
                    f"({type(e).__name__}: {first_line(e)})") from None


def _leaf_name(path) -> str | None:
  """A param's own name: the last dict key of its tree path ('bias' of ['dense']['bias'])."""
  keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
  return str(keys[-1]) if keys else None


def decay_mask(opt_cfg):
  """Which params weight decay touches: every one; or (nanoGPT's choice) only those with 2 or
  more dims (kernels, embeddings), sparing biases and LayerNorm scales/offsets; or those, and
  never a param named bias or scale whatever its dims (scanned layers stack LayerNorm scales
  into 2 dims, and an attention's DenseGeneral bias has 2)."""
  if opt_cfg.decay_mask == "all":
    return None
  if opt_cfg.decay_mask == "matrices":
    return lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  if opt_cfg.decay_mask == "no_bias_norm":
    return lambda params: jax.tree.map_with_path(
        lambda path, p: p.ndim >= 2 and _leaf_name(path) not in NOT_DECAYED, params)
  raise UserError(f"opt.decay_mask={opt_cfg.decay_mask!r} is not one of {', '.join(DECAY_MASKS)}")


def schedule(opt_cfg, num_train_steps: int) -> optax.Schedule:
  """Learning rate by step. constant: lr. The others warm up linearly from 0 over warmup_steps,
  then: cosine decays to lr * end_lr_factor at num_train_steps; linear likewise, in a straight
  line; wsd (warmup-stable-decay) holds lr until the last cooldown_fraction of the run, then
  decays to lr * end_lr_factor (cooldown_shape); rsqrt decays as lr * sqrt(warmup / step), the
  Transformer paper's, without an end."""
  lr, warmup = opt_cfg.lr, opt_cfg.warmup_steps
  end = lr * opt_cfg.end_lr_factor
  if opt_cfg.schedule == "constant":
    return optax.constant_schedule(opt_cfg.lr)
  if opt_cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt_cfg.lr, warmup_steps=opt_cfg.warmup_steps,
        decay_steps=max(num_train_steps, opt_cfg.warmup_steps + 1),
        end_value=opt_cfg.lr * opt_cfg.end_lr_factor)
  warm = optax.linear_schedule(0.0, lr, warmup)
  if opt_cfg.schedule == "linear":
    return optax.join_schedules(
        [warm, optax.linear_schedule(lr, end, max(num_train_steps - warmup, 1))], [warmup])
  if opt_cfg.schedule == "wsd":
    # At least one step of cooldown, which ends at num_train_steps: cooldown_fraction=0 keeps
    # lr for every update the run makes.
    cooldown = max(round(opt_cfg.cooldown_fraction * num_train_steps), 1)
    decay = {"linear": optax.linear_schedule(lr, end, cooldown),
             "cosine": optax.cosine_decay_schedule(lr, cooldown, alpha=opt_cfg.end_lr_factor),
             "1-sqrt": lambda t: lr - (lr - end) * jnp.sqrt(jnp.clip(t / cooldown, 0.0, 1.0)),
             }[opt_cfg.cooldown_shape]
    return optax.join_schedules([warm, optax.constant_schedule(lr), decay],
                                [warmup, max(num_train_steps - cooldown, warmup)])
  if opt_cfg.schedule == "rsqrt":  # check() asked for warmup_steps >= 1
    return optax.join_schedules(
        [warm, lambda t: lr * jax.lax.rsqrt(1.0 + jnp.maximum(t, 0) / warmup)], [warmup])
  raise UserError(f"opt.schedule={opt_cfg.schedule!r} is not one of {', '.join(SCHEDULES)}")


def applied_updates(opt_state) -> int | None:
  """How many updates the schedule has counted: the step of the next lr it gives. Updates that
  train.skip_nonfinite skipped kept the old optimizer state, so they are not counted and the
  schedule lags the train step by as many. None for a constant rate (no schedule state), or an
  optimizer that does not count with optax.scale_by_schedule (the train step is used then)."""
  counts = [s.count for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
            if isinstance(s, optax.ScaleByScheduleState)]
  return int(counts[0]) if counts else None


def make(opt_cfg, num_train_steps: int) -> optax.GradientTransformation:
  """The optimizer config.opt names, with its weight decay and optional global-norm clip."""
  factory, label = _factory(opt_cfg)
  kwargs, decay = _keywords(opt_cfg, factory, label)
  tx = factory(learning_rate=schedule(opt_cfg, num_train_steps), **kwargs)
  if not isinstance(tx, optax.GradientTransformation):
    raise UserError(f"{_where(opt_cfg)}: returned {type(tx).__name__} {tx!r:.60}, not an "
                    f"optax.GradientTransformation")
  if decay == "coupled" and opt_cfg.weight_decay:  # L2, as torch.optim.SGD(weight_decay=...)
    tx = optax.chain(optax.add_decayed_weights(opt_cfg.weight_decay, decay_mask(opt_cfg)), tx)
  if opt_cfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip_norm), tx)
  return tx
