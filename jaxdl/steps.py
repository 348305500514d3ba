"""The train state and the pure steps: (state, batch) → (state, metric sums).

An objective is `(variables, batch, rng, train) -> (loss, aux sums, new model state)`: the
forward pass and the loss of one task (task.objective builds it), the model applied through
models.apply. `variables` is {'params': ..., **model state}. Everything here is a pure
function of its arguments; how the steps are compiled and fed (jit on a mesh, pmap, k fused
steps) is runner.py's.

Model state (BatchNorm's running averages: every collection of the model's init but 'params')
rides in TrainState.model_state: updated by each train step, read (never updated) by eval.
  - jit on the mesh: a batch split over devices is one global array, so a model's batch
    statistics are the global batch's.
  - pmap: each device normalises by its own slice's statistics (a model may pass
    axis_name='data' to its BatchNorm under pmap only, to sync them; jit has no named axis);
    the new running averages are averaged over the devices (pmean), so every device keeps one
    state.
  - grad_accum_steps = k: each microbatch is normalised by its own statistics, and the running
    averages take k updates per step, one per microbatch in order (what k smaller steps would).
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdl import models
from jaxdl.data.iterator import take
from jaxdl.errors import UserError

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]]

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
  # The model's non-param collections ({'batch_stats': ...}, models.split_variables); None for a
  # model without state, so its state and checkpoints are as before model state existed.
  model_state: Any = None


def create_state(model: nn.Module, tx: optax.GradientTransformation, sample_inputs: jax.Array,
                 seed: int, ema: bool = False) -> TrainState:
  """Initialises params (and model state) from `seed`; the sample inputs only fix shapes.
  With `ema` the average starts at the initial params."""
  # A raw uint32 key (not a typed key array) so Orbax stores it as an ordinary array.
  init_rng, base_rng = jax.random.split(jax.random.PRNGKey(seed))
  # An NNX model (models.get wraps it with nnx.bridge.ToLinen) is constructed inside init and
  # its nnx.Dropout layers ask for a 'dropout' stream then; linen params draw from 'params'
  # alone, so the extra stream changes no linen model's init.
  # Params carrying logical axis names (the transformer's, for tensor parallelism) come boxed;
  # the state holds the plain arrays, and the names reach the layout through param_axes().
  params, model_state = models.split_variables(nn.unbox(model.init(
      {"params": init_rng, "dropout": init_rng}, sample_inputs, train=False)))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=base_rng, ema_params=jax.tree.map(jnp.copy, params) if ema else None,
                    model_state=model_state)


def start_from(state: TrainState, variables: dict[str, Any],
               tx: optax.GradientTransformation) -> TrainState:
  """A fresh `state` with these variables' params and model state (init_from's), the optimizer
  state and the params' average made anew from them, as create_state makes them."""
  params = variables["params"]
  model_state = {name: v for name, v in variables.items() if name != "params"} or None
  return state.replace(params=params, model_state=model_state, opt_state=tx.init(params),
                       ema_params=None if state.ema_params is None
                       else jax.tree.map(jnp.copy, params))


def variables(params, model_state) -> dict[str, Any]:
  """What models.apply takes: {'params': params, **model state}."""
  return {"params": params, **(model_state or {})}


def call(objective: Objective, params, model_state, batch, rng, train: bool):
  """(loss, sums, new model state or None) of the objective on `variables(params, state)`; a
  task whose objective returns another shape (the (loss, sums) of jaxdl before model state)
  is one line naming the contract."""
  out = objective(variables(params, model_state), batch, rng, train)
  if not (isinstance(out, tuple) and len(out) == 3):
    raise UserError(
        f"the task's objective returned {type(out).__name__}"
        f"{f' of {len(out)}' if isinstance(out, tuple) else ''}; an objective returns (loss, "
        f"sums, model state), the state being what jaxdl.models.apply returns with the outputs "
        f"(docs/extending.md)")
  loss, aux, new_state = out
  new_state = new_state or None
  if jax.tree.structure(new_state) != jax.tree.structure(model_state):
    raise UserError(
        f"the task's objective returned a model state of collections "
        f"{sorted(new_state or {})}, given {sorted(model_state or {})}; return the state that "
        f"jaxdl.models.apply returns with the outputs (docs/extending.md)")
  return loss, aux, new_state


def param_axes(model: nn.Module, sample_inputs: jax.Array) -> Any:
  """The params' logical axis names, as a pytree of PartitionSpecs of names (P() for a param
  without them), traced without computing anything."""
  key = jax.random.PRNGKey(0)
  boxed = jax.eval_shape(lambda: model.init({"params": key, "dropout": key}, sample_inputs,
                                            train=False)["params"])
  return nn.get_partition_spec(boxed)


