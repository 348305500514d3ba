"""Takes a run's weights out of jaxdl: one checkpoint as a safetensors file.

  python -m jaxdl.export --workdir=runs/tiny_lm --out=tiny_lm.safetensors \
      [--which=latest|best|STEP] [--dtype=bfloat16|float16|float32] [--unstack]

The file holds the variables that jaxdl.load picks (the params' moving average where the run
kept one, and the model state, such as BatchNorm's statistics), each under its weights.flatten
name ('params.block_0.attn.qkv.kernel', 'batch_stats.BatchNorm_0.mean'), and in its metadata
what rebuilds the model from the file alone: the resolved config, the model_info, the task's
files (its module's FILES: vocab.json, classes.json), the step, the checkpoint asked for and
the jaxdl version. jaxdl.load("FILE.safetensors") reads it back as a Run; NumPy, JAX and
PyTorch read it with safetensors.

Layers that the model scans (the built-in transformer's model.scan_layers: params['blocks'],
each array [num_layers, ...]) are written as the model holds them, stacked, or with --unstack
one array per layer, the index after the stacked name ('params.blocks.0.attn.qkv.kernel');
jaxdl.load stacks them again. --dtype casts the floating arrays (integer ones stay as they
are); by default every array keeps its saved dtype.

--workdir may be local or gs://, and so may --out. The file is written whole or not at all (a
temporary file renamed). In a multi-process job (the flags below, as jaxdl.main takes them, or
a Cloud TPU VM's workers) every process reads the checkpoint, process 0 alone writes the file,
and the others wait for it and stop with its error if it fails.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

import jaxdl
from jaxdl import errors, files, parallel, runs, weights
from jaxdl.errors import UserError
from jaxdl.models import transformer

# The flags exist only when this file runs as a program, so that `export` can be imported
# beside jaxdl.predict and jaxdl.sample (each defining --workdir would be a DuplicateFlagError).
if __name__ == "__main__":
  _WORKDIR = flags.DEFINE_string("workdir", None, "the training run's directory (or gs:// URL)")
  _OUT = flags.DEFINE_string("out", None, "the file to write, FILE.safetensors (or gs:// URL)")
  _WHICH = flags.DEFINE_string("which", "latest", "the checkpoint: latest (the newest intact), "
                               "best (checkpoint.keep_best's) or a step number")
  _DTYPE = flags.DEFINE_string("dtype", "", "cast the floating arrays to bfloat16, float16 or "
                               "float32; default: each array's saved dtype")
  _UNSTACK = flags.DEFINE_bool("unstack", False, "write scanned layers one array per layer "
                               "(NAME.INDEX...), not stacked on a leading axis")
  _COORDINATOR = flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0 of a "
                                     "multi-process job (as jaxdl.main takes it)")
  _NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "processes in the job")
  _PROCESS_ID = flags.DEFINE_integer("process_id", -1, "this process's index")

DTYPES = ("bfloat16", "float16", "float32")  # what --dtype casts floating arrays to


def check_dtype(dtype: str) -> str:
  """--dtype: '' (the saved dtypes) or one of DTYPES."""
  if dtype and dtype not in DTYPES:
    raise UserError(f"--dtype={dtype}: must be one of {', '.join(DTYPES)} (or unset: each "
                    f"array's saved dtype)")
  return dtype


def check_out(out: str) -> None:
  """--out: a .safetensors path whose directory exists (jaxdl.load knows a file by its suffix)."""
  if not out.endswith(weights.SUFFIX):
    raise UserError(f"--out={out}: must end in {weights.SUFFIX}")
  if files.is_url(out):
    return  # an object store has no directories to find
  directory = os.path.dirname(os.path.abspath(out))
  if not os.path.exists(directory):
    raise UserError(f"--out={out}: the directory {directory} does not exist")
  if not os.path.isdir(directory):
    raise UserError(f"--out={out}: {directory} is not a directory")
  if os.path.isdir(out):
    raise UserError(f"--out={out}: is a directory")


def cast(flat: dict, dtype: str) -> dict:
  """The floating arrays of {name: array} as `dtype` ('' leaves all as they are)."""
  if not dtype:
    return dict(flat)
  # jnp.issubdtype: NumPy's own does not count ml_dtypes' bfloat16 as floating.
  return {name: x.astype(jnp.dtype(dtype)) if jnp.issubdtype(x.dtype, jnp.floating) else x
          for name, x in ((name, np.asarray(x)) for name, x in flat.items())}


def stacked_layers(model) -> dict[str, int]:
  """{name prefix: layers} of the arrays the model stacks on a leading axis: the built-in
  transformer's scanned blocks (the one nn.scan jaxdl knows of; a user's scanned model is
  written as saved, stacked)."""
  if isinstance(model, transformer.TransformerLM) and model.scan_layers:
    return {"params.blocks": model.num_layers}
  return {}


def _host(x):
  """An array as one NumPy array on this host; one sharded over processes is gathered first
  (every process takes part). runs.read_variables restores each array whole on every process,
  so that happens only to a variables tree read with its run's shardings."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def _on_process_0(fn):
  """fn() on process 0 alone (its result there; None elsewhere), every other process waiting
  until it is done; a failure of fn stops every process with its line, not only process 0."""
  result, failure, line = None, None, ""
  if jax.process_index() == 0:
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except  (raised again below, on process 0)
      failure = e
      line = str(e) if isinstance(e, UserError) else (errors.environment_failure(e) or (
          f"process 0 failed ({type(e).__name__}: {errors.first_line(e)})"))
  line = parallel.broadcast_text(line)  # a collective: the others wait here for process 0
  if failure is not None:
    raise failure
  if line:
    raise UserError(line)
  return result


