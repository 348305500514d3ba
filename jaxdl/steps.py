"""The train state, the objectives, and the two pure steps: (state, batch) → (state, metrics).

An objective is `(params, batch, rng, train) -> (loss, aux sums)`: the forward pass and the loss
of one task. `make_objective` picks it from config.task (an explicit choice); train.py binds it
and the optimizer with functools.partial and compiles the steps with jax.jit, donating the state.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdl import losses
from jaxdl.data.augment import random_shift
from jaxdl.errors import UserError

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]

# The model input each task feeds the model (the rest of the batch is labels and mask).
INPUT_KEYS = {"image_classification": "image", "text_classification": "tokens",
              "language_model": "inputs"}


@flax.struct.dataclass
class TrainState:
  """Everything a step changes, as one pytree: what a checkpoint saves and a resume restores."""
  step: jax.Array       # int32[]: the number of updates applied so far
  params: Any
  opt_state: Any
  rng: jax.Array        # uint32[2]: the run's base key; step t uses fold_in(rng, t)
  # train.ema_decay > 0: the exponential moving average of params (what eval, the final metrics
  # and prediction use); None when off, so the state and its checkpoints are as before.
  ema_params: Any = None


def create_state(model: nn.Module, tx: optax.GradientTransformation, sample_inputs: jax.Array,
                 seed: int, ema: bool = False) -> TrainState:
  """Initialises params from `seed`; the sample inputs only fix shapes. With `ema` the
  average starts at the initial params."""
  # A raw uint32 key (not a typed key array) so Orbax stores it as an ordinary array.
  init_rng, base_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init({"params": init_rng}, sample_inputs, train=False)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=base_rng, ema_params=jax.tree.map(jnp.copy, params) if ema else None)


def eval_params(state: TrainState) -> Any:
  """The params to evaluate and predict with: the moving average when the run keeps one."""
  return state.params if state.ema_params is None else state.ema_params


def classify_images(params, batch, rng, train, *, model: nn.Module, label_smoothing: float,
                    max_shift: int):
  """Softmax cross-entropy of an image classifier; training images are randomly shifted."""
  images = batch["image"]
  if train:
    shift_rng, rng = jax.random.split(rng)
    images = random_shift(images, shift_rng, max_shift)
  logits_BxC = model.apply({"params": params}, images, train=train, rngs={"dropout": rng})
  return losses.softmax_cross_entropy(logits_BxC, batch["label"], batch["mask"],
                                      label_smoothing if train else 0.0)


def classify_text(params, batch, rng, train, *, model: nn.Module, label_smoothing: float):
  """Softmax cross-entropy of a sentence classifier, plus the confusion matrix."""
  logits_BxC = model.apply({"params": params}, batch["tokens"], train=train,
                           rngs={"dropout": rng})
  loss, aux = losses.softmax_cross_entropy(logits_BxC, batch["label"], batch["mask"],
                                           label_smoothing if train else 0.0)
  aux["confusion"] = losses.confusion_matrix(logits_BxC, batch["label"], batch["mask"])
  return loss, aux


def predict_next_token(params, batch, rng, train, *, model: nn.Module):
  """Next-token cross-entropy of a language model over whole windows."""
  logits_BxLxV = model.apply({"params": params}, batch["inputs"], train=train,
                             rngs={"dropout": rng})
  return losses.next_token_cross_entropy(logits_BxLxV, batch["targets"], batch["mask"])


def make_objective(config, model: nn.Module) -> Objective:
  """The objective of config.task, with the model and the config's loss options bound."""
  if config.task == "image_classification":
    return functools.partial(classify_images, model=model,
                             label_smoothing=config.loss.label_smoothing,
                             max_shift=config.data.random_shift)
  if config.task == "text_classification":
    return functools.partial(classify_text, model=model,
                             label_smoothing=config.loss.label_smoothing)
  if config.task == "language_model":
    return functools.partial(predict_next_token, model=model)
  raise UserError(f"task={config.task!r} is not one of {', '.join(INPUT_KEYS)}")


# aux['first_nonfinite'] of a step whose loss and gradients are finite: above any step number
# (float32 holds step numbers exactly up to 2**24).
NO_NONFINITE = float(2**31)


