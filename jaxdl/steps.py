"""The train state, the pure steps (state, batch) → (state, metrics), and how they are run.

An objective is `(params, batch, rng, train) -> (loss, aux sums)`: the forward pass and the loss
of one task (task.objective builds it). `Runner` binds it and the optimizer to the steps and
compiles them for the mesh: jax.jit, one step per call or k fused by lax.scan, or jax.pmap.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax

from jaxdl import parallel
from jaxdl.errors import UserError
from jaxdl.data import dataset, eval_batches

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]

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
  # An NNX model (models.get wraps it with nnx.bridge.ToLinen) is constructed inside init and
  # its nnx.Dropout layers ask for a 'dropout' stream then; linen params draw from 'params'
  # alone, so the extra stream changes no linen model's init.
  # Params carrying logical axis names (the transformer's, for tensor parallelism) come boxed;
  # the state holds the plain arrays, and the names reach the layout through param_axes().
  params = nn.unbox(model.init({"params": init_rng, "dropout": init_rng}, sample_inputs,
                               train=False)["params"])
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=base_rng, ema_params=jax.tree.map(jnp.copy, params) if ema else None)


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


def _accumulate(objective: Objective, params, batch, rng, k: int):
  """(loss, aux sums, gradient) of the whole batch, from k microbatches in a lax.scan.

  The objective's loss is its microbatch's mean, aux['loss_sum'] / aux['count'], so each
  microbatch's gradient is weighted by its count and the sum divided by the batch's: the
  gradient of the whole batch's mean, to float rounding, however the mask falls (a padded
  last batch's empty microbatches add nothing). Microbatch i draws dropout from
  fold_in(rng, i)."""
  grad_fn = jax.value_and_grad(lambda p, mb, r: objective(p, mb, r, True), has_aux=True)

  def body(carry, xs):
    grads, sums = carry
    i, mb = xs
    (_, aux), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
    grads = jax.tree.map(lambda acc, gi: acc + aux["count"] * gi, grads, g)
    return (grads, jax.tree.map(jnp.add, sums, aux)), None

  micro = microbatches(batch, k)
  first = jax.tree.map(lambda x: x[0], micro)
  sums_shape = jax.eval_shape(lambda: objective(params, first, rng, True)[1])
  zeros = (jax.tree.map(jnp.zeros_like, params),
           jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape))
  (grads, aux), _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
  count = jnp.maximum(aux["count"], 1.0)
  return aux["loss_sum"] / count, aux, jax.tree.map(lambda g: g / count, grads)


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
  """
  # Every random choice of this step derives from the base key and the step number, so a
  # resumed run draws exactly what the uninterrupted one did.
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:  # pmap: each device draws its own dropout and augmentation
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  if grad_accum_steps == 1:
    loss_fn = lambda params: objective(params, batch, rng, True)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  else:
    loss, aux, grads = _accumulate(objective, state.params, batch, rng, grad_accum_steps)
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
    d = ema_decay_at(ema_decay, state.step, ema_warmup)
    ema_params = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema_params, params)
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
                ema_decay: float = 0.0, ema_warmup: bool = False, grad_accum_steps: int = 1
                ) -> tuple[TrainState, dict[str, jax.Array]]:
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
                            skip_nonfinite=skip_nonfinite, ema_decay=ema_decay,
                            ema_warmup=ema_warmup, grad_accum_steps=grad_accum_steps)
    return (state, merge_sums(sums, aux)), None

  # XLA's CPU backend runs a while loop's body several times slower than the same ops at top
  # level (measured 378 vs 58 ms per seed-CNN step, experiments/bench/README.md), so on CPU the
  # steps are unrolled into straight-line code; accelerators keep the compact loop.
  unroll = True if jax.default_backend() == "cpu" else 1
  (state, sums), _ = jax.lax.scan(body, (state, sums), xs, unroll=unroll)
  return state, sums


def steps_per_dispatch(limit: int, *boundaries: int) -> int:
  """The largest k <= limit that divides every boundary (log, eval and checkpoint intervals), so
  dispatches of k fused steps end exactly on each of them; 1 = no fusion."""
  g = math.gcd(*boundaries)
  return max(k for k in range(1, max(limit, 1) + 1) if g % k == 0)


