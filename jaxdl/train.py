"""The training loop, top to bottom: task, checks, mesh, data, model, optimizer, state, restore,
loop, finish.

Nothing is written to the workdir until the config, the devices and the data have all passed
their checks, so a mistake leaves no trace. What the task means (its data, loss and metrics)
comes from its module (jaxdl/tasks/); how the steps are compiled and fed, from runner.Runner.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl import (checkpoint, files, history, initfrom, keepbest, lease, metrics, models,
                   optim, parallel, profiler, resume, runner as runners, runrecord, runs, steps,
                   stopping, tasks, validate, weights)
from jaxdl.errors import UserError


@contextlib.contextmanager
def _closed_on_error(writer: metrics.Writer):
  """Closes `writer` when an exception leaves the run (divergence, a second Ctrl-C, a failed
  restore): its queued TensorBoard events reach the file, and no tensorboardX thread is left
  for interpreter exit, where Python 3.12 cannot stop it and prints a traceback."""
  try:
    yield
  except BaseException:
    try:
      writer.close()
    except Exception as e:  # pylint: disable=broad-except
      # A full disk or a refusing gs:// server fails the last flush too; the error on its way
      # out says why.
      logging.info("closing the event files after an error failed too: %s", e)
    raise


@contextlib.contextmanager
def _recorded_on_error(workdir: str, last_step):
  """A run that a UserError stops in the loop (a diverged loss) closes its run.json segment
  with the error and `last_step()`, so that its record does not read as a killed process."""
  try:
    yield
  except UserError as e:
    try:
      runrecord.end(workdir, last_step(), None, error=str(e))
    except OSError as write_error:  # a full disk: the error on its way out says why
      logging.info("run.json could not record the error: %s", write_error)
    raise


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


def _start_line(config, dataset, state, num_steps: int) -> str:
  """'data: ... | model: 1,199,882 params | 8 cpu device(s), batch 16 (2 per device) |
  jit+fsdp, state 1.28 of 10.1 MB per device | 1,500 steps (100 per epoch)'."""
  mode = config.parallel.mode + ("+fsdp" if config.parallel.fsdp else "")
  total = sum(x.nbytes for x in jax.tree.leaves(state)) / 1e6
  per_device = parallel.sharded_bytes_per_device(state) / 1e6
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
  return (f"data: {dataset.source} | {dataset.describe} | model: {num_params:,} params | "
          f"{jax.device_count()} "
          f"{jax.devices()[0].platform} device(s){processes}, batch {config.batch_size} "
          f"({config.batch_size // jax.device_count()} per device) | {mode}, state "
          f"{per_device:.3g} of {total:.3g} MB per device | {num_steps:,} steps "
          f"({dataset.train.steps_per_epoch} per epoch)")