def merge_sums(a: dict[str, jax.Array], b: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Adds metric sums; 'first_nonfinite' (the first update with a non-finite loss) merges by
  min. A key missing from `a` (sums restored from an older checkpoint) counts as b's value."""
  return {k: (jnp.minimum if k == "first_nonfinite" else jnp.add)(a[k], b[k]) if k in a
          else b[k] for k in b}


def empty_sums(shapes: dict[str, jax.ShapeDtypeStruct]) -> dict[str, jax.Array]:
  """The identity of merge_sums: zeros, and NO_NONFINITE for 'first_nonfinite'."""
  return {k: jnp.full(v.shape, NO_NONFINITE if k == "first_nonfinite" else 0, v.dtype)
          for k, v in shapes.items()}


def train_step(state: TrainState, batch: dict[str, jax.Array], *, objective: Objective,
               tx: optax.GradientTransformation, skip_nonfinite: bool = False,
               ema_decay: float = 0.0, axis_name: str | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on one global batch; metrics are sums over its unmasked examples.

  Under jax.jit the batch is the global batch. Under jax.pmap (`axis_name` names the device
  axis) it is one device's slice, and the gradient and sums are combined across the axis.

  aux also counts a non-finite loss or gradient ('nonfinite': 0 or 1) and names the update it
  happened in ('first_nonfinite': state.step + 1, else NO_NONFINITE; merged by minimum). With
  skip_nonfinite such an update is not applied (params and optimizer state stay as they were,
  the step still advances) and its loss sums are zeroed; the loop reads the flags only where
  it syncs with the device anyway.

  With ema_decay > 0, state.ema_params becomes ema_decay * ema_params + (1 - ema_decay) * params
  after the update (every device computes the same average under pmap).
  """
  # Every random choice of this step derives from the base key and the step number, so a
  # resumed run draws exactly what the uninterrupted one did.
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:  # pmap: each device draws its own dropout and augmentation
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  loss_fn = lambda params: objective(params, batch, rng, True)
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    # Each device's loss is the mean over its own rows. Weighting its gradient by its row count
    # (pmean(count * g) / pmean(count)) gives the gradient of the global-batch mean, as under
    # jit, even when an epoch's padded last batch leaves the devices unequal counts.
    count = aux["count"]
    mean_count = jnp.maximum(jax.lax.pmean(count, axis_name), 1e-9)
    grads = jax.tree.map(lambda g: jax.lax.pmean(count * g, axis_name) / mean_count, grads)
    aux = jax.lax.psum(aux, axis_name)
    loss = aux["loss_sum"] / jnp.maximum(aux["count"], 1.0)  # the global batch's, as under jit
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_decay > 0:
    ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema_params, params)
  if skip_nonfinite:
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    ema_params = keep(ema_params, state.ema_params)
    aux = jax.tree.map(lambda v: jnp.where(finite, v, jnp.zeros_like(v)), aux)
  aux["nonfinite"] = 1.0 - finite.astype(jnp.float32)
  aux["first_nonfinite"] = jnp.where(finite, NO_NONFINITE, (state.step + 1).astype(jnp.float32))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       ema_params=ema_params), aux


def eval_step(state: TrainState, batch: dict[str, jax.Array], *,
              objective: Objective) -> dict[str, jax.Array]:
  """The objective's sums over the batch's unmasked examples, without dropout or augmentation,
  with eval_params(state)."""
  _, aux = objective(eval_params(state), batch, jax.random.PRNGKey(0), False)  # rng unused: eval
  return aux


def train_steps(state: TrainState, sums: dict[str, jax.Array], xs: dict[str, jax.Array],
                arrays: dict[str, jax.Array] | None, *, objective: Objective,
                tx: optax.GradientTransformation, skip_nonfinite: bool = False,
                ema_decay: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """len(xs) train steps in one compiled call (lax.scan): train_step after train_step.

  xs holds the steps' batches stacked on a leading axis, or, when `arrays` (the training split,
  resident on the device) is given, each step's row `index` and `mask`, gathered here exactly as
  data.TrainBatches.batch does on the host. Each step's metric sums are added onto `sums` in
  step order with merge_sums, as the loop merges them.
  """
  def body(carry, x):
    state, sums = carry
    batch = x if arrays is None else {**{k: v[x["index"]] for k, v in arrays.items()},
                                      "mask": x["mask"]}
    state, aux = train_step(state, batch, objective=objective, tx=tx,
                            skip_nonfinite=skip_nonfinite, ema_decay=ema_decay)
    return (state, merge_sums(sums, aux)), None

  # XLA's CPU backend runs a while loop's body several times slower than the same ops at top
  # level (measured 378 vs 58 ms per seed-CNN step, experiments/bench/README.md), so on CPU the
  # steps are unrolled into straight-line code; accelerators keep the compact loop.
  unroll = True if jax.default_backend() == "cpu" else 1
  (state, sums), _ = jax.lax.scan(body, (state, sums), xs, unroll=unroll)
  return state, sums
