"""Orbax checkpoints under WORKDIR/checkpoints, and everything that keeps them trustworthy.

Each checkpoint step holds two items: 'state' (the TrainState pytree, restored with the shardings
of the state it replaces) and 'loop' (JSON: the data position and the partial metric sums of the
current log interval), so a resumed run logs exactly what an uninterrupted one would.
With checkpoint.keep_best, the best eval's step is kept beside the newest ones (keepbest.py).
Saves are asynchronous: device arrays are copied to host before `save` returns, so the next
(donating) train step may run while the files are written. Orbax writes each save into a
temporary directory and renames it when complete, so a kill mid-save never leaves a step
directory that looks finished. Reading a run's checkpoint for use (predict, sample, jaxdl.load)
is runs.py's: a reader that never moves or writes anything.

Faults handled here:
  - a kill mid-save leaves Orbax's `<step>.orbax-checkpoint-tmp*` directory: it never was a
    checkpoint; it is removed (with a WARNING) when the next run opens the directory.
  - a damaged step directory (truncated or missing files, or files that fail the checksums
    recorded once the save committed, digests.py): `restore_latest` moves it aside to
    `checkpoints/damaged-<step>` (kept for inspection, never deleted) with a WARNING, and
    falls back to the next newest intact checkpoint. Only evidence of damage does that
    (`digests.damage_evidence`); any other restore error (out of memory, permission, transient
    I/O) is a RestoreError that changes nothing.
  - a checkpoint whose arrays do not fit the config's state (another model or optimizer):
    refused with a UserError, never moved or touched.
  - a workdir whose config.json differs from this run's in a key that changes what the
    checkpoint means: refused by resume.check_resume_config, which lists the keys.
  - a multi-process restore: process 0's list of steps, and one outcome per step for all
    processes (`_agree`), so they restore the same step and move the same ones aside.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from jaxdl import digests, files, keepbest, parallel
from jaxdl.errors import UserError, environment_failure, first_line, os_cause

_TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax's suffix for a save still being written


def has_checkpoints(workdir: str) -> bool:
  """Whether workdir holds a checkpoint step to resume (damaged or not)."""
  return bool(digests.step_names(os.path.join(workdir, "checkpoints")))


def _layout(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'params/Conv_0/kernel': (shape, dtype)} for a pytree of arrays or of Orbax metadata."""
  def name(entry):
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))[0]
  return {"/".join(name(e) for e in path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in leaves}


class SaveError(UserError):
  """A checkpoint could not be written (a full disk, a permission, a quota): the run stops at
  once, its older checkpoints intact. jaxdl.main exits without waiting for Orbax's threads,
  which may wait out long timeouts on the failed write."""


class RestoreError(UserError):
  """A checkpoint could not be restored for a reason other than damage (out of memory,
  permission, a transient I/O or network error): one line, exit 1, the workdir untouched."""


# TensorStore's status codes for data that is absent or cut short (a missing chunk or manifest,
# a truncated file, a zstd stream that ends early). Any other status (UNAVAILABLE,
# PERMISSION_DENIED, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNKNOWN, ...) is not evidence.
# The outcomes of reading a checkpoint step, gravest last (see _agree).
_OUTCOMES = ("ok", "damaged", "refused", "error")


def _agree(outcome: str, detail: str) -> tuple[str, str]:
  """The outcome every process acts on: the gravest any process had (an error over a refusal
  over damage over success), with that process's words. Damage that only one process reads
  (the shards it restores) so moves the step aside for all, and an error on one stops all."""
  if jax.process_count() == 1:
    return outcome, detail
  ranks = np.asarray(multihost_utils.process_allgather(np.int32(_OUTCOMES.index(outcome))))
  source = int(np.argmax(ranks))
  detail = parallel.broadcast_text(detail, source)
  if source != 0 and ranks[source] > 0:
    detail = f"process {source}: {detail}"
  return _OUTCOMES[int(ranks[source])], detail


def _as_saved(abstract: Any, saved: Any) -> tuple[Any, Callable[[Any], Any]]:
  """(the restore target, how to make the restored tree the state again) for a checkpoint
  that may predate a field of the state: a field that is None in `abstract` (no arrays: the
  model state of a model without one) and absent from the saved tree (written before the
  field existed) is left out of the target, and set back to None after. Orbax refuses a target
  whose tree differs from the saved one, even by an empty field."""
  if not dataclasses.is_dataclass(abstract) or not hasattr(saved, "keys"):
    return abstract, lambda restored: restored
  fields = [f.name for f in dataclasses.fields(abstract)]
  absent = [name for name in fields if getattr(abstract, name) is None and name not in saved]
  if not absent:
    return abstract, lambda restored: restored
  target = {name: getattr(abstract, name) for name in fields if name not in absent}
  return target, lambda restored: abstract.replace(**restored)


def item_handlers() -> dict[str, ocp.CheckpointHandler]:
  """A checkpoint's items: the train state's arrays and the loop's JSON (data position, sums).
  A manager that reads only the state still names both: Orbax warns about an item it has no
  handler for whenever it reads the step's metadata."""
  return {"state": ocp.StandardCheckpointHandler(), "loop": ocp.JsonCheckpointHandler()}


def _set_aside(directory: str, step: int, why: str) -> None:
  """Renames the damaged `step` to damaged-<step> (never deletes it) and warns, naming it."""
  path = os.path.join(directory, str(step))
  target = ""
  if jax.process_index() == 0:  # the directory is shared: one process names and renames
    target = os.path.join(directory, f"damaged-{step}")
    n = 1
    while files.exists(target):
      n += 1
      target = os.path.join(directory, f"damaged-{step}-{n}")
    files.Path(path).rename(target)  # etils.epath: os.rename here, the backend's move on gs://
  # Process 0 sends the name only once it has renamed, so the others list the directory after.
  target = parallel.broadcast_text(target)
  logging.warning("checkpoint %s is damaged (%s); moved it to %s, falling back to an older "
                  "checkpoint", path, why, target)


class Checkpoints:
  """Save every N steps (the loop decides when), keep the last K (and, with `keep_best`, the
  best eval's step), restore the newest intact."""

  def __init__(self, workdir: str, keep: int, on_commit: Callable[[int], None] | None = None,
               keep_best: str = "", best_mode: str = "min"):
    root = files.absolute(workdir)
    self.directory = os.path.join(root, "checkpoints")
    directory = files.Path(self.directory)
    unfinished = sorted(p.name for p in directory.iterdir() if _TMP_MARK in p.name
                        ) if directory.is_dir() else []
    if unfinished and jax.process_index() == 0:
      logging.warning("removing unfinished save(s) of a killed run in %s: %s", self.directory,
                      ", ".join(unfinished))
    if keep_best:  # the manager below reads every step's metrics: damage there is set aside
      damaged = json.loads(parallel.broadcast_text(json.dumps(
          digests.unreadable_metrics(self.directory) if jax.process_index() == 0 else [])))
      for step in damaged:
        _set_aside(self.directory, step, "its keep_best metrics file is not JSON")
    keeping = (keepbest.manager_options(keep, keep_best, best_mode) if keep_best
               else {"max_to_keep": keep})
    self._tracks_best = bool(keep_best)
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True, **keeping)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=item_handlers())
    self._undigested: list[int] = []  # steps saved, their digest still to write (see wait)
    self._broken = False  # a save failed: nothing more is written or waited for
    self._on_commit = on_commit  # called on process 0 with each step once it is on disk
    # Restores go through a reader of this process alone: Orbax's restore ends in a barrier of
    # every process, and a process whose restore raised (damage that only its shards show)
    # never reaches it, so the others would wait there for ever. Each process reads its own
    # shards anyway; `_agree` then makes the one decision, with collectives of jaxdl's own.
    self.reader = self.manager
    if jax.process_count() > 1:
      alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                                 active_processes={jax.process_index()})
      self.reader = ocp.CheckpointManager(
          self.directory, item_handlers=item_handlers(),
          options=ocp.CheckpointManagerOptions(create=False,
                                               multiprocessing_options=alone))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore_latest(self, like_state: Any) -> tuple[Any, dict] | None:
    """(state, loop) of the newest intact checkpoint, laid out like `like_state`; None if none.

    A damaged checkpoint is moved aside with a WARNING and the next older one is tried. One whose
    arrays have other names, shapes or dtypes than like_state's is refused (UserError); any
    other failure is a RestoreError. On a multi-process job every process acts on one decision:
    process 0's list of steps, and for each step the gravest outcome any process had (see
    `_agree`), so no process restores a step that another moved aside.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like_state)
    wanted = _layout(abstract)
    steps = json.loads(parallel.broadcast_text(
        json.dumps(sorted(self.manager.all_steps(), reverse=True))))
    for step in steps:
      (outcome, detail), restored = self._read(step, abstract, wanted)
      if outcome == "ok":
        return restored["state"], restored["loop"]
      if outcome == "damaged":
        self._move_aside(step, detail)
        continue
      raise (UserError if outcome == "refused" else RestoreError)(detail)
    return None

  def restore(self, step: int, like_state: Any) -> tuple[Any, dict]:
    """(state, loop) of checkpoint `step` (the best one, for the final eval of an early stop),
    with restore_latest's checks. There is no other copy of that step to fall back on: damage
    moves it aside and is a UserError, as is a step that is not there."""
    self.wait()  # the step may be the save in flight
    if self.reader is not self.manager:
      self.reader.reload()  # the reader lists the steps of its opening
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like_state)
    if step not in self.manager.all_steps():
      raise UserError(f"the checkpoint at step {step} is not in {self.directory} (deleted by "
                      f"hand?)")
    (outcome, detail), restored = self._read(step, abstract, _layout(abstract))
    if outcome == "ok":
      return restored["state"], restored["loop"]
    if outcome == "damaged":
      self._move_aside(step, detail)
      raise UserError(f"the checkpoint at step {step} is damaged ({detail}) and was moved aside")
    raise (UserError if outcome == "refused" else RestoreError)(detail)

  def _read(self, step: int, abstract: Any, wanted: dict) -> tuple[tuple[str, str], Any]:
    """((outcome, what), the restored items or None) of one step: its digest, its array
    metadata, then its data, each outcome agreed by every process (_agree)."""
    outcome, detail = _agree(*self._check_digest(step))
    if outcome == "ok":
      outcome, detail = _agree(*self._check_metadata(step, wanted))
    if outcome != "ok":
      return (outcome, detail), None
    (outcome, detail), restored = self._restore_step(step, abstract)
    return _agree(outcome, detail), restored

  def _check_digest(self, step: int) -> tuple[str, str]:
    """('ok' | 'damaged' | 'error', what) for the step's files against their digest. Every
    process reads every file: on a pod that is each host's share of the restore again, once."""
    try:
      mismatch = digests.check(os.path.join(self.directory, str(step)))
    except Exception as e:  # pylint: disable=broad-except  (a permission or network error)
      return self._classify(step, e, "unreadable files")
    return ("damaged", f"checksum: {mismatch}") if mismatch else ("ok", "")

  def _check_metadata(self, step: int, wanted: dict) -> tuple[str, str]:
    """('ok' | 'damaged' | 'refused' | 'error', what) for the step's array metadata."""
    try:
      saved = _layout(self.reader.item_metadata(step)["state"])
    except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
      # KeyError: the step has no 'state' item at all (a half-copied directory).
      return self._classify(step, e, "unreadable metadata", isinstance(e, KeyError))
    if not saved:  # Orbax reads a missing metadata file as an empty tree
      return "damaged", "no array metadata"
    if saved != wanted:
      return "refused", self._mismatch(step, saved, wanted)
    return "ok", ""

  def _restore_step(self, step: int, abstract: Any) -> tuple[tuple[str, str], Any]:
    """((outcome, what), the restored items or None) for one step's arrays and loop state."""
    try:
      target, rebuild = _as_saved(abstract, self.reader.item_metadata(step)["state"])
      restored = self.reader.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                        loop=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
      return self._classify(step, e, "unreadable data"), None
    if not isinstance(restored["loop"], dict) or "data" not in restored["loop"]:
      return ("damaged", "the loop state is missing or empty"), None
    return ("ok", ""), {**restored, "state": rebuild(restored["state"])}

  def _mismatch(self, step: int, saved: dict, wanted: dict) -> str:
    """One line naming the first arrays that differ between a checkpoint and the config."""
    diffs = [f"{k}: {saved.get(k, 'absent')} vs {wanted.get(k, 'absent')}"
             for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    return (f"the checkpoint at step {step} in {self.directory} does not fit this config's model "
            f"or optimizer ({len(diffs)} arrays differ, e.g. {'; '.join(diffs[:2])}); use a "
            f"new --workdir")

  def _classify(self, step: int, error: BaseException, what: str,
                damaged: bool = False) -> tuple[str, str]:
    """('damaged', evidence) when `error` shows damage; otherwise ('error', the RestoreError's
    line): an out-of-memory, a permission or a transient I/O error says nothing about the
    files, and falling back past it (to step 0 at worst, which empties metrics.jsonl) would
    lose the run's history."""
    evidence = first_line(error) if damaged else digests.damage_evidence(error)
    if evidence is not None:
      return "damaged", f"{what}: {evidence}"
    cause = (f"cannot restore the checkpoint at step {step} in {self.directory} "
             f"({type(error).__name__}: {first_line(error)})")
    if environment_failure(error) is not None:
      return "error", (f"{cause}; this is not damage, so nothing in the workdir was changed: "
                       f"fix the cause and re-run")
    return "error", (f"{cause}; its files look whole and this is no error of the environment, "
                     f"so nothing in the workdir was changed: likely a bug of jaxdl or Orbax; "
                     f"please report it with this line")

  def _move_aside(self, step: int, why: str) -> None:
    """Renames a damaged step to damaged-<step> (never deletes it) and warns, naming it."""
    _set_aside(self.directory, step, why)
    self.manager.reload()
    if self.reader is not self.manager:
      self.reader.reload()

  def save(self, step: int, state: Any, loop: dict, best: dict | None = None) -> None:
    """Saves `step` asynchronously. With keep_best, `best` is {metric: value} for a step that is
    the best eval so far, which rotation then keeps; None for any other step."""
    self.wait()  # Orbax's save would wait for the previous one here anyway
    self._undigested.append(step)
    # With keep_best every step carries metrics ({} ranks last), or Orbax warns at each save.
    metrics = (best or {}) if self._tracks_best else None
    try:
      self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      loop=ocp.args.JsonSave(loop)),
                        metrics=metrics, force=True)
    except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
      self._failed(e)

  def wait(self) -> None:
    """Blocks until every asynchronous save is on disk, then records the digest of each
    (process 0; the directory is shared): only a committed step's files are final. A save that
    failed is a SaveError naming the step, the cause and the last good checkpoint."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
      self._failed(e)
    if jax.process_index() == 0:
      for step in self._undigested:
        path = os.path.join(self.directory, str(step))
        what = f"recording the checksums of the checkpoint at step {step} in {self.directory}"
        try:
          if files.exists(path):  # not already removed by keep_checkpoints
            digests.write(path)
            if self._on_commit:
              what = f"recording the checkpoint at step {step} in the run's record (run.json)"
              self._on_commit(step)
        except Exception as e:  # pylint: disable=broad-except
          if not isinstance(e, OSError) and environment_failure(e) is None:
            raise  # not the storage's: a bug
          self._failed(e, committed=what)  # the step is on disk; only what follows it failed
    self._undigested = []

  def _failed(self, error: BaseException, committed: str = "") -> None:
    """Raises the SaveError of `error`: the save failed, or, when `committed` says what, a
    write that follows a committed save."""
    step = self._undigested[-1] if self._undigested else None
    self._undigested, self._broken = [], True
    try:
      kept = sorted(int(n) for n in digests.step_names(self.directory)
                    if committed or int(n) != step)
    except OSError:
      kept = []
    last = f"step {kept[-1]}, left intact" if kept else "none yet"
    what = committed or f"saving the checkpoint at step {step} in {self.directory}"
    raise SaveError(f"{what} failed ({os_cause(error)}); the run stopped "
                    f"there; the last good checkpoint: {last}") from error

  def close(self) -> None:
    """Waits for the last asynchronous save to be committed, and records its digest. After a
    failed save there is nothing to wait for: Orbax's threads may hang on the failed write."""
    if self._broken:
      return
    self.wait()
    self.manager.close()
    if self.reader is not self.manager:
      self.reader.close()

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, exc_type, *exc) -> None:
    try:
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      if exc_type is None:
        raise
      # The error already on its way out says what went wrong; this one only followed from it.
      logging.info("while stopping after an error, closing the checkpoints failed too: %s",
                   first_line(e))
