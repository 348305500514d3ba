"""checkpoint.keep_best and early_stopping.patience: the best eval's checkpoint kept through
rotation and a resume, early stopping at the eval where patience runs out and on the best
checkpoint, and the one-line config errors.

The tiny MNIST config trains on random labels (synthetic data), so its test loss is lowest at an
early eval, before the model memorises noise: the best eval comes before the last with no trick.
Each test checks that it does, from the eval events, before relying on it.
"""

import json
import math
import os

import pytest

from conftest import interrupt_at, load_config, read_events, set_keys
from jaxdl import tasks, train, validate
from jaxdl.errors import UserError


def _keep_best(config, patience: int = 0):
  """Evals every 4 steps (4, 8, ..., 20, and 24: the last step is evaluated with keep_best),
  checkpoints every 8, the newest one kept, the best test loss kept beside it."""
  return set_keys(config, {"eval_every": 4, "keep_checkpoints": 1,
                           "checkpoint.keep_best": "test_loss",
                           "early_stopping.patience": patience})


def _evals(workdir) -> list[tuple[int, float]]:
  return [(e["step"], e["test_loss"]) for e in read_events(workdir) if e["event"] == "eval"]


def _best(evals) -> tuple[int, float]:
  """The first eval with the lowest loss: a later one counts only if strictly lower."""
  best = evals[0]
  for step, loss in evals[1:]:
    best = (step, loss) if loss < best[1] else best
  return best


def _steps_on_disk(workdir) -> list[int]:
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def test_the_best_checkpoint_outlives_rotation_and_a_resume(tiny_mnist, tmp_path, capsys):
  workdir = str(tmp_path / "w")
  final = train.train_and_evaluate(_keep_best(tiny_mnist), workdir)
  evals = _evals(workdir)
  assert [s for s, _ in evals] == [4, 8, 12, 16, 20, 24]
  best_step, best_loss = _best(evals)
  assert best_step < 24  # the premise: the best eval is not the last one
  assert _steps_on_disk(workdir) == [best_step, 24]  # keep_checkpoints=1, and the best
  assert final["best_step"] == best_step and final["best_test_loss"] == best_loss
  assert read_events(workdir)[-1] == {"event": "final", "step": 24, **final}
  assert json.load(open(os.path.join(workdir, "run.json")))["final"] == final
  out = capsys.readouterr().out  # the best eval's metrics as its eval line gave them
  assert f"| best: step {best_step} test_loss {best_loss:.4g} (test accuracy " in out
  assert f"| test loss {best_loss:.4f}) | 24 steps" in out

  # A resume re-opens the checkpoints: Orbax reads back which step is the best, and its
  # rotation keeps it while the resumed run saves 28 and 32.
  tiny_mnist.num_train_steps = 32
  final = train.train_and_evaluate(tiny_mnist, workdir)
  evals = _evals(workdir)
  assert [s for s, _ in evals] == [4, 8, 12, 16, 20, 24, 28, 32]
  assert _best(evals) == (best_step, best_loss)
  assert _steps_on_disk(workdir) == [best_step, 32]
  assert (final["best_step"], final["best_test_loss"]) == (best_step, best_loss)


def _stop(evals, patience: int) -> int:
  """The step of the eval after which `patience` evals in a row did not beat the best."""
  best, since = math.inf, 0
  for step, loss in evals:
    best, since = (loss, 0) if loss < best else (best, since + 1)
    if since == patience:
      return step
  raise AssertionError(f"patience {patience} never ran out in {evals}")