def eval_params(state: TrainState) -> Any:
  """The params to evaluate and predict with: the moving average when the run keeps one."""
  return state.params if state.ema_params is None else state.ema_params


# aux['first_nonfinite'] of a step whose loss and gradients are finite: above any step number
# (float32 holds step numbers exactly up to 2**24).
NO_NONFINITE = float(2**31)


def ema_decay_at(decay: float, step: jax.Array | int, warmup: bool) -> jax.Array | float:
  """The EMA decay of update `step` (0-based: the update after which state.step is step + 1).

  With warmup, min(decay, (1 + step) / (10 + step)), as TensorFlow's
  ExponentialMovingAverage(num_updates=step): early on the average weighs about the last ~11% of
  the updates so far (a time constant of (10 + step) / 9 steps), so a short run's average is not
  mostly its first, untrained params; it reaches `decay` at step (10 decay - 1) / (1 - decay)
  (8,990 for 0.999). Without warmup, `decay` from the first update (runs made before it)."""
  if not warmup:
    return decay  # a Python float, as before the warm-up existed: the same rounding of 1 - d
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def merge_sums(a: dict[str, jax.Array], b: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Adds metric sums; 'first_nonfinite' (the first update with a non-finite loss) merges by
  min. A key missing from `a` (sums restored from an older checkpoint) counts as b's value."""
  return {k: (jnp.minimum if k == "first_nonfinite" else jnp.add)(a[k], b[k]) if k in a
          else b[k] for k in b}


def empty_sums(shapes: dict[str, jax.ShapeDtypeStruct]) -> dict[str, jax.Array]:
  """The identity of merge_sums: zeros, and NO_NONFINITE for 'first_nonfinite'."""
  return {k: jnp.full(v.shape, NO_NONFINITE if k == "first_nonfinite" else 0, v.dtype)
          for k, v in shapes.items()}


def microbatches(batch: dict[str, jax.Array], k: int) -> dict[str, jax.Array]:
  """[B, ...] → [k, B/k, ...], microbatch i holding rows i, i + k, i + 2k, ...: strided, so that
  each device's rows of a batch split over 'data' stay on it, k ways (no data moves)."""
  return {key: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
          for key, x in batch.items()}


def _grad_fn(objective: Objective):
  """(params, model state, batch, rng) -> ((loss, (sums, new model state)), gradient): the
  training objective, differentiated in the params only."""
  def loss_fn(params, model_state, batch, rng):
    loss, aux, new_state = call(objective, params, model_state, batch, rng, True)
    return loss, (aux, new_state)
  return jax.value_and_grad(loss_fn, has_aux=True)


def _accumulate(objective: Objective, params, model_state, batch, rng, k: int):
  """(loss, aux sums, gradient, model state) of the whole batch, from k microbatches in a
  lax.scan.

  The objective's loss is its microbatch's mean, aux['loss_sum'] / aux['count'], so each
  microbatch's gradient is weighted by its count and the sum divided by the batch's: the
  gradient of the whole batch's mean, to float rounding, however the mask falls (a padded
  last batch's empty microbatches add nothing). Microbatch i draws dropout from
  fold_in(rng, i), and runs on the model state microbatch i - 1 left."""
  grad_fn = _grad_fn(objective)

  def body(carry, xs):
    grads, sums, state = carry
    i, mb = xs
    (_, (aux, state)), g = grad_fn(params, state, mb, jax.random.fold_in(rng, i))
    grads = jax.tree.map(lambda acc, gi: acc + aux["count"] * gi, grads, g)
    return (grads, jax.tree.map(jnp.add, sums, aux), state), None

  micro = microbatches(batch, k)
  first = jax.tree.map(lambda x: x[0], micro)
  sums_shape = jax.eval_shape(lambda: call(objective, params, model_state, first, rng, True)[1])
  zeros = (jax.tree.map(jnp.zeros_like, params),
           jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape), model_state)
  (grads, aux, model_state), _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
  count = jnp.maximum(aux["count"], 1.0)
  return aux["loss_sum"] / count, aux, jax.tree.map(lambda g: g / count, grads), model_state