def _restore(ckpts, runner, dataset, writer, workdir: str, resolved: dict, config_changes: dict,
             adopted: dict, num_steps: int, resuming: bool, source: initfrom.Source | None):
  """The newest intact checkpoint's (state, interval sums, keep_best bookkeeping or None), or a
  fresh state (from init_from's `source` weights, if any); then the first writes to the
  workdir: metrics trimmed to the restored step, config.json, model_info.json, the task's files.

  The checkpoint is restored into the abstract state (shapes and layout only), so a resume
  never holds two copies of the state; a fresh state is made only when there is none to
  restore. Trimming metrics.jsonl waits until the restore has succeeded (a RestoreError leaves
  every file as it was)."""
  interval_sums = None  # metric sums since the last train log line
  best = None  # the keep_best bookkeeping the checkpoint holds, if any
  restored = ckpts.restore_latest(runner.abstract_state)  # None: no intact checkpoint
  if restored is None and resuming:  # every checkpoint was damaged, and is now moved aside
    raise UserError(history.refusal(workdir, history.record_evidence(workdir)))
  if restored is None:
    state = runner.init_state(source.loaded if source else None)
    if source:
      writer.print(source.line())
  else:
    state, loop = restored
    dataset.train.check_position(int(state.step), loop["data"])
    if loop["interval_sums"] is not None:
      interval_sums = {k: jnp.asarray(v, jnp.float32) for k, v in loop["interval_sums"].items()}
    best = loop.get("best")
    writer.print(f"resumed from the checkpoint at step {int(state.step)} in {ckpts.directory}")
    if resolved["init_from"]:  # a fresh run's start, done; this run's own weights win
      writer.print(f"config.init_from={resolved['init_from']!r} ignored: the run resumes from "
                   f"its own checkpoint")
  start_step = int(state.step)
  if start_step > num_steps:
    raise UserError(f"the checkpoint in {ckpts.directory} is at step {start_step}, past this "
                    f"config's {num_steps} steps (num_epochs or num_train_steps lowered?)")
  writer.drop_after(start_step)  # events the interrupted run logged after its last checkpoint
  if start_step:
    for key, (old, new) in config_changes.items():
      writer.print(f"resuming with a changed config: {key}: {old!r} -> {new!r}")
    for key, (old, new) in adopted.items():
      writer.print(f"resuming with {key}={new!r}, not {old!r}: this workdir's run was made "
                   f"before the key existed, and {new!r} does what it did")
  if writer.enabled:
    files.write_json(os.path.join(workdir, "config.json"), resolved)
    # What the model was built with beyond its config: jaxdl.load rebuilds any task's model.
    info = runs.saved_model_info(dataset.model_info)
    if info is None:
      writer.print(f"WARNING: the data's model_info is not JSON, so {runs.MODEL_INFO} is not "
                   f"written and jaxdl.load cannot rebuild this run's model")
    else:
      files.write_json(os.path.join(workdir, runs.MODEL_INFO), info)
    for name, text in dataset.files.items():  # e.g. the vocabulary, kept beside checkpoints
      path = os.path.join(workdir, name)
      if not files.exists(path) or restored is None:  # a fresh run's replace stale ones
        files.write_text(path, text)
  return state, interval_sums, best


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       restart: bool = False,
                       stop_timeout: float = stopping.TIMEOUT) -> dict[str, float]:
  """Trains config's experiment in workdir, resuming from its latest checkpoint if any; with
  `restart`, keeps what the workdir holds in WORKDIR/previous-<time>/ and starts afresh.
  A SIGTERM or SIGINT saves the step at hand and raises stopping.Stopped; a run that has not
  stopped `stop_timeout` seconds after the signal ends the process (stopping.py).

  Returns the final eval metrics, f"{split}_{name}" for each of the dataset's final splits
  (MNIST: 'test_loss', 'test_accuracy', 'test_count'); with checkpoint.keep_best, also
  'best_step' and f"best_{keep_best}" (the best eval's).
  """
  # The signals' handlers and deadline hold for the whole run, its exit included.
  with stopping.StopSignals(stop_timeout, jax.process_count() > 1) as signals:
    return _train(config, workdir, restart, signals)