def test_early_stopping_stops_where_patience_runs_out_on_the_best_checkpoint(tiny_mnist,
                                                                            tmp_path, capsys):
  workdir = str(tmp_path / "w")
  final = train.train_and_evaluate(_keep_best(tiny_mnist, patience=2), workdir)
  events = read_events(workdir)
  evals = _evals(workdir)
  stop = _stop(evals, patience=2)
  best_step, best_loss = _best(evals)
  assert evals[-1][0] == stop < 24  # no eval after the one where patience ran out
  assert max(e["step"] for e in events if e["event"] == "train") <= stop
  assert events[-1] == {"event": "final", "step": stop, **final}
  # The final eval is of the best checkpoint: the same split and state as that eval.
  at_best = next(e for e in events if e["event"] == "eval" and e["step"] == best_step)
  assert {k: final[k] for k in ("test_loss", "test_accuracy", "test_count")} == {
      k: at_best[k] for k in ("test_loss", "test_accuracy", "test_count")}
  assert (final["best_step"], final["best_test_loss"]) == (best_step, best_loss)
  out = capsys.readouterr().out
  assert (f"early stop at step {stop}: test_loss has not improved on step {best_step}'s "
          f"{best_loss:.4g} for 2 evals (early_stopping.patience=2)") in out
  assert f"| {stop} of 24 steps (stopped early)," in out

  # Re-run on its workdir, it trains no further: it stops again at once, with the same result.
  assert train.train_and_evaluate(tiny_mnist, workdir) == final
  assert read_events(workdir) == events
  assert f"early stop at step {stop}:" in capsys.readouterr().out


def test_a_killed_early_stopping_run_stops_at_the_same_eval(tiny_mnist, tmp_path, monkeypatch):
  """The patience count is in each checkpoint's loop state: killed after the step-8 checkpoint
  (an eval's) and resumed, the run stops where the uninterrupted one did."""
  _keep_best(tiny_mnist, patience=2)
  full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
  expected = train.train_and_evaluate(tiny_mnist, full)
  interrupt_at(tiny_mnist, resumed, monkeypatch, at_step=10)
  assert max(_steps_on_disk(resumed)) == 8
  assert train.train_and_evaluate(tiny_mnist, resumed) == expected
  assert read_events(resumed) == read_events(full)


@pytest.mark.parametrize("values, message", [
    ({"checkpoint.best_mode": "lowest"},
     "config.checkpoint.best_mode='lowest': must be one of min, max"),
    ({"checkpoint.keep_best": "val_loss", "early_stopping.patience": -1},
     "config.early_stopping.patience=-1: must be >= 0 (0 = off)"),
    ({"early_stopping.patience": 3},
     "config.early_stopping.patience=3: needs checkpoint.keep_best, the eval metric that must "
     "improve (e.g. 'val_loss')"),
])
def test_a_bad_best_or_patience_is_one_line(tmp_path, values, message):
  config = set_keys(load_config("mnist"), values)
  with pytest.raises(UserError) as error:
    validate.validate(config, tasks.get(config.task), str(tmp_path / "w"))
  assert str(error.value) == message


def test_a_keep_best_that_is_no_eval_metric_is_one_line_before_any_write(tiny_mnist, tmp_path):
  """The tiny config evaluates its test split (no validation split), so 'val_loss' is none of
  its metrics; the names come from the task's summary, traced, before the workdir exists."""
  tiny_mnist.checkpoint.keep_best = "val_loss"
  workdir = tmp_path / "w"
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(tiny_mnist, str(workdir))
  assert str(error.value) == ("config.checkpoint.keep_best='val_loss': not a metric of this "
                              "run's evals; valid: test_loss, test_accuracy")
  assert not workdir.exists()


def test_a_garbled_metrics_file_is_damage_set_aside_not_a_traceback(tiny_mnist, tmp_path):
  """With keep_best, Orbax reads every step's metrics file when the checkpoints open: one cut
  short (a power cut) is damage like any other, moved aside to damaged-<step> with the run
  going on from the next intact checkpoint; jaxdl.load(which='best') passes over it."""
  from jaxdl import runs  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(_keep_best(tiny_mnist), workdir)
  best_step, _ = _best(_evals(workdir))
  with open(os.path.join(workdir, "checkpoints", "24", "metrics", "metrics"), "w") as f:
    f.write('{"test_lo')
  assert runs.best_step(workdir, _keep_best(tiny_mnist)) == best_step
  tiny_mnist.num_train_steps = 28
  train.train_and_evaluate(_keep_best(tiny_mnist), workdir)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "damaged-24"))
  assert read_events(workdir)[-1]["step"] == 28
