"""The training loop, top to bottom: validate, mesh, data, model, optimizer, state, restore, loop.

Nothing is written to the workdir until the config, the devices and the data have all passed
their checks, so a mistake leaves no trace.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from jaxdl import (checkpoint, data, metrics, models, optim, parallel, profiler, runrecord,
                   steps, validate)
from jaxdl.errors import UserError

_add = jax.jit(steps.merge_sums)

# A training split up to this size is copied to the device once when steps are fused, and each
# step's batch is gathered there; a larger one (or another iterator) is stacked on the host.
_DEVICE_DATA_MAX_BYTES = 1 << 30


def steps_per_dispatch(limit: int, *boundaries: int) -> int:
  """The largest k <= limit that divides every boundary (log, eval and checkpoint intervals), so
  dispatches of k fused steps end exactly on each of them; 1 = no fusion."""
  g = math.gcd(*boundaries)
  return max(k for k in range(1, max(limit, 1) + 1) if g % k == 0)


def _check_finite(sums, skip_nonfinite: bool, ckpts: checkpoint.Checkpoints) -> None:
  """Stops the run (UserError) if an update since the last check had a non-finite loss or
  gradient. Called where the loop syncs with the device anyway: before logging and saving."""
  if sums is None or skip_nonfinite:
    return
  first = float(sums["first_nonfinite"])
  if first < steps.NO_NONFINITE:
    last = ckpts.latest_step()
    kept = f"the last good checkpoint is step {last}" if last is not None else "no checkpoint yet"
    raise UserError(f"training diverged: non-finite loss or gradient at step {int(first)} "
                    f"({kept}, left intact); lower opt.lr, set opt.grad_clip_norm, or set "
                    f"train.skip_nonfinite=True to skip such updates")


def _brief(split: str, m: dict[str, Any]) -> str:
  """A split's metrics for console lines: 'test accuracy 98.20% (982/1000) | test loss 0.0500'."""
  line = f"{split} loss {m['loss']:.4f}"
  if "accuracy" in m:
    line = (f"{split} accuracy {100 * m['accuracy']:.2f}% "
            f"({round(m['accuracy'] * m['count'])}/{m['count']}) | {line}")
  if "macro_f1" in m:
    line += f" | {split} macro-F1 {100 * m['macro_f1']:.2f}%"
  if "perplexity" in m:
    line += f" | {split} ppl {m['perplexity']:.2f} | {m['bits_per_token']:.3f} bits/token"
  return line


def _layout(config: ml_collections.ConfigDict, state) -> str:
  """How the step runs and what the state costs each device: 'jit+fsdp, state 1.2 of 9.6 MB'."""
  mode = config.parallel.mode + ("+fsdp" if config.parallel.fsdp else "")
  total = sum(x.nbytes for x in jax.tree.leaves(state)) / 1e6
  per_device = parallel.sharded_bytes_per_device(state) / 1e6
  return f"{mode}, state {per_device:.3g} of {total:.3g} MB per device"


