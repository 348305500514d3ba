"""scikit-learn's LinearRegression on the splits of experiments/custom/diabetes.py: the
baseline for the MLP that jaxdl trains there (results: experiments/custom/README.md).

  python -m experiments.custom.diabetes_baseline       # from the repository root

The splits are the task's own (regression.splits, the config's data block): the same test
rows, and the same standardised features. It fits twice: on the training rows alone (the rows
the MLP takes its gradient steps on), and on train + val (every row the MLP's run saw: the
linear model has nothing to choose on a validation split). Each is scored on the test split
with scikit-learn's own metrics, RMSE and R² (R² against the test split's mean, as the task's).
"""

import numpy as np
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_squared_error, r2_score

from experiments.custom import diabetes, regression


def main() -> None:
  table, sizes, _ = regression.splits(diabetes.get_config().data)
  print(f"splits: {sizes}")
  fits = {"train": [table["train"]], "train+val": [table["train"], table["val"]]}
  for name, parts in fits.items():
    x = np.concatenate([p["features"] for p in parts])
    y = np.concatenate([p["target"] for p in parts])
    fit = LinearRegression().fit(x, y)
    scored = ("val", "test") if name == "train" else ("test",)  # val: rows it did not fit
    print(f"LinearRegression fit on {name} ({len(y)} rows): " + " | ".join(
        _score(split, table[split], fit) for split in scored))


def _score(split: str, arrays, fit) -> str:
  pred = fit.predict(arrays["features"])
  rmse = float(np.sqrt(mean_squared_error(arrays["target"], pred)))
  return f"{split} RMSE {rmse:.2f} | {split} R2 {r2_score(arrays['target'], pred):.3f}"


if __name__ == "__main__":
  main()
