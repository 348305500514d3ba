"""The training loop, top to bottom: validate, mesh, data, model, optimizer, state, restore, loop.

Nothing is written to the workdir until the config, the devices and the data have all passed
their checks, so a mistake leaves no trace.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl import checkpoint, data, metrics, models, optim, parallel, steps, validate
from jaxdl.errors import UserError

_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))


def _changes(old: dict, new: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
  """{dotted key: (old, new)} for every leaf that differs between two config dicts."""
  out = {}
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out.update(_changes(a, b, f"{prefix}{key}."))
    elif a != b:
      out[f"{prefix}{key}"] = (a, b)
  return out


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

  # 1. parallel: one mesh over all devices; batches split over its 'data' axis.
  mesh = parallel.make_mesh()
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

  # 5. state: initialised directly into its replicated layout.
  sample = parallel.global_batch(train_batches.batch(0), mesh)[steps.INPUT_KEYS[config.task]]
  state = jax.jit(functools.partial(steps.create_state, model, tx, seed=config.seed),
                  out_shardings=replicated)(sample)
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  train_step = jax.jit(functools.partial(steps.train_step, objective=objective, tx=tx),
                       out_shardings=(state_sharding, replicated), donate_argnums=0)
  eval_step = jax.jit(functools.partial(steps.eval_step, objective=objective),
                      out_shardings=replicated)

  # 6. restore: the first write to the workdir happens here, after every check has passed.
  # Leaving the `with` (normally or by an exception) waits for the last asynchronous save.
  os.makedirs(workdir, exist_ok=True)
  writer = metrics.Writer(workdir)
  with checkpoint.Checkpoints(workdir, config.keep_checkpoints) as ckpts:
    interval_sums = None  # metric sums since the last train log line
    if ckpts.latest_step() is not None:
      state, loop = ckpts.restore(state)
      train_batches.check_position(int(state.step), loop["data"])
      if loop["interval_sums"] is not None:
        interval_sums = {k: jnp.asarray(v, jnp.float32) for k, v in loop["interval_sums"].items()}
      writer.print(f"resumed from the checkpoint at step {int(state.step)} in {ckpts.directory}")
    start_step = int(state.step)
    if start_step > num_steps:
      raise UserError(f"the checkpoint in {ckpts.directory} is at step {start_step}, past this "
                      f"config's {num_steps} steps (num_epochs or num_train_steps lowered?)")
    writer.drop_after(start_step)  # events the interrupted run logged after its last checkpoint
    config_path, resolved = os.path.join(workdir, "config.json"), config.to_dict()
    if start_step and os.path.exists(config_path):
      for key, (old, new) in _changes(metrics.read_json(config_path), resolved).items():
        writer.print(f"resuming with a changed config: {key}: {old!r} -> {new!r}")
    if writer.enabled:
      metrics.write_json(config_path, resolved)
      for name, text in dataset.files.items():  # e.g. the vocabulary, kept beside checkpoints
        path = os.path.join(workdir, name)
        if not os.path.exists(path):
          metrics.write_text(path, text)

    def save(step):
      sums = None if interval_sums is None else {
          k: np.asarray(v).tolist() for k, v in jax.device_get(interval_sums).items()}
      ckpts.save(step, state, {"data": train_batches.position(step), "interval_sums": sums})

    writer.print(
        f"data: {dataset.source} | {dataset.describe} | "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), batch {config.batch_size} "
        f"({config.batch_size // jax.device_count()} per device) | {num_steps:,} steps "
        f"({steps_per_epoch} per epoch)")

    # 7. loop: a plain for over steps; logging, eval and checkpoints at fixed step boundaries.
    run_start = interval_start = time.time()
    interval_step = start_step
    for step in range(start_step, num_steps):
      batch = parallel.global_batch(train_batches.batch(step), mesh)
      state, step_sums = train_step(state, batch)
      interval_sums = step_sums if interval_sums is None else _add(interval_sums, step_sums)
      done = step + 1
      if step == start_step:
        jax.block_until_ready(state)
        writer.print(f"first step (compilation included) took {time.time() - run_start:.1f}s")

      if done % config.log_every == 0 or done == num_steps:
        train = metrics.summarise(interval_sums)
        seconds = max(time.time() - interval_start, 1e-9)
        unit = "examples" if "accuracy" in train else "tokens"
        per_s = train["count"] / seconds
        eta = (num_steps - done) * seconds / (done - interval_step)
        writer.write("train", done, {
            "loss": train["loss"], "lr": float(lr_at(step)), f"{unit}_per_s": per_s,
            **({"accuracy": train["accuracy"]} if "accuracy" in train else {})})
        acc = f"acc {100 * train['accuracy']:6.2f}% | " if "accuracy" in train else ""
        writer.print(f"step {done:>{len(str(num_steps))}}/{num_steps} | "
                     f"epoch {done / steps_per_epoch:5.2f} | loss {train['loss']:.4f} | {acc}"
                     f"{per_s:,.0f} {unit}/s | ETA {metrics.format_duration(eta)}")
        interval_sums, interval_start, interval_step = None, time.time(), done

      if done % eval_every == 0 and done != num_steps:
        jax.block_until_ready(state)  # queued train steps belong to the train interval's time
        eval_start = time.time()
        split = dataset.eval_split
        result = evaluate(eval_step, state, dataset.evals[split], config.eval_batch_size, mesh)
        writer.write("eval", done, {f"{split}_{k}": v for k, v in result.items()})
        writer.print(f"eval at step {done}: {_brief(split, result)}")
        interval_start += time.time() - eval_start  # train throughput excludes eval time

      if done % config.checkpoint_every == 0 or done == num_steps:
        save(done)

    # 8. finish: final evals (the last step saved the final checkpoint), summary line.
    results = {split: evaluate(eval_step, state, dataset.evals[split], config.eval_batch_size,
                               mesh) for split in dataset.final_splits}
  final = {f"{split}_{k}": v for split, result in results.items() for k, v in result.items()}
  writer.write("final", num_steps, final)
  writer.print(f"final: {' | '.join(_brief(s, r) for s, r in results.items())} | "
               f"{num_steps} steps, {time.time() - run_start:.1f}s | data: {dataset.source}")
  return final
