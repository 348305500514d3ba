"""--config.init_from: a fresh run starts from earlier weights (fine-tuning, a new head, a
longer run).

SOURCE is a workdir (its newest intact checkpoint), WORKDIR:best, WORKDIR:STEP, or a weights
file that `python -m jaxdl.export` wrote (FILE.safetensors). What loads is what jaxdl.load
reads: the params' moving average where the source kept one, else its params, and the model
state (BatchNorm's statistics), each named as weights.py names them ('params.Dense_0.kernel').
config.init_from_keys, a regex, picks the names that load (re.search); the others keep their
fresh init (a new head). The optimizer state, the step and the data position start fresh, as
does the params' moving average, which starts at the loaded params.

Everything is checked before the workdir is touched (train.py reads the source right after
building the model): every array that would load with another shape or dtype, and every name
missing on either side, is listed in one line, unless init_from_keys leaves it out. A run that
resumes from its own checkpoint ignores init_from (train.py says so); the run record names the
source and the hash of what loaded (runrecord.py).

A task with files of its own (a vocabulary) reads the source's with `task_file`: a text
encoder's embeddings are rows of its vocabulary's ids, so the new run encodes with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
from typing import Any

import numpy as np

from jaxdl import files, runs, weights
from jaxdl.errors import UserError


@dataclasses.dataclass
class Source:
  """The weights that load, and what the run record says of them."""
  spec: str                     # config.init_from as given
  step: int | None              # the source checkpoint's step (a file's, as export saved it)
  loaded: dict[str, np.ndarray]  # {name: array} of the names that load into this model
  kept: list[str]               # this model's names left at their fresh init (init_from_keys)
  sha256: str                   # of `loaded`: names, dtypes, shapes and bytes, in name order

  def record(self) -> dict[str, Any]:
    """What run.json keeps of it."""
    return {"source": self.spec, "step": self.step, "sha256": self.sha256,
            "loaded": len(self.loaded), "kept_fresh": self.kept}

  def line(self) -> str:
    """The console line of a run started from it."""
    kept = (f"; {len(self.kept)} kept their fresh init ({', '.join(self.kept[:4])}"
            f"{', ...' if len(self.kept) > 4 else ''})" if self.kept else "")
    step = "" if self.step is None else f" (step {self.step})"
    return (f"init_from: {len(self.loaded)} weights from {self.spec}{step}, sha256 "
            f"{self.sha256[:12]}{kept}")


def parse(spec: str) -> tuple[str, str | int | None]:
  """(path, which): a weights file's which is None; a workdir's 'latest', 'best' or a step.
  Only a ':' followed by 'best', 'latest' or digits picks the checkpoint: gs://bucket/run is a
  workdir whole."""
  if spec.endswith(weights.SUFFIX):
    return spec, None
  head, sep, tail = spec.rpartition(":")
  if sep and head and (tail in ("best", "latest") or tail.isdigit()):
    return head, int(tail) if tail.isdigit() else tail
  return spec, "latest"


def check(config) -> None:
  """The keys' values, before any work: init_from_keys compiles, and needs init_from."""
  pattern = config.init_from_keys
  try:
    re.compile(pattern)
  except re.error as e:
    raise UserError(f"config.init_from_keys={pattern!r}: not a regular expression ({e})") from None
  if pattern and not config.init_from:
    raise UserError(f"config.init_from_keys={pattern!r} needs config.init_from=SOURCE")


def _error(spec: str, text: str) -> UserError:
  return UserError(f"config.init_from={spec!r}: {text}")


@contextlib.contextmanager
def _reading(spec: str):
  """Every UserError of reading SOURCE as one line that names config.init_from."""
  try:
    yield
  except UserError as e:
    raise _error(spec, str(e)) from None


def _located(spec: str) -> tuple[str, str | int | None]:
  """parse(spec), once the weights file or the workdir is there."""
  path, which = parse(spec)
  with _reading(spec):
    if which is None and not files.exists(path):
      raise UserError(f"{path}: no such weights file")
    if which is not None and not files.Path(path).is_dir():
      raise UserError(f"{path}: no such workdir (SOURCE is a workdir, WORKDIR:best, "
                      f"WORKDIR:STEP or an exported FILE{weights.SUFFIX})")
  return path, which


def _read(spec: str) -> tuple[int | None, dict[str, np.ndarray]]:
  """(step, {name: array}) of SOURCE."""
  path, which = _located(spec)
  with _reading(spec):
    if which is None:
      variables, meta = weights.read_file(path)
      return meta.get("step"), _numpy(variables)
    if which == "best":
      which = runs.best_step(path, runs.run_config(path)[0])
    step, variables = runs.read_variables(path, which)
  return step, _numpy(variables)


def _numpy(variables) -> dict[str, np.ndarray]:
  return {name: np.asarray(leaf) for name, leaf in weights.flatten(variables).items()}


def task_file(config, name: str) -> str | None:
  """The text of the init_from source's task file `name` (vocab.json), or None: no init_from,
  or a source without that file. For a task's load on a fresh run; reads only that file (a
  weights file's header, where export keeps the task's files)."""
  spec = config.get("init_from")
  if not spec:
    return None
  path, which = _located(spec)
  if which is None:
    with _reading(spec):
      return weights.read_metadata(path).get("files", {}).get(name)
  file = os.path.join(path, name)
  return files.read_text(file) if files.exists(file) else None


def _hash(arrays: dict[str, np.ndarray]) -> str:
  digest = hashlib.sha256()
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    digest.update(f"{name} {a.dtype.str} {a.shape}\n".encode())
    digest.update(a.tobytes())
  return digest.hexdigest()


def read(config, target: dict[str, Any]) -> Source:
  """The source's weights that load into `target` ({name: an array or ShapeDtypeStruct} of the
  fresh state's variables, weights.flatten's names), after matching them: a UserError listing
  every name that init_from_keys picks and that does not fit."""
  spec, pattern = config.init_from, config.init_from_keys
  step, source = _read(spec)
  picked = re.compile(pattern).search
  problems = []
  for name, want in target.items():
    if not picked(name):
      continue
    if name not in source:
      problems.append(f"{name} {weights.describe(want)}: not in the source")
    elif (source[name].shape, source[name].dtype) != (tuple(want.shape), np.dtype(want.dtype)):
      problems.append(f"{name}: {weights.describe(source[name])} in the source, "
                      f"{weights.describe(want)} here")
  problems += [f"{name} {weights.describe(source[name])}: not in this model" for name in source
               if picked(name) and name not in target]
  if problems:
    raise _error(spec, f"{len(problems)} weight{'s do' if len(problems) > 1 else ' does'} not "
                       f"fit this model: {'; '.join(problems)} (config.init_from_keys, a "
                       f"regex, can leave them out)")
  loaded = {name: source[name] for name in target if picked(name)}
  if not loaded:
    raise _error(spec, f"config.init_from_keys={pattern!r} picks none of its "
                       f"{len(source)} weights (e.g. {next(iter(source), 'none')})")
  kept = [name for name in target if name not in loaded]
  return Source(spec, step, loaded, kept, _hash(loaded))
