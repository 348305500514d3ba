"""`jaxdl.load(workdir)`: a trained run, read back for use from Python. predict and sample are
thin layers over it.

  run = jaxdl.load("runs/mnist")     # the newest intact checkpoint; which="best", or a step
  run.predict(["digit.png"])         # the task's predictor: [(label, probability)]
  run.apply(images_BxHxWxC)          # the model's outputs (logits)
  run.variables                      # {'params': ..., **model state}, arrays on one device
  run.nnx_model()                    # an NNX model as its own module, the weights in it

Everything comes from the workdir, local or gs://: the resolved config (config.json), the task,
the model rebuilt as training built it (models.get with the data's model_info, which training
saves as model_info.json; for a run made before that file, the task's optional
model_info(config, workdir) reads it from the task's own files), and one checkpoint's variables:
the params' moving average where the run kept one (as its evaluations used), and the model
state (BatchNorm's statistics). A reader: nothing is written, and no lease is taken.

  run = jaxdl.load("mnist.safetensors")   # a weights file of python -m jaxdl.export: the same
                                         # Run, rebuilt from the file alone (its metadata)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
from types import ModuleType
from typing import Any

from absl import logging
import flax.linen as nn
from flax import nnx
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxdl import checkpoint, digests, files, keepbest, models, resume, tasks, weights
from jaxdl.errors import UserError, first_line

MODEL_INFO = "model_info.json"  # WORKDIR/model_info.json: models.get's kwargs from the data


@dataclasses.dataclass
class Run:
  """What a trained run holds, for a Python user (see the module docstring)."""
  workdir: str                       # the run's directory, or the weights file read
  config: ml_collections.ConfigDict  # config.json, as the run resolved it
  task: ModuleType                   # the task module (jaxdl/tasks/, or the user's)
  model: nn.Module                   # the linen Module (an NNX model wrapped by nnx.bridge)
  variables: dict[str, Any]          # {'params': EMA params, else params, **model state}
  step: int                          # the checkpoint's step
  model_info: dict[str, Any]         # what the model was built with beyond its config
  files: dict[str, str] | None = None  # a weights file's task files; None: in the workdir

  def apply(self, inputs, *, train: bool = False, rng=None):
    """The model's outputs on `inputs` (models.apply, compiled; the new model state of
    train=True is dropped: the run's variables never change)."""
    return self._apply(self.variables, inputs, train=train, rng=rng)[0]

  @functools.cached_property
  def _apply(self):
    # The model closed over, not a static argument: a user's linen module need not be hashable.
    return jax.jit(functools.partial(models.apply, self.model), static_argnames="train")

  def predict(self, inputs: list) -> list:
    """The task's predictor: [(label, probability)] of each input (image paths, sentences)."""
    return self._predictor(inputs)

  @functools.cached_property
  def _predictor(self):
    if not hasattr(self.task, "predictor"):
      raise UserError(f"--workdir={self.workdir}: the run's task {self.config.task!r} has no "
                      f"predictor (run.apply gives the model's outputs)")
    build = lambda **info: models.get(self.config.model, **info)
    if self.files is None:
      return self.task.predictor(self.config, self.workdir, build, self.variables)
    # From a weights file: a predictor reads the task's files (vocab.json) from a directory
    # when it is built, so they are written to a private one for that moment.
    with tempfile.TemporaryDirectory(prefix="jaxdl-files-") as directory:
      for name, text in self.files.items():
        files.write_text(os.path.join(directory, name), text)
      return self.task.predictor(self.config, directory, build, self.variables)

  def nnx_model(self) -> nnx.Module:
    """An NNX model (model.name naming an nnx.Module) as the NNX module itself, its params and
    model state those of `variables`."""
    if not isinstance(self.model, nnx.bridge.ToLinen):
      raise UserError(f"model.name={self.config.model.name!r} is a linen model, not an NNX "
                      f"one: use run.model with run.variables")
    module = _construct(self.model, nnx.Rngs(self.config.seed))
    nnx.update(module, nnx.merge_state(*self.variables.values()))
    return module


def load(workdir: str, which: str | int = "latest") -> Run:
  """The run in `workdir` at one checkpoint: 'latest' (the newest intact one, passing over a
  damaged one as a resume does), 'best' (checkpoint.keep_best's), or a step number. A path
  ending in .safetensors is a weights file (python -m jaxdl.export's), its one checkpoint."""
  if os.fspath(workdir).endswith(weights.SUFFIX):
    return load_file(os.fspath(workdir), which)
  which = _which(which)
  config, task = run_config(workdir)
  info = model_info(config, task, workdir)
  model = models.get(config.model, **info)
  if which == "best":
    which = best_step(workdir, config)
  step, variables = read_variables(workdir, which)
  return Run(workdir, config, task, model, _nnx_keyed(model, variables), step, info)


