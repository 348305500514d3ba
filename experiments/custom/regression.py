"""A user's task: regression of a table of numbers, reporting RMSE and R², on scikit-learn's
diabetes data (442 patients, 10 features; the target is a measure of disease progression a year
on, 25 to 346).

  python -m jaxdl.main --config=experiments/custom/diabetes.py --workdir=runs/diabetes

`--config.task=experiments.custom.regression` names this module; it provides what every task
module provides (jaxdl/tasks/__init__.py lists the names). The data are the table that
scikit-learn ships (`sklearn.datasets.load_diabetes`, no download), so scikit-learn is needed
(pip install -e '.[examples]'); jaxdl itself never imports it.

The splits are fixed, drawn by jaxdl's fixed carving seed (jaxdl/data/subsets.py), not
config.seed: data.test_size rows are held out as 'test', then data.validation_size of the rest
as 'val' (subsets.with_validation, as the shipped tasks carve theirs), and the model trains on
what remains. Features are standardised with the training rows' mean and standard deviation.
The model's output is in the target's units: the task gives it the training targets' mean and
standard deviation (model_info, as the image task gives a classifier its number of classes),
and the model scales its standardised output by them, so the loss and every metric are in the
target's units.

The metrics come from sums, added over batches: the squared errors (SSE), the targets and the
squared targets, whence RMSE = sqrt(SSE / n) and R² = 1 - SSE / SST, SST = Σy² - (Σy)² / n:
the variance the split's own mean leaves (R² 0 predicts that mean; 1 is perfect).
`diabetes_baseline.py` fits scikit-learn's LinearRegression on the same splits.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import losses, models
from jaxdl.data import Dataset, TrainBatches, subsets
from jaxdl.errors import UserError, require

INPUT = "features"
UNIT = "examples"
TRAIN_METRICS = ("rmse", "r2")
PLOT_METRICS = ("loss", "rmse", "r2")
MODELS = ()  # no built-in model takes a row of numbers: model.name is PACKAGE.MODULE:ATTR
FORMATS = {"rmse": "rmse {:.2f}", "r2": "R2 {:.3f}", "examples_per_s": "{:,.0f} ex/s"}
LOG_SCALE = ("loss", "rmse")


def check(config) -> None:
  """scikit-learn is installed (it ships the data), and the two carved splits' sizes."""
  if importlib.util.find_spec("sklearn") is None:
    raise UserError("config.task='experiments.custom.regression' reads scikit-learn's "
                    "load_diabetes, and scikit-learn is not installed: pip install -e "
                    "'.[examples]' (or pip install scikit-learn)")
  subsets.check(config.data, "test_size")
  require(config.data.test_size != 0, "data.test_size", config.data.test_size,
          "must be > 0: the test split is carved from the data")
  subsets.check(config.data, "validation_size")


