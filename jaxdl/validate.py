"""Config checks that run after the command-line overrides and before any work or any write.

Types and unknown keys are already enforced by the locked ConfigDict and config_flags; this adds
the value rules, each where it belongs: the task checks its own keys (task.check), the model
family its block (models.check), the optimizer config.opt (optim.check), and this file the
blocks every experiment shares. Each failure is a `UserError` whose one line names the key and
the value (`errors.require`). Checks that need the devices or the data (batch divisibility,
batch larger than the dataset, a user model's return value) run where those are known, still
before the workdir is touched.
"""

from __future__ import annotations

import os

from jaxdl import files, initfrom, models, optim, parallel, profiler
from jaxdl.errors import UserError, first_line, require


REACH_TIMEOUT = 45  # seconds an object store's first listing may take, retries included


def _check_reachable(workdir: str) -> None:
  """One listing of a gs:// workdir, which must answer (or say 'not found') within
  REACH_TIMEOUT: an unreachable endpoint is one line here, not a traceback minutes later, and
  never read as an empty workdir. gcsfs retries a refused connection for about 35 s."""
  import threading  # pylint: disable=g-import-not-at-top
  failed = []
  def probe():
    try:
      fs, path = files.object_store(workdir)
      fs.ls(path, detail=False)
    except FileNotFoundError:
      pass  # a new workdir
    except BaseException as e:  # pylint: disable=broad-except  (reported below)
      failed.append(e)
  thread = threading.Thread(target=probe, daemon=True, name="jaxdl-reach")
  thread.start()
  thread.join(REACH_TIMEOUT)
  if thread.is_alive():
    raise UserError(f"--workdir={workdir}: no answer from its storage within {REACH_TIMEOUT} s; "
                    f"check the network, the endpoint and the credentials")
  if failed:
    raise UserError(f"--workdir={workdir}: cannot reach it ({type(failed[0]).__name__}: "
                    f"{first_line(failed[0])})")


def _check_workdir(workdir: str) -> None:
  """The workdir is a writable directory, or can be created as one; nothing is created here."""
  if not workdir:
    raise UserError("--workdir is required")
  if "://" in workdir:
    _check_reachable(workdir)  # gs://bucket/run: write access shows at the first write
    return
  path = os.path.abspath(workdir)
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise UserError(f"--workdir={workdir}: exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
      raise UserError(f"--workdir={workdir}: directory is not writable")
    # What the run writes in place (the rest is replaced through a temporary file): checked
    # here, or an unwritable checkpoints/ would fail the first save, after training to it.
    # The step folders too: the oldest is deleted as new ones come (keep_checkpoints).
    ckpts = os.path.join(path, "checkpoints")
    steps = [os.path.join("checkpoints", n) for n in sorted(os.listdir(ckpts))
             if n.isdigit()] if os.path.isdir(ckpts) else []
    for name, mode in (("checkpoints", os.W_OK | os.X_OK), ("metrics.jsonl", os.W_OK),
                       ("lease.json", os.W_OK), *((s, os.W_OK | os.X_OK) for s in steps)):
      if os.path.exists(os.path.join(path, name)) and not os.access(os.path.join(path, name),
                                                                    mode):
        raise UserError(f"--workdir={workdir}: {name} is not writable")
    return
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"--workdir={workdir}: cannot be created ({parent} is not a writable directory)")


def _check_best(config) -> None:
  """checkpoint.best_mode and early_stopping.patience; that keep_best names a metric of the
  run's eval split is checked once the data and model are known (check_best_metric)."""
  mode, patience = config.checkpoint.best_mode, config.early_stopping.patience
  require(mode in ("min", "max"), "checkpoint.best_mode", mode, "must be one of min, max")
  require(patience >= 0, "early_stopping.patience", patience, "must be >= 0 (0 = off)")
  require(patience == 0 or config.checkpoint.keep_best, "early_stopping.patience", patience,
          "needs checkpoint.keep_best, the eval metric that must improve (e.g. 'val_loss')")


def check_best_metric(keep_best: str, names: list[str]) -> None:
  """checkpoint.keep_best ('' = off) is one of `names`, the eval events' scalar metrics."""
  require(not keep_best or keep_best in names, "checkpoint.keep_best", keep_best,
          f"not a metric of this run's evals; valid: {', '.join(names)}")


def validate(config, task, workdir: str) -> None:
  """Raises UserError for the first config value or workdir that cannot work; `task` is the
  resolved task module (tasks.get(config.task))."""
  for key in ("batch_size", "eval_batch_size", "log_every", "checkpoint_every",
              "keep_checkpoints", "steps_per_dispatch"):
    require(config[key] > 0, key, config[key], "must be > 0")
  if config.num_train_steps <= 0:
    require(config.num_epochs > 0, "num_epochs", config.num_epochs,
            "must be > 0 (or set num_train_steps > 0)")
  require(config.min_train_steps >= 0, "min_train_steps", config.min_train_steps,
          "must be >= 0 (0 = num_epochs alone)")
  require(config.eval_every >= 0, "eval_every", config.eval_every,
          "must be >= 0 (0 evaluates once per epoch)")
  require(config.train.grad_accum_steps >= 1, "train.grad_accum_steps",
          config.train.grad_accum_steps, "must be >= 1 (1 = the whole batch at once)")
  require(0 <= config.train.ema_decay < 1, "train.ema_decay", config.train.ema_decay,
          "must be in [0, 1) (0 = off)")
  # jax.random.PRNGKey keeps 32 bits of a seed (without jax_enable_x64): 2**32 would draw what
  # seed 0 draws, and 2**63 or more overflows.
  require(0 <= config.seed < 2**32, "seed", config.seed, "must be in [0, 2**32)")
  profiler.parse(config.profile_steps)  # raises unless '' or 'START:STOP'
  _check_best(config)

  par = config.parallel
  require(par.mode in ("jit", "pmap"), "parallel.mode", par.mode, "must be one of jit, pmap")
  require(not (par.fsdp and par.mode == "pmap"), "parallel.fsdp", par.fsdp,
          "needs parallel.mode='jit' (pmap keeps a full copy of the state on every device)")
  require(par.fsdp_min_size >= 0, "parallel.fsdp_min_size", par.fsdp_min_size, "must be >= 0")
  require(len(par.mesh_shape) in (1, 2) and list(par.mesh_shape).count(-1) <= 1 and all(
      isinstance(n, int) and not isinstance(n, bool) and (n > 0 or n == -1)
      for n in par.mesh_shape), "parallel.mesh_shape", par.mesh_shape,
          "must be (data,) or (data, model) device counts, one of them at most -1 (all the "
          "rest), e.g. (8,), (-1,) or (4, 2)")
  require(par.mode == "jit" or tuple(par.mesh_shape)[1:] in ((), (1,)), "parallel.mesh_shape",
          par.mesh_shape, "a 'model' axis needs parallel.mode='jit'")

  optim.check(config.opt)
  initfrom.check(config)
  models.check(config.model, task.MODELS, parallel.model_axis_size(par.mesh_shape))
  task.check(config)
  _check_workdir(workdir)