def train_step(state: TrainState, batch: dict[str, jax.Array], *, objective: Objective,
               tx: optax.GradientTransformation, skip_nonfinite: bool = False,
               ema_decay: float = 0.0, ema_warmup: bool = False, grad_accum_steps: int = 1,
               axis_name: str | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on one global batch; metrics are sums over its unmasked examples.

  Under jax.jit the batch is the global batch. Under jax.pmap (`axis_name` names the device
  axis) it is one device's slice, and the gradient and sums are combined across the axis.

  aux also counts a non-finite loss or gradient ('nonfinite': 0 or 1) and names the update it
  happened in ('first_nonfinite': state.step + 1, else NO_NONFINITE; merged by minimum). With
  skip_nonfinite such an update is not applied (params and optimizer state stay as they were,
  the step still advances) and its loss sums are zeroed; the loop reads the flags only where
  it syncs with the device anyway.

  With ema_decay > 0, state.ema_params becomes d * ema_params + (1 - d) * params after the
  update, d = ema_decay_at(ema_decay, state.step, ema_warmup) (every device computes the same
  average under pmap).

  With grad_accum_steps = k > 1 the batch's gradient and sums are accumulated over k
  microbatches (_accumulate), for 1/k of the activation memory; one update, as for the whole.

  The model state the objective returns becomes state.model_state (see the module docstring
  for pmap and microbatches); a skipped non-finite update keeps the old one.
  """
  # Every random choice of this step derives from the base key and the step number, so a
  # resumed run draws exactly what the uninterrupted one did.
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:  # pmap: each device draws its own dropout and augmentation
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  if grad_accum_steps == 1:
    (loss, (aux, model_state)), grads = _grad_fn(objective)(state.params, state.model_state,
                                                            batch, rng)
  else:
    loss, aux, grads, model_state = _accumulate(objective, state.params, state.model_state,
                                                batch, rng, grad_accum_steps)
  if axis_name is not None:
    # Each device's running averages saw its own rows: their mean keeps the state replicated.
    model_state = jax.lax.pmean(model_state, axis_name)
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
    d = ema_decay_at(ema_decay, state.step, ema_warmup)
    ema_params = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema_params, params)
  if skip_nonfinite:
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    ema_params = keep(ema_params, state.ema_params)
    model_state = keep(model_state, state.model_state)
    aux = jax.tree.map(lambda v: jnp.where(finite, v, jnp.zeros_like(v)), aux)
  aux["nonfinite"] = 1.0 - finite.astype(jnp.float32)
  aux["first_nonfinite"] = jnp.where(finite, NO_NONFINITE, (state.step + 1).astype(jnp.float32))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       ema_params=ema_params, model_state=model_state), aux


def eval_step(state: TrainState, batch: dict[str, jax.Array], *,
              objective: Objective) -> dict[str, jax.Array]:
  """The objective's sums over the batch's unmasked examples, without dropout or augmentation,
  with eval_params(state) and the model state (read, not updated)."""
  rng = jax.random.PRNGKey(0)  # unused: eval
  return call(objective, eval_params(state), state.model_state, batch, rng, False)[1]


def train_steps(state: TrainState, sums: dict[str, jax.Array], xs: dict[str, jax.Array],
                arrays: dict[str, jax.Array] | None, *, objective: Objective,
                tx: optax.GradientTransformation, skip_nonfinite: bool = False,
                ema_decay: float = 0.0, ema_warmup: bool = False, grad_accum_steps: int = 1
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """len(xs) train steps in one compiled call (lax.scan): train_step after train_step.

  xs holds the steps' batches stacked on a leading axis, or, when `arrays` (the training split,
  resident on the device) is given, each step's row `index` and `mask`, gathered here by the
  same data.iterator.take that makes a batch on the host. Each step's metric sums are added
  onto `sums` in step order with merge_sums, as the loop merges them.
  """
  def body(carry, x):
    state, sums = carry
    batch = x if arrays is None else take(arrays, x["index"], x["mask"])
    state, aux = train_step(state, batch, objective=objective, tx=tx,
                            skip_nonfinite=skip_nonfinite, ema_decay=ema_decay,
                            ema_warmup=ema_warmup, grad_accum_steps=grad_accum_steps)
    return (state, merge_sums(sums, aux)), None

  # XLA's CPU backend runs a while loop's body several times slower than the same ops at top
  # level (measured 378 vs 58 ms per seed-CNN step, experiments/bench/README.md), so on CPU the
  # steps are unrolled into straight-line code; accelerators keep the compact loop.
  unroll = True if jax.default_backend() == "cpu" else 1
  (state, sums), _ = jax.lax.scan(body, (state, sums), xs, unroll=unroll)
  return state, sums