def splits(data_cfg) -> tuple[dict[str, dict[str, np.ndarray]], str, dict[str, float]]:
  """({'train', 'val', 'test'}: {'features': float32 [N, 10], 'target': float32 [N]}, the
  sizes' text, {'target_mean', 'target_std'} of the training rows): the fixed splits, features
  standardised by the training rows' statistics. diabetes_baseline.py fits on these too."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top  (check() saw it)
  # scaled=False: the features as measured. scikit-learn's default scales them by the mean and
  # norm of all 442 rows, test rows included; here only the training rows' statistics are used.
  x_NxF, y_N = datasets.load_diabetes(return_X_y=True, scaled=False)
  test, rest = subsets.carve(len(y_N), data_cfg.test_size, "test_size")
  table = {"train": {"features": x_NxF[rest], "target": y_N[rest]},
           "test": {"features": x_NxF[test], "target": y_N[test]}}
  table, sizes = subsets.with_validation(table, data_cfg)  # 'val' carved out of train
  x_train = table["train"]["features"]
  mean_F, std_F = x_train.mean(axis=0), x_train.std(axis=0)
  out = {split: {"features": ((arrays["features"] - mean_F) / std_F).astype(np.float32),
                 "target": arrays["target"].astype(np.float32)}
         for split, arrays in table.items()}
  y_train = table["train"]["target"]
  stats = {"target_mean": float(y_train.mean()), "target_std": float(y_train.std())}
  return out, f"{sizes} | test {len(test)} held out", stats


def load(config, workdir: str | None) -> Dataset:
  del workdir  # nothing is read back from the workdir: the splits are a function of the config
  table, sizes, stats = splits(config.data)
  train = TrainBatches(table["train"], config.batch_size, config.seed, jax.process_index(),
                       jax.process_count())
  evals = {k: v for k, v in table.items() if k != "train"}
  return Dataset(train=train, evals=evals, eval_split="val" if "val" in evals else "test",
                 final_splits=tuple(s for s in ("val", "test") if s in evals),
                 source="scikit-learn's load_diabetes (442 rows, 10 features)",
                 describe=sizes, model_info=stats)


def sums_of(pred_B, target_B, mask_B) -> dict[str, jax.Array]:
  """The metric sums of a batch's unmasked rows: squared errors (loss_sum: the SSE), targets,
  squared targets and the count."""
  err_B = pred_B - target_B
  return {"loss_sum": (err_B ** 2 * mask_B).sum(), "target_sum": (target_B * mask_B).sum(),
          "target_sq_sum": (target_B ** 2 * mask_B).sum(), "count": mask_B.sum()}


def regress(variables, batch, rng, train, *, model):
  """(mean squared error, sums, model state) of a batch: the model's predictions (in the
  target's units) against the targets."""
  pred_B, model_state = models.apply(model, variables, batch[INPUT], train=train, rng=rng)
  sums = sums_of(pred_B, batch["target"], batch["mask"])
  return sums["loss_sum"] / jnp.maximum(sums["count"], 1.0), sums, model_state


def objective(config, model):
  del config
  return functools.partial(regress, model=model)


def summarise(sums) -> dict[str, Any]:
  """loss (the MSE), RMSE and R² of sums added over batches. The sums are float32 on the
  device. This target is a whole number (25 to 346), and a val or test split's sums and sums of
  squares (71 and 88 rows) stay below 2**24, where float32 holds whole numbers exactly, so
  their SST is exact (checked against float64); a target of larger or fractional values, or
  bigger splits, would want centred sums."""
  sums = losses.to_host(sums)
  out = losses.loss_and_count(sums)
  n = max(out["count"], 1)
  sst = float(sums["target_sq_sum"]) - float(sums["target_sum"]) ** 2 / n
  out["rmse"] = math.sqrt(out["loss"])
  out["r2"] = 1.0 - float(sums["loss_sum"]) / sst if sst > 0 else float("nan")  # no spread
  return out


def brief(split: str, m: dict[str, Any]) -> str:
  return f"{split} RMSE {m['rmse']:.2f} | {split} R2 {m['r2']:.3f}"


class _MLP(nn.Module):
  hidden: tuple[int, ...]
  dropout: float
  target_mean: float
  target_std: float

  @nn.compact
  def __call__(self, features_BxF, *, train: bool):
    x = features_BxF
    for width in self.hidden:
      x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(nn.Dense(width)(x)))
    z_B = nn.Dense(1)(x)[:, 0]  # standardised: about N(0, 1) for the training targets
    return z_B * self.target_std + self.target_mean


def MLP(model_config, *, target_mean: float,  # pylint: disable=invalid-name
        target_std: float) -> nn.Module:
  """The builder jaxdl calls: the config's model block, and the training targets' mean and
  standard deviation (this task's model_info)."""
  return _MLP(hidden=tuple(model_config.hidden), dropout=model_config.dropout,
              target_mean=target_mean, target_std=target_std)
