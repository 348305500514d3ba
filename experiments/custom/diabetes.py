"""Regression on scikit-learn's diabetes table (442 rows, 10 features) with a small MLP: a
user's task (experiments/custom/regression.py) and model, on jaxdl's shared blocks
(configs/common.py). It stops early on its validation split and ends on the best checkpoint.
Results, beside scikit-learn's linear regression on the same splits
(experiments/custom/diabetes_baseline.py): experiments/custom/README.md.

  pip install -e '.[examples]'    # scikit-learn, which ships the data
  python -m jaxdl.main --config=experiments/custom/diabetes.py --workdir=runs/diabetes
"""

import ml_collections

from jaxdl.configs import common


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  common.check_preset(preset, ("",), "experiments/custom/diabetes.py")
  c = common.get_config()     # seed, cadence, opt, train, parallel
  c.task = "experiments.custom.regression"  # a user's task module, by its import path
  c.batch_size = 32
  c.eval_batch_size = 128     # a whole val or test split in one batch
  c.num_train_steps = 5000    # a ceiling: early stopping ends the run long before
  c.log_every = 25
  c.eval_every = 25           # steps between evals of 'val' (each is saved, for keep_best)
  c.checkpoint_every = 1000
  c.keep_checkpoints = 1      # the newest; the best is kept beside it
  c.opt.lr = 1e-3
  c.opt.warmup_steps = 100
  c.opt.decay_mask = "all"   # as measured (README): the default before no_bias_norm

  c.checkpoint.keep_best = "val_rmse"  # the eval split's name, then summarise()'s key
  c.checkpoint.best_mode = "min"
  c.early_stopping.patience = 10  # evals (of eval_every steps) without a lower val RMSE

  c.model = ml_collections.ConfigDict()
  c.model.name = "experiments.custom.regression:MLP"
  c.model.hidden = (32,)      # hidden layer widths (ReLU)
  c.model.dropout = 0.0       # after each hidden layer

  c.data = ml_collections.ConfigDict()
  c.data.test_size = 0.2      # rows held out for the final test (a fraction, or a count)
  c.data.validation_size = 0.2  # of the rest: 'val', evaluated during training, for keep_best
  c.lock()
  return c