def _train(config: ml_collections.ConfigDict, workdir: str, restart: bool,
           signals: stopping.StopSignals) -> dict[str, float]:
  """train_and_evaluate's steps, with its signals."""
  # 0. task and 1. checks: every value rule, before any work; the workdir is only read.
  task = tasks.get(config.task)
  validate.validate(config, task, workdir)
  # The keys that may change on resume, and those added since, as the task and model declare.
  keys = resume.declared(task, config.model)
  # A workdir from before a key existed resumes with the value that does what its run did.
  config = copy.deepcopy(config)  # the caller's config stays as it was given
  # A workdir with no checkpoint to resume but a run's record is refused (--restart keeps the
  # record aside); a run killed before its first checkpoint just starts again.
  resuming = not restart and checkpoint.has_checkpoints(workdir)
  if not restart and not resuming:
    history.check_record(workdir)
  saved = resume.saved_config(workdir) if resuming else None
  adopted = resume.adopt_added_keys(config, saved, keys)
  resolved = config.to_dict()
  config_changes = resume.check_resume_config(workdir, saved, resolved, keys)
  skip_nonfinite = config.train.skip_nonfinite

  # 2. parallel: one (data, model) mesh over all devices; batches split over its 'data' axis.
  mesh = parallel.make_mesh(config.parallel.mesh_shape)
  parallel.check_batch("batch_size", config.batch_size, mesh)
  parallel.check_batch("eval_batch_size", config.eval_batch_size, mesh)
  parallel.check_microbatch(config.batch_size, config.train.grad_accum_steps, mesh)

  # 3. data: train batches are a function of (seed, step); eval splits are whole in memory.
  # The files a run keeps beside its checkpoints (a vocabulary) are reused only when there are
  # checkpoints to resume: a run killed before its first one starts afresh, on today's data.
  dataset = task.load(config, workdir if resuming else None)
  steps_per_epoch = dataset.train.steps_per_epoch
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else max(config.num_epochs * steps_per_epoch, config.min_train_steps))
  eval_every = config.eval_every or steps_per_epoch

  # 4. model, 5. optimizer, 6. the state's layout on the mesh, and the compiled steps.
  model_reads: set[str] = set()  # the model block's keys a user's model reads
  model = models.get(config.model, reads=model_reads, **dataset.model_info)
  tx = optim.make(config.opt, num_steps)
  lr_at = optim.schedule(config.opt, num_steps)
  runner = runners.Runner(config, model, task.objective(config, model), tx, dataset.train, mesh,
                          task.INPUT, eval_every)
  # The runner has built the model and traced its init (train=False); a key it reads only in
  # training is read once a train step is traced too.
  unread = models.unread_keys(config.model, model_reads, getattr(task, "MODEL_KEYS", ()))
  if unread:
    runner.trace_train_step()
    unread = models.unread_keys(config.model, model_reads, getattr(task, "MODEL_KEYS", ()))
  if unread:
    runner.notes.append(
        f"WARNING: {config.model.name} never reads config.model's {', '.join(unread)}: "
        f"{'it does' if len(unread) == 1 else 'they do'} nothing in this run (a builder taking "
        f"`dtype` / `param_dtype` gets the precision policy; jaxdl/models/__init__.py)")
  # init_from: the source's weights, matched against this model's before anything is written.
  # A resume ignores it (_restore says so), so its source need not be there any more.
  source = None
  if config.init_from and not resuming:
    abstract = runner.abstract_state
    source = initfrom.read(config, weights.flatten(
        steps.variables(abstract.params, abstract.model_state)))
  keep_best, patience = config.checkpoint.keep_best, config.early_stopping.patience
  if keep_best:  # a metric of the eval events, known once the data and the model are
    names = keepbest.eval_metric_names(task, runner, dataset, config.eval_batch_size)
    if names is not None:
      validate.check_best_metric(keep_best, names)

  def evaluate(split: str) -> dict[str, Any]:
    return task.summarise(runner.evaluate(state, dataset.evals[split], config.eval_batch_size))

  # 7. restore: the first write to the workdir happens here, after every check has passed.
  # Leaving the `with` (normally or by an exception) waits for the last asynchronous save.
  files.make_dirs(workdir)
  writer = metrics.Writer(workdir)
  # From here SIGTERM/SIGINT only set a flag (stopping.StopSignals), read after each step: the
  # step is saved, then the run stops. (Before, on one process, they act at once.)
  # The lease comes first: a second run on this workdir stops there, having changed nothing.
  signals.save_on_signal()
  with (lease.held(workdir, restart, resuming, resolved) as held,
        _closed_on_error(writer),
        checkpoint.Checkpoints(workdir, config.keep_checkpoints,
                               on_commit=lambda step: runrecord.saved(workdir, step),
                               keep_best=keep_best,
                               best_mode=config.checkpoint.best_mode) as ckpts,
        contextlib.ExitStack() as on_error):
    if held.kept:
      writer.print(f"--restart: kept what {workdir} held in {held.kept}; starting afresh")
    state, interval_sums, best = _restore(ckpts, runner, dataset, writer, workdir, resolved,
                                          config_changes, adopted, num_steps, resuming, source)
    best = (best or dict(keepbest.NONE_YET)) if keep_best else None
    start_step = step = int(state.step)
    # run.json: a segment per start; a fresh run's names its init_from source
    runrecord.begin(workdir, resolved, start_step, num_steps,
                    init_from=source.record() if source and not start_step else None)
    on_error.enter_context(_recorded_on_error(workdir, lambda: step))
    if hasattr(dataset.train, "close"):  # a streaming iterator's reader thread or workers
      on_error.enter_context(contextlib.closing(dataset.train))
    writer.print(_start_line(config, dataset, state, num_steps))
    for note in runner.notes:  # where the runner does otherwise than the config asked
      writer.print(note)

    # 8. loop: over dispatches of k fused steps (k = 1: one step each); logging, eval and
    # checkpoints at fixed step boundaries, each of which ends a dispatch.
    profile = profiler.Profiler(config.profile_steps, workdir, writer.print)
    # A bar on a terminal, else lines; each number as the task's FORMATS say.
    writer.start_progress(start_step, num_steps, steps_per_epoch, getattr(task, "FORMATS", {}))
    run_start = interval_start = time.time()
    # Throughput leaves out the first dispatch, which compiles the step: the first interval's
    # rate counts only what ran after it, over the time since it finished.
    uncounted = 0.0
    # An early-stopped run re-run on its workdir stops again at once: its checkpoint says so.
    stopped_early = keepbest.patience_out(best, patience) and step < num_steps
    at_end = {}  # with keep_best, the last step's eval, which the final evals reuse
    while step < num_steps and not stopped_early:
      profile.at(step, state)  # starts/stops the trace at config.profile_steps
      k = runner.dispatch(step, num_steps)
      state, interval_sums = runner.run(state, interval_sums, step, k)
      done = step + k
      writer.advance(done)
      if step == start_step:
        jax.block_until_ready(state)
        interval_start = time.time()
        uncounted = float(interval_sums["count"])
        writer.print(f"first {'step' if k == 1 else f'{k} steps'} (compilation included) "
                     f"took {interval_start - run_start:.1f}s")
      step = done

      if done % config.log_every == 0 or done == num_steps:
        _check_finite(interval_sums, skip_nonfinite, ckpts)
        train = task.summarise(interval_sums)
        counted = train["count"] - uncounted
        # An interval that held only the compiling dispatch (log_every = its steps) has no rate.
        rate = {f"{task.UNIT}_per_s": counted / max(time.time() - interval_start, 1e-9)
                } if counted > 0 else {}
        # The lr of the last update applied: the schedule's own count, which skipped updates
        # (train.skip_nonfinite) did not advance; without skips it is done - 1.
        applied = optim.applied_updates(state.opt_state) if skip_nonfinite else None
        lr_step = done - 1 if applied is None else max(applied - 1, 0)
        # One event: a metrics.jsonl line, TensorBoard scalars, the progress bar or line.
        writer.write("train", done, {
            "loss": train["loss"], "lr": float(lr_at(lr_step)), **rate,
            **{name: train[name] for name in task.TRAIN_METRICS},
            **({"skipped_nonfinite": int(interval_sums["nonfinite"])} if skip_nonfinite else {})})
        interval_sums, interval_start, uncounted = None, time.time(), 0.0

      # With keep_best the last step is evaluated too: the final state may be the best.
      evaluated = ((done % eval_every == 0 and done != num_steps)
                   or (bool(keep_best) and done == num_steps))
      if evaluated:
        _check_finite(interval_sums, skip_nonfinite, ckpts)
        jax.block_until_ready(state)  # queued train steps belong to the train interval's time
        eval_start = time.time()
        split = dataset.eval_split
        result = evaluate(split)
        named = {f"{split}_{k}": v for k, v in result.items()}
        writer.write("eval", done, named)
        writer.print(f"eval at step {done}: {task.brief(split, result)}")
        interval_start += time.time() - eval_start  # train throughput excludes eval time
        if keep_best:
          validate.check_best_metric(keep_best, sorted(named))  # when the start could not
          best = keepbest.after_eval(best, done, named[keep_best], config.checkpoint.best_mode,
                                     result)
          at_end = {split: result} if done == num_steps else {}

      # SIGTERM or SIGINT arrived: save this step, then exit
      stop = signals.requested(ckpts.manager)
      # With keep_best every eval is saved, so that the best one is on disk to keep.
      if (stop or done % config.checkpoint_every == 0 or done == num_steps
          or evaluated and keep_best):
        _check_finite(interval_sums, skip_nonfinite, ckpts)  # never save a diverged state
        sums = None if interval_sums is None else {
            k: np.asarray(v).tolist() for k, v in jax.device_get(interval_sums).items()}
        loop = {"data": dataset.train.position(done), "interval_sums": sums,
                **({"best": best} if keep_best else {})}
        ckpts.save(done, state, loop, best={keep_best: best["value"]}
                   if keep_best and best["step"] == done else None)
      if stop:
        ckpts.wait()
        signum = signals.signum or signal.SIGTERM  # None: a preemption notice, or another process's signal
        writer.print(f"{signal.Signals(signum).name}: saved the checkpoint at step {done} and "
                     f"waited for it to reach the disk; re-run the same command to resume")
        runrecord.end(workdir, done, None)  # a clean stop: end time, no final metrics
        raise stopping.Stopped(signum, done)  # _closed_on_error closes the writer
      stopped_early = keepbest.patience_out(best, patience) and done < num_steps

    # 9. finish: final evals (the last step saved the final checkpoint), summary line. An early
    # stop's are of the best checkpoint, restored into the state.
    profile.stop(state, num_steps)
    if stopped_early:
      writer.print(f"early stop at step {step}: {keep_best} has not improved on step "
                   f"{best['step']}'s {best['value']:.4g} for {best['evals_since']} evals "
                   f"(early_stopping.patience={patience}); the final evals are of step "
                   f"{best['step']}'s checkpoint")
      state = None  # freed before the best is read: never two copies of the state at once
      try:
        state, _ = ckpts.restore(best["step"], runner.abstract_state)
      except UserError as e:  # damaged (now moved aside) or deleted: the stop step's instead
        writer.print(f"WARNING: {e}; the final evals are of the newest checkpoint instead")
        state, _ = ckpts.restore_latest(runner.abstract_state)
    results = {split: at_end.get(split) or evaluate(split) for split in dataset.final_splits}
  final = {f"{split}_{k}": v for split, result in results.items() for k, v in result.items()}
  best_text = ""
  if keep_best and best["step"] is not None:  # None: every eval was NaN
    final.update({"best_step": best["step"], f"best_{keep_best}": best["value"]})
    best_text = f" | best: step {best['step']} {keep_best} {best['value']:.4g}"
    if best.get("result"):  # the best eval's metrics (a checkpoint of an older jaxdl lacks them)
      best_text += f" ({task.brief(dataset.eval_split, best['result'])})"
  length = f"{step} of {num_steps} steps (stopped early)" if stopped_early else f"{step} steps"
  writer.write("final", step, final)
  writer.print(f"final: {' | '.join(task.brief(s, r) for s, r in results.items())}"
               f"{best_text} | {length}, {time.time() - run_start:.1f}s | data: {dataset.source}")
  runrecord.end(workdir, step, final)
  writer.close()
  return final