def load_file(path: str, which: str | int = "latest") -> Run:
  """The run that python -m jaxdl.export wrote to `path` (local or gs://), rebuilt from the
  file alone: its config, model_info and task files are in its metadata."""
  if which != "latest":
    raise UserError(f"which={which!r}: {path} holds the weights of one checkpoint, the one "
                    f"jaxdl.export chose; which= chooses among a workdir's checkpoints")
  variables, meta = weights.read_file(path)
  saved = meta["config"]
  if not isinstance(saved, dict) or not isinstance(saved.get("task"), str) or not isinstance(
      meta["model_info"], dict):
    raise UserError(f"{path}: no jaxdl config and model_info in its metadata (not written by "
                    f"python -m jaxdl.export): read its arrays with jaxdl.weights.read_file")
  for name, text in meta["files"].items():  # Run.predict writes them into a directory
    if name in ("", ".", "..") or os.path.basename(name) != name or not isinstance(text, str):
      raise UserError(f"{path}: its metadata's task file {name!r} is not a file name and text")
  config = ml_collections.ConfigDict(saved)
  task = tasks.get(config.task)
  _add_keys(config, task)
  info = _hashable(meta["model_info"])
  model = models.get(config.model, **info)
  variables = jax.device_put(_nnx_keyed(model, variables), jax.local_devices()[0])
  return Run(path, config, task, model, variables, meta["step"], info, files=meta["files"])


def run_config(workdir: str) -> tuple[ml_collections.ConfigDict, ModuleType]:
  """(config, task module) of the run in `workdir`: its config.json, with the keys added since
  it was made at the values that do what it did (as a resume adopts them)."""
  config, task = tasks.of_run(workdir)
  _add_keys(config, task)
  return config, task


def _add_keys(config, task: ModuleType) -> None:
  """Sets each key that config.json lacks because its run was made before the key existed to
  the value that does what that run did (the task's and the model's RESUME_ADDED, and the
  shared ones: resume.declared), as a resume adopts it: an older run's model then builds."""
  for key, value in resume.declared(task, config.model).added.items():
    *parents, name = key.split(".")
    node = config
    for part in parents:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
    if name not in node:
      node[name] = value


def _which(which: str | int) -> str | int:
  """'latest', 'best' or a step (an int, or its digits as a flag gives them)."""
  if isinstance(which, str) and which.isdigit():
    return int(which)
  if which in ("latest", "best") or type(which) is int and which >= 0:
    return which
  raise UserError(f"which={which!r}: must be 'latest', 'best' or a checkpoint's step number")


def model_info(config, task: ModuleType, workdir: str) -> dict[str, Any]:
  """models.get's kwargs from the data: WORKDIR/model_info.json, else (a run made before that
  file) the task's model_info(config, workdir), which reads the task's files (vocab.json)."""
  path = os.path.join(workdir, MODEL_INFO)
  if files.exists(path):
    return _hashable(files.read_json(path))
  if not hasattr(task, "model_info"):
    raise UserError(f"{path}: not found (runs before jaxdl wrote it), and the run's task "
                    f"{config.task!r} has no model_info(config, workdir) to rebuild its model")
  return task.model_info(config, workdir)


def _hashable(saved: dict[str, Any]) -> dict[str, Any]:
  # A tuple comes back from JSON as a list; a linen module's fields must be hashable.
  return {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}


def saved_model_info(model_info: dict[str, Any]) -> dict[str, Any] | None:
  """model_info as model_info.json holds it (numpy scalars as Python's), or None when a value
  is not JSON (a user task's object): such a run cannot be rebuilt by load."""
  plain = {k: v.item() if isinstance(v, np.generic) else v for k, v in model_info.items()}
  try:
    json.dumps(plain)
  except (TypeError, ValueError):
    return None
  return plain


def _construct(model: nnx.bridge.ToLinen, rngs: nnx.Rngs) -> nnx.Module:
  """The NNX module that models.get wrapped, constructed as ToLinen constructs it."""
  return model.nnx_class(*model.args, **model.kwargs, rngs=rngs)


def _nnx_keyed(model: nn.Module, variables: dict[str, Any]) -> dict[str, Any]:
  """`variables` with an NNX model's own keys: a checkpoint read without a target names a list
  item '0' where NNX's state (and ToLinen's variables) has the int 0, and ToLinen would leave
  such an item's weights as initialised. A linen model's keys are strings already."""
  if not isinstance(model, nnx.bridge.ToLinen):
    return variables
  like = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: _construct(model, nnx.Rngs(0)))))
  return {name: _keyed(tree, like) for name, tree in variables.items()}