def export(workdir: str, out: str, which: str | int = "latest", dtype: str = "",
           unstack: bool = False) -> str:
  """Writes a checkpoint of the run in `workdir` to `out` (module docstring); returns the line
  that says what was written."""
  check_dtype(dtype)
  if os.fspath(workdir).endswith(weights.SUFFIX):
    raise UserError(f"--workdir={workdir}: a weights file, not a run's directory")
  _on_process_0(lambda: check_out(out))  # before the checkpoint is read
  run = runs.load(workdir, which)
  flat = {name: _host(x) for name, x in weights.flatten(run.variables).items()}
  stacked = stacked_layers(run.model)
  if unstack and not stacked:
    logging.warning("--unstack: the model stacks no layers that jaxdl knows of (the built-in "
                    "transformer's model.scan_layers); its arrays are written as saved")
  flat = cast(weights.unstack(flat, stacked) if unstack else flat, dtype)
  task_files = {}
  for name in getattr(run.task, "FILES", ()):  # a task module's optional FILES
    path = os.path.join(workdir, name)
    if files.exists(path):
      task_files[name] = files.read_text(path)
    else:
      logging.warning("%s: not found (a run made before the task wrote it); not in --out", path)
  metadata = {weights.META_VERSION: jaxdl.__version__,
              weights.META_CONFIG: json.dumps(run.config.to_dict(), sort_keys=True),
              weights.META_MODEL_INFO: json.dumps(runs.saved_model_info(run.model_info),
                                                  sort_keys=True),
              weights.META_FILES: json.dumps(task_files, sort_keys=True),
              weights.META_STEP: str(run.step), weights.META_WHICH: str(which),
              weights.META_STACKED: json.dumps(stacked, sort_keys=True),
              weights.META_UNSTACKED: "true" if unstack and stacked else "false"}
  size = _on_process_0(lambda: weights.write_file(out, flat, metadata))
  return (f"wrote {out}: {len(flat)} arrays, {size or 0:,} bytes, the checkpoint at "
          f"step {run.step} ({which}) of {workdir}")


def main(argv: list[str]) -> None:
  with errors.reported():
    if len(argv) > 1:
      raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    for flag, value in (("--workdir", _WORKDIR.value), ("--out", _OUT.value)):
      if not value:
        raise UserError(f"{flag} is required, e.g. --workdir=runs/tiny_lm "
                        f"--out=tiny_lm.safetensors")
    check_dtype(_DTYPE.value)
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    line = export(_WORKDIR.value, _OUT.value, _WHICH.value, _DTYPE.value, _UNSTACK.value)
    if jax.process_index() == 0:
      print(line)


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=errors.parse_absl_flags)