# A training split up to this size is copied to the device once when steps are fused, and each
# step's batch is gathered there; a larger one (or an iterator without rows) is stacked on the
# host.
_DEVICE_DATA_MAX_BYTES = 1 << 30


class Runner:
  """How the loop runs steps: the state's layout, and the compiled train and eval steps.

  parallel.mode='jit': one program over the mesh (the batch split over 'data', the state
  replicated or fsdp-sharded), k fused steps per dispatch (k dividing every log, eval and
  checkpoint interval: config.steps_per_dispatch), their batches gathered on the device when
  the iterator's `rows()` fit there, else stacked on the host. 'pmap': jax.pmap of the same
  train_step, one step per dispatch. `run` and `evaluate` hide which.
  """

  def __init__(self, config, model: nn.Module, objective: Objective,
               tx: optax.GradientTransformation, train_batches: dataset.TrainIterator,
               mesh, input_key: str, eval_every: int):
    self.mesh, self.batches, self.mode = mesh, train_batches, config.parallel.mode
    replicated = parallel.replicated(mesh)
    ema_decay, skip = config.train.ema_decay, config.train.skip_nonfinite
    sample = parallel.global_batch(train_batches.batch(0), mesh)
    self._create = functools.partial(create_state, model, tx, seed=config.seed,
                                     ema=ema_decay > 0)
    self._sample_inputs = sample[input_key]
    abstract_state = jax.eval_shape(self._create, self._sample_inputs)
    axes = param_axes(model, self._sample_inputs)  # logical names → 'model' (tensor parallel)
    if mesh.shape["model"] > 1 and not parallel.uses_model_axis(axes):
      raise UserError(f"config.parallel.mesh_shape={tuple(config.parallel.mesh_shape)}: a "
                      f"'model' axis of {mesh.shape['model']} needs a model whose params carry "
                      f"logical axis names that parallel.LOGICAL_RULES puts on it (the "
                      f"transformer's: heads, mlp, vocab); {config.model.name!r} has none")
    self.state_sharding = parallel.state_shardings(
        abstract_state, mesh, config.parallel.fsdp, config.parallel.fsdp_min_size, axes)
    # The state's shapes, dtypes and layout, without its memory: what a restore fills in.
    self.abstract_state = jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        abstract_state, self.state_sharding)
    bound = dict(objective=objective, tx=tx, skip_nonfinite=skip, ema_decay=ema_decay,
                 ema_warmup=config.train.ema_warmup,
                 grad_accum_steps=config.train.grad_accum_steps)
    if self.mode == "pmap":
      self._step = parallel.pmap_train_step(functools.partial(train_step, **bound), mesh)
    else:
      self._step = jax.jit(functools.partial(train_step, **bound),
                           out_shardings=(self.state_sharding, replicated), donate_argnums=0)
    self._eval = jax.jit(functools.partial(eval_step, objective=objective),
                         out_shardings=replicated)
    self._add = jax.jit(merge_sums)

    self.fuse = 1 if self.mode == "pmap" else steps_per_dispatch(
        config.steps_per_dispatch, config.log_every, eval_every, config.checkpoint_every)
    self._steps = jax.jit(functools.partial(train_steps, **bound),
                          out_shardings=(self.state_sharding, replicated), donate_argnums=0)
    rows = train_batches.rows() if self.fuse > 1 and jax.process_count() == 1 else None
    self._device_rows = None  # the training split on the device, when fused steps gather there
    if rows is not None and sum(v.nbytes for v in rows.values()) <= _DEVICE_DATA_MAX_BYTES:
      self._device_rows = jax.device_put(rows, replicated)
    self._sums_shape = None if self.fuse == 1 else jax.eval_shape(
        self._step, abstract_state, sample)[1]

  def compile_step(self, batch: dict[str, jax.Array]):
    """The jit train step compiled for a global batch of `batch`'s shapes and layout, without
    running it: its cost_analysis() and memory_analysis() (experiments/bench/accelerator.py)."""
    if self.mode == "pmap":
      raise UserError("Runner.compile_step: parallel.mode='pmap' has no single compiled step; "
                      "use parallel.mode='jit'")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            batch)
    with self._context():
      return self._step.lower(self.abstract_state, abstract).compile()

  def init_state(self) -> TrainState:
    """The initial state, initialised directly into its layout (replicated, or fsdp)."""
    return jax.jit(self._create, out_shardings=self.state_sharding)(self._sample_inputs)

  def dispatch(self, step: int, num_steps: int) -> int:
    """How many steps the dispatch starting at `step` runs: up to a multiple of fuse, or the end."""
    return min(self.fuse - step % self.fuse, num_steps - step)

  def run(self, state: TrainState, sums, step: int, k: int):
    """Steps step..step+k-1; their metric sums are merged onto `sums` (None: none yet)."""
    with jax.profiler.StepTraceAnnotation("train", step_num=step), self._context():
      if k == 1:
        batch = self.batches.batch(step)  # this process's rows of global batch `step`
        if self.mode == "jit":
          batch = parallel.global_batch(batch, self.mesh)
        state, step_sums = self._step(state, batch)
        return state, step_sums if sums is None else self._add(sums, step_sums)
      if sums is None:  # merge_sums(empty, x) == x exactly: the unfused loop's sums
        sums = empty_sums(self._sums_shape)
      return self._steps(state, sums, self._chunk(step, k), self._device_rows)

  def _chunk(self, step: int, k: int) -> dict[str, jax.Array]:
    """What train_steps scans over for steps step..step+k-1: indices or stacked batches."""
    if self._device_rows is not None:
      rows = [self.batches.indices(s) for s in range(step, step + k)]
      return jax.device_put({"index": np.stack([r[0] for r in rows]).astype(np.int32),
                             "mask": np.stack([r[1] for r in rows]).astype(np.float32)},
                            parallel.replicated(self.mesh))
    batches = [self.batches.batch(s) for s in range(step, step + k)]
    stacked = NamedSharding(self.mesh, P(None, "data"))
    return {key: jax.make_array_from_process_local_data(
        stacked, np.stack([b[key] for b in batches])) for key in batches[0]}

  def evaluate(self, state: TrainState, arrays: dict[str, np.ndarray], batch_size: int):
    """The eval sums over every example of a split exactly once (ragged end padded, masked)."""
    sums = None
    with self._context():
      for batch in eval_batches(arrays, batch_size, jax.process_index(), jax.process_count()):
        out = self._eval(state, parallel.global_batch(batch, self.mesh))
        sums = out if sums is None else self._add(sums, out)
    return sums

  def _context(self):
    """What the jit steps are traced and called under: the mesh, so that a model's activation
    constraints take effect (parallel.activation_sharding); a pmap step has none."""
    return (contextlib.nullcontext() if self.mode == "pmap"
            else parallel.activation_sharding(self.mesh))


PREDICT_BATCH = 256  # inputs per forward pass of a classifier's predictions (jaxdl.predict)


def classifier(model: nn.Module, params, label_names: list[str],
               encode: Callable[[list], np.ndarray], batch_size: int = PREDICT_BATCH):
  """(inputs) -> [(label name, probability)] of each input's likeliest class: `encode` turns a
  list of inputs (sentences, image paths) into the model's array, batch_size at a time, the last
  batch padded so that every call runs one compiled shape."""
  probs = jax.jit(lambda x: jax.nn.softmax(model.apply({"params": params}, x, train=False), -1))

  def predict(inputs: list) -> list[tuple[str, float]]:
    out = []
    for start in range(0, len(inputs), batch_size):
      chunk = inputs[start:start + batch_size]
      x = encode(chunk)
      x = np.pad(x, [(0, batch_size - len(chunk))] + [(0, 0)] * (x.ndim - 1))
      p_NxC = np.asarray(probs(x))[:len(chunk)]
      out += [(label_names[c], float(p[c])) for c, p in zip(p_NxC.argmax(-1), p_NxC)]
    return out

  return predict