def _keyed(tree, like):
  if not isinstance(tree, dict) or not isinstance(like, dict):
    return tree
  names = {str(k): k for k in like}
  return {names.get(k, k): _keyed(v, like.get(names.get(k, k))) for k, v in tree.items()}


def _manager(directory: str) -> ocp.CheckpointManager:
  # lightweight_initialize: no step's metadata or keep_best metrics read at opening, where one
  # garbled metrics file would fail the whole reader; best_step reads the metrics it needs.
  return ocp.CheckpointManager(directory, item_handlers=checkpoint.item_handlers(),
                               options=ocp.CheckpointManagerOptions(
                                   create=False, lightweight_initialize=True))


def _train_first(directory: str, workdir: str) -> UserError:
  return UserError(f"no checkpoint in {directory}; train first: python -m jaxdl.main "
                   f"--config=CONFIG.py --workdir={workdir}")


def _directory(workdir: str) -> str:
  """WORKDIR/checkpoints; UserError when there is none."""
  directory = os.path.join(files.absolute(workdir), "checkpoints")
  if not files.Path(directory).is_dir():
    raise _train_first(directory, workdir)
  return directory


def best_step(workdir: str, config) -> int:
  """The step of the run's checkpoint.keep_best checkpoint: the best of the steps that carry the
  metric (the loop saves it only with a step it judged a new best; keepbest.manager_options)."""
  metric = config.checkpoint.keep_best
  if not metric:
    raise UserError(f"which='best': the run in {workdir} kept no best checkpoint (it was "
                    f"trained without --config.checkpoint.keep_best=METRIC)")
  directory = _directory(workdir)
  damaged = digests.unreadable_metrics(directory)
  for step in damaged:  # a reader changes nothing: passed over, as a damaged newest step is
    logging.warning("the checkpoint at step %d in %s is damaged (its keep_best metrics file is "
                    "not JSON); passing over it", step, directory)
  with _manager(directory) as manager:
    scores = {step: keepbest.score(manager.metrics(step) or {}, metric,
                                   config.checkpoint.best_mode)
              for step in manager.all_steps() if step not in damaged}
  best = max(scores, key=lambda step: (scores[step], -step), default=None)
  if best is None or scores[best] == -np.inf:
    raise UserError(f"which='best': no checkpoint in {directory} carries a best {metric} "
                    f"(no eval yet, or every one was NaN)")
  return best


def read_variables(workdir: str, which: str | int = "latest") -> tuple[int, dict[str, Any]]:
  """(step, variables) of a checkpoint in WORKDIR/checkpoints, arrays on this process's first
  device: {'params': params (their moving average when the run kept one), **model state}.

  'latest' is the newest step that reads: a damaged one (truncated or missing files, or
  failing its checksums) is passed over with a WARNING, as a resume does, but left where it is
  (a reader changes nothing). A step number is that step, damaged or not there: a UserError."""
  directory = _directory(workdir)
  with _manager(directory) as manager:
    steps = sorted(manager.all_steps(), reverse=True)
    if which != "latest":
      if which not in steps:
        raise UserError(f"no checkpoint at step {which} in {directory} (there: "
                        f"{', '.join(map(str, sorted(steps))) or 'none'})")
      steps = [which]
    newest_error = None
    for step in steps:
      try:
        return step, _variables_at(manager, directory, step)
      except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
        error = f"the checkpoint at step {step} in {directory} cannot be read ({first_line(e)})"
        if digests.damage_evidence(e) is None or which != "latest":
          raise UserError(error) from None
        newest_error = newest_error or error
        logging.warning("%s; trying an older one", error)
  if newest_error:
    raise UserError(f"{newest_error}, nor can any older one")
  raise _train_first(directory, workdir)


def _variables_at(manager: ocp.CheckpointManager, directory: str, step: int) -> dict[str, Any]:
  """The step's variables, after its checksums."""
  mismatch = digests.check(os.path.join(directory, str(step)))
  if mismatch:
    raise digests.DamagedFiles(f"checksum: {mismatch}")
  # Every array onto this process's first device. Without a target Orbax restores the saving
  # run's shardings, and refuses when its devices are not all here (a run on 2 CPU devices,
  # like the :nanogpt_cpu preset's, or on a pod).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        manager.item_metadata(step)["state"])
  state = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target)))["state"]  # a dict: restored without a target
  params = state["params"] if state.get("ema_params") is None else state["ema_params"]
  return {"params": params, **(state.get("model_state") or {})}