def evaluate(eval_step, state, arrays: dict[str, np.ndarray], batch_size: int,
             mesh) -> dict[str, Any]:
  """metrics.summarise of every example of a split exactly once (ragged end padded, masked)."""
  sums = None
  for batch in data.eval_batches(arrays, batch_size, jax.process_index(), jax.process_count()):
    out = eval_step(state, parallel.global_batch(batch, mesh))
    sums = out if sums is None else _add(sums, out)
  return metrics.summarise(sums)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains config's experiment in workdir, resuming from its latest checkpoint if any.

  Returns the final eval metrics, f"{split}_{name}" for each of the dataset's final splits
  (MNIST: 'test_loss', 'test_accuracy', 'test_count').
  """
  validate.validate(config, workdir)
  resolved = config.to_dict()
  config_changes = checkpoint.check_resume_config(workdir, resolved)  # reads only
  skip_nonfinite = config.train.skip_nonfinite

  # 1. parallel: one mesh over all devices; batches split over its 'data' axis.
  mesh = parallel.make_mesh(config.parallel.mesh_shape)
  parallel.check_batch("batch_size", config.batch_size, mesh)
  parallel.check_batch("eval_batch_size", config.eval_batch_size, mesh)
  replicated = parallel.replicated(mesh)

  # 2. data: whole splits in host memory; train batches are a function of (seed, step).
  dataset = data.load(config, workdir)
  train_batches = dataset.train
  steps_per_epoch = train_batches.steps_per_epoch
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else config.num_epochs * steps_per_epoch)
  eval_every = config.eval_every or steps_per_epoch

  # 3. model and 4. optimizer.
  model = models.get_model(config, **dataset.model_info)
  tx = optim.make(config.opt, num_steps)
  lr_at = optim.schedule(config.opt, num_steps)
  objective = steps.make_objective(config, model)

  # 5. state: initialised directly into its layout (replicated, or sharded by fsdp). The
  # train step is the same pure function in every mode: compiled for the mesh by jax.jit, or
  # run per device by jax.pmap on this process's rows of the batch.
  sample = parallel.global_batch(train_batches.batch(0), mesh)[steps.INPUT_KEYS[config.task]]
  ema_decay = config.train.ema_decay  # > 0: evaluate a moving average of the params
  create = functools.partial(steps.create_state, model, tx, seed=config.seed, ema=ema_decay > 0)
  state_sharding = parallel.state_shardings(jax.eval_shape(create, sample), mesh,
                                            config.parallel.fsdp, config.parallel.fsdp_min_size)
  state = jax.jit(create, out_shardings=state_sharding)(sample)
  step_fn = functools.partial(steps.train_step, objective=objective, tx=tx,
                              skip_nonfinite=skip_nonfinite, ema_decay=ema_decay)
  if config.parallel.mode == "pmap":
    train_step = parallel.pmap_train_step(step_fn, mesh)
  else:
    train_step = jax.jit(step_fn, out_shardings=(state_sharding, replicated), donate_argnums=0)
  eval_step = jax.jit(functools.partial(steps.eval_step, objective=objective),
                      out_shardings=replicated)

  # Fused steps: k steps per dispatch (lax.scan), k dividing every log/eval/checkpoint interval.
  fuse = 1 if config.parallel.mode == "pmap" else steps_per_dispatch(
      config.steps_per_dispatch, config.log_every, eval_every, config.checkpoint_every)
  train_steps = jax.jit(functools.partial(steps.train_steps, objective=objective, tx=tx,
                                          skip_nonfinite=skip_nonfinite, ema_decay=ema_decay),
                        out_shardings=(state_sharding, replicated), donate_argnums=0)
  device_arrays = None  # the training split on the device, when fused steps gather from it
  if (fuse > 1 and isinstance(train_batches, data.TrainBatches) and jax.process_count() == 1
      and sum(v.nbytes for v in train_batches.arrays.values()) <= _DEVICE_DATA_MAX_BYTES):
    device_arrays = jax.device_put(train_batches.arrays, replicated)
  stacked_sharding = NamedSharding(mesh, P(None, "data"))
  sums_shape = None if fuse == 1 else jax.eval_shape(
      train_step, state, parallel.global_batch(train_batches.batch(0), mesh))[1]

  def chunk_inputs(step: int, k: int) -> dict[str, jax.Array]:
    """What train_steps scans over for steps step..step+k-1: indices or stacked batches."""
    if device_arrays is not None:
      rows = [train_batches.indices(s) for s in range(step, step + k)]
      return jax.device_put({"index": np.stack([r[0] for r in rows]).astype(np.int32),
                             "mask": np.stack([r[1] for r in rows]).astype(np.float32)},
                            replicated)
    batches = [train_batches.batch(s) for s in range(step, step + k)]
    return {key: jax.make_array_from_process_local_data(
        stacked_sharding, np.stack([b[key] for b in batches])) for key in batches[0]}

  # 6. restore: the first write to the workdir happens here, after every check has passed.
  # Leaving the `with` (normally or by an exception) waits for the last asynchronous save.
  if not metrics.is_url(workdir):  # object stores (gs://) have no directories to make
    os.makedirs(workdir, exist_ok=True)
  writer = metrics.Writer(workdir)
  # From here SIGTERM/SIGINT only set a flag (checkpoint.StopSignals), read after each step.
  with (checkpoint.Checkpoints(workdir, config.keep_checkpoints) as ckpts,
        checkpoint.StopSignals(ckpts.manager) as signals):
    interval_sums = None  # metric sums since the last train log line
    restored = ckpts.restore_latest(state)  # None for a fresh workdir
    if restored is not None:
      state, loop = restored
      train_batches.check_position(int(state.step), loop["data"])
      if loop["interval_sums"] is not None:
        interval_sums = {k: jnp.asarray(v, jnp.float32) for k, v in loop["interval_sums"].items()}
      writer.print(f"resumed from the checkpoint at step {int(state.step)} in {ckpts.directory}")
    start_step = int(state.step)
    if start_step > num_steps:
      raise UserError(f"the checkpoint in {ckpts.directory} is at step {start_step}, past this "
                      f"config's {num_steps} steps (num_epochs or num_train_steps lowered?)")
    writer.drop_after(start_step)  # events the interrupted run logged after its last checkpoint
    if start_step:
      for key, (old, new) in config_changes.items():
        writer.print(f"resuming with a changed config: {key}: {old!r} -> {new!r}")
    if writer.enabled:
      metrics.write_json(os.path.join(workdir, "config.json"), resolved)
      for name, text in dataset.files.items():  # e.g. the vocabulary, kept beside checkpoints
        path = os.path.join(workdir, name)
        if not metrics.exists(path):
          metrics.write_text(path, text)
    runrecord.begin(workdir, resolved, start_step, num_steps)  # run.json: a segment per start

    def save(step):
      _check_finite(interval_sums, skip_nonfinite, ckpts)  # never save a diverged state
      sums = None if interval_sums is None else {
          k: np.asarray(v).tolist() for k, v in jax.device_get(interval_sums).items()}
      ckpts.save(step, state, {"data": train_batches.position(step), "interval_sums": sums})

    writer.print(
        f"data: {dataset.source} | {dataset.describe} | "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
        f"{f' in {jax.process_count()} processes' if jax.process_count() > 1 else ''}, "
        f"batch {config.batch_size} "
        f"({config.batch_size // jax.device_count()} per device) | {_layout(config, state)} | "
        f"{num_steps:,} steps ({steps_per_epoch} per epoch)")

    # 7. loop: over dispatches of k fused steps (k = 1: one step each); logging, eval and
    # checkpoints at fixed step boundaries, each of which ends a dispatch.
    profile = profiler.Profiler(config.profile_steps, workdir, writer.print)
    writer.start_progress(start_step, num_steps, steps_per_epoch)  # bar on a TTY, else lines
    run_start = interval_start = time.time()
    step = start_step
    while step < num_steps:
      profile.at(step, state)  # starts/stops the trace at config.profile_steps
      k = min(fuse - step % fuse, num_steps - step)  # ends on a multiple of fuse, or at the end
      if k == 1:
        batch = train_batches.batch(step)  # this process's rows of global batch `step`
        if config.parallel.mode == "jit":
          batch = parallel.global_batch(batch, mesh)
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          state, step_sums = train_step(state, batch)
        interval_sums = step_sums if interval_sums is None else _add(interval_sums, step_sums)
      else:
        if interval_sums is None:  # merge_sums(empty, x) == x exactly: the unfused loop's sums
          interval_sums = steps.empty_sums(sums_shape)
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          state, interval_sums = train_steps(state, interval_sums, chunk_inputs(step, k),
                                             device_arrays)
      done = step + k
      writer.advance(done)
      if step == start_step:
        jax.block_until_ready(state)
        writer.print(f"first {'step' if k == 1 else f'{k} steps'} (compilation included) "
                     f"took {time.time() - run_start:.1f}s")
      step = done

      if done % config.log_every == 0 or done == num_steps:
        _check_finite(interval_sums, skip_nonfinite, ckpts)
        train = metrics.summarise(interval_sums)
        skipped = int(interval_sums["nonfinite"]) if skip_nonfinite else 0
        seconds = max(time.time() - interval_start, 1e-9)
        unit = "examples" if "accuracy" in train else "tokens"
        # One event: a metrics.jsonl line, TensorBoard scalars, the progress bar or line.
        writer.write("train", done, {
            "loss": train["loss"], "lr": float(lr_at(done - 1)),
            f"{unit}_per_s": train["count"] / seconds,
            **({"accuracy": train["accuracy"]} if "accuracy" in train else {}),
            **({"skipped_nonfinite": skipped} if skip_nonfinite else {})})
        interval_sums, interval_start = None, time.time()

      if done % eval_every == 0 and done != num_steps:
        _check_finite(interval_sums, skip_nonfinite, ckpts)
        jax.block_until_ready(state)  # queued train steps belong to the train interval's time
        eval_start = time.time()
        split = dataset.eval_split
        result = evaluate(eval_step, state, dataset.evals[split], config.eval_batch_size, mesh)
        writer.write("eval", done, {f"{split}_{k}": v for k, v in result.items()})
        writer.print(f"eval at step {done}: {_brief(split, result)}")
        interval_start += time.time() - eval_start  # train throughput excludes eval time

      stop = signals.requested(done)  # SIGTERM or SIGINT arrived: save this step, then exit
      if stop or done % config.checkpoint_every == 0 or done == num_steps:
        save(done)
      if stop:
        ckpts.wait()
        signum = signals.signum or signal.SIGTERM  # None: a multi-host preemption notice
        writer.print(f"{signal.Signals(signum).name}: saved the checkpoint at step {done} and "
                     f"waited for it to reach the disk; re-run the same command to resume")
        runrecord.end(workdir, done, None)  # a clean stop: end time, no final metrics
        writer.close()
        raise checkpoint.Stopped(signum, done)

    # 8. finish: final evals (the last step saved the final checkpoint), summary line.
    profile.stop(state, num_steps)
    results = {split: evaluate(eval_step, state, dataset.evals[split], config.eval_batch_size,
                               mesh) for split in dataset.final_splits}
  final = {f"{split}_{k}": v for split, result in results.items() for k, v in result.items()}
  writer.write("final", num_steps, final)
  writer.print(f"final: {' | '.join(_brief(s, r) for s, r in results.items())} | "
               f"{num_steps} steps, {time.time() - run_start:.1f}s | data: {dataset.source}")
  runrecord.end(workdir, num_steps, final)
  writer.close()
  return final
