"""How the steps run: the state's layout on the mesh, and the compiled train and eval steps.

steps.py holds what a step computes; this file how it is compiled and fed: jax.jit over the
device mesh (one step per call, or k fused by lax.scan, their batches gathered on the device or
stacked on the host), or jax.pmap. The loop (train.py) sees only `run` and `evaluate`.
"""

from __future__ import annotations

import contextlib
import functools
import math

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax

from jaxdl import parallel, steps, weights
from jaxdl.data import dataset, eval_batches
from jaxdl.errors import UserError
from jaxdl.steps import (Objective, TrainState, create_state, empty_sums, eval_step, merge_sums,
                         param_axes, train_step, train_steps)


def steps_per_dispatch(limit: int, *boundaries: int) -> int:
  """The largest k <= limit that divides every boundary (log, eval and checkpoint intervals), so
  dispatches of k fused steps end exactly on each of them; 1 = no fusion."""
  g = math.gcd(*boundaries)
  return max(k for k in range(1, max(limit, 1) + 1) if g % k == 0)


# A training split up to this size is copied to the device once when steps are fused, and each
# step's batch is gathered there; a larger one (or an iterator that is no data.RowIterator) is
# stacked on the host.
_DEVICE_DATA_MAX_BYTES = 1 << 30


class Runner:
  """How the loop runs steps: the state's layout, and the compiled train and eval steps.

  parallel.mode='jit': one program over the mesh (the batch split over 'data', the state
  replicated or fsdp-sharded), k fused steps per dispatch (k dividing every log, eval and
  checkpoint interval: config.steps_per_dispatch), their batches gathered on the device when
  the iterator's `rows()` fit there, else stacked on the host; one step per dispatch when the
  iterator's batches vary in shape (`shapes_vary`). 'pmap': jax.pmap of the same train_step,
  one step per dispatch. `run` and `evaluate` hide which. `notes` says, once, where the runner
  did otherwise than the config asked.
  """

  def __init__(self, config, model: nn.Module, objective: Objective,
               tx: optax.GradientTransformation, train_batches: dataset.TrainIterator,
               mesh, input_key: str, eval_every: int):
    self.mesh, self.batches, self.mode = mesh, train_batches, config.parallel.mode
    self.notes: list[str] = []  # for the loop to print once
    replicated = parallel.replicated(mesh)
    ema_decay, skip = config.train.ema_decay, config.train.skip_nonfinite
    sample = parallel.global_batch(train_batches.batch(0), mesh)
    self._tx = tx
    self._create = functools.partial(create_state, model, tx, seed=config.seed,
                                     ema=ema_decay > 0)
    self._sample_inputs = sample[input_key]
    abstract_state = jax.eval_shape(self._create, self._sample_inputs)
    axes = param_axes(model, self._sample_inputs)  # logical names → 'model' (tensor parallel)
    if mesh.shape["model"] > 1 and not parallel.uses_model_axis(axes):
      # A user's model (models.check refuses a built-in family without the names up front).
      self.notes.append(
          f"config.parallel.mesh_shape={tuple(config.parallel.mesh_shape)}: the params of "
          f"{config.model.name!r} carry no logical axis names that parallel.LOGICAL_RULES puts "
          f"on 'model' (the transformer's: heads, mlp, vocab), so its {mesh.shape['model']} "
          f"devices each hold them whole and compute the same (no tensor parallelism)")
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
    if self.fuse > 1 and getattr(train_batches, "shapes_vary", False):
      self.notes.append(f"config.steps_per_dispatch={config.steps_per_dispatch}: this data's "
                        f"batches differ in shape from step to step, and fused steps stack "
                        f"batches of one shape, so steps run one per call")
      self.fuse = 1
    self._steps = jax.jit(functools.partial(train_steps, **bound),
                          out_shardings=(self.state_sharding, replicated), donate_argnums=0)
    rows = train_batches.rows() if (self.fuse > 1 and jax.process_count() == 1 and isinstance(
        train_batches, dataset.RowIterator)) else None
    self._device_rows = None  # the training split on the device, when fused steps gather there
    if rows is not None and sum(v.nbytes for v in rows.values()) <= _DEVICE_DATA_MAX_BYTES:
      self._device_rows = jax.device_put(rows, replicated)
    self._sums_shape = None if self.fuse == 1 else jax.eval_shape(
        self._step, abstract_state, sample)[1]
    self._trace_train = lambda: jax.eval_shape(functools.partial(train_step, **bound),
                                               abstract_state, sample)

  def eval_shapes(self, arrays: dict[str, np.ndarray], batch_size: int):
    """The shapes and dtypes of the eval sums over a split, traced without computing them."""
    batch = next(eval_batches(arrays, batch_size, jax.process_index(), jax.process_count()))
    with self._context():
      return jax.eval_shape(self._eval, self.abstract_state,
                            parallel.global_batch(batch, self.mesh))

  def trace_train_step(self) -> None:
    """Traces one train step without computing it: the model's call with train=True has run
    (e.g. for keys of the config only that call reads)."""
    with self._context():
      self._trace_train()

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

  def init_state(self, start: dict[str, np.ndarray] | None = None) -> TrainState:
    """The initial state, initialised directly into its layout (replicated, or fsdp). `start`
    ({name: array} as weights.py names them: init_from's) replaces those of the fresh params
    and model state, each array placed as the fresh one is; the optimizer state and the params'
    average are then made anew from the new params."""
    state = jax.jit(self._create, out_shardings=self.state_sharding)(self._sample_inputs)
    if not start:
      return state
    variables = steps.variables(state.params, state.model_state)
    leaves, treedef = jax.tree.flatten(variables)
    # make_array_from_callback: each process fills its own shards, as many processes need.
    leaves = [leaf if name not in start else jax.make_array_from_callback(
        leaf.shape, leaf.sharding, lambda index, array=start[name]: array[index])
              for name, leaf in zip(weights.flatten(variables), leaves)]
    return jax.jit(functools.partial(steps.start_from, tx=self._tx),
                   out_shardings=self.state_sharding, donate_argnums=0)(
                       state, jax.tree.unflatten(treedef, leaves))

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
