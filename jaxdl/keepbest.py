"""Keep the best checkpoint, stop early: checkpoint.keep_best and early_stopping.patience.

The loop (train.py) judges each eval against the best so far (`after_eval`: strictly better,
NaN never) and keeps that bookkeeping in every checkpoint's loop state, so a resumed run judges
and stops exactly as an uninterrupted one; it saves the metric's value with a step only when
that step is a new best. Orbax keeps the best step through rotation and a resume
(`manager_options`: LatestN + BestN, ranked by `score`), and jaxdl.load(which='best') picks it
by the same `score`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import orbax.checkpoint as ocp


def score(metrics: dict, metric: str, mode: str) -> float:
  """Orbax's ranking of a step, higher better: a step saved as a new best carries its value;
  every other step carries {} and ranks last (-inf). jaxdl.load picks 'best' by it too."""
  value = metrics.get(metric)
  return -math.inf if value is None else (-value if mode == "min" else value)


def manager_options(keep: int, metric: str, mode: str) -> dict[str, Any]:
  """CheckpointManagerOptions that keep the newest `keep` steps and the best one.

  Orbax's BestN ranks steps by the metrics saved with them. The loop decides which step is the
  best (strictly better than every earlier eval; NaN never is) and saves its value with that
  step only: given every eval's value, BestN would keep the later of two equal ones, and NaN
  sorts anywhere. best_fn makes Orbax write the metrics into the step (with the preservation
  policy alone it keeps them in memory only, and a resumed run would lose the best step);
  a re-opened manager reads them back (checked on orbax-checkpoint 0.12.8)."""
  rank = functools.partial(score, metric=metric, mode=mode)
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=keep),
      ocp.checkpoint_managers.BestN(get_metric_fn=rank, n=1,
                                    keep_checkpoints_without_metrics=False)])
  return dict(preservation_policy=policy, best_fn=rank, best_mode="max")


def eval_metric_names(task, runner, dataset, batch_size: int) -> list[str] | None:
  """The eval events' scalar metrics ('val_loss', 'val_accuracy'): the task's summary of zero
  eval sums, whose shapes the runner traces from its eval step, never computed. None when the
  task's summarise cannot take zero sums (a ratio of two of them): the loop then checks
  checkpoint.keep_best at the first eval."""
  shapes = runner.eval_shapes(dataset.evals[dataset.eval_split], batch_size)
  try:
    summary = task.summarise({k: np.zeros(s.shape, s.dtype) for k, s in shapes.items()})
  except (ArithmeticError, ValueError):  # ZeroDivisionError, math domain errors
    return None
  return [f"{dataset.eval_split}_{k}" for k, v in summary.items()
          if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and k != "count"]


# checkpoint.keep_best's bookkeeping, kept in each checkpoint's loop state ('best'): the best
# eval's step and value, and the evals since it, so a resumed run judges (and stops) exactly
# as an uninterrupted one. A checkpoint without it (keep_best off, an older jaxdl) starts here.
NONE_YET = {"step": None, "value": None, "evals_since": 0}


def after_eval(best: dict, step: int, value: float, mode: str, result: dict) -> dict:
  """The bookkeeping after the eval at `step` gave `value` (and the task's `result`, kept for
  the final summary): a new best only when strictly better (the first of equal evals stays
  the best); NaN never is."""
  if not math.isnan(value) and (best["value"] is None or (
      value < best["value"] if mode == "min" else value > best["value"])):
    return {"step": step, "value": value, "evals_since": 0, "result": result}
  return {**best, "evals_since": best["evals_since"] + 1}


def patience_out(best: dict | None, patience: int) -> bool:
  """Whether early stopping ends the run: `patience` evals without a new best. A run with no
  best yet (every eval NaN) has no checkpoint to finish on, and goes on."""
  return (patience > 0 and best is not None and best["step"] is not None
          and best["evals_since"] >= patience)
