"""metrics.jsonl and JSON files: appends, resume trimming, atomic writes; summarise."""

import glob
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from jaxdl import metrics
from jaxdl.tasks import language_model, text_classification


def test_drop_after_trims_redone_steps_and_a_cut_line(tmp_path):
  writer = metrics.Writer(str(tmp_path))
  for step in (10, 20, 30):
    writer.write("train", step, {"loss": 1.0 / step})
  writer.write("final", 30, {"test_accuracy": 0.5})
  with open(writer.path, "a") as f:
    f.write('{"event": "train", "st')  # a line cut short by a kill
  writer.drop_after(20)
  events = [json.loads(line) for line in open(writer.path)]
  assert [(e["event"], e["step"]) for e in events] == [("train", 10), ("train", 20)]


def test_write_json_leaves_no_temp_files(tmp_path):
  path = str(tmp_path / "config.json")
  metrics.write_json(path, {"b": 1, "a": [1, 2]})
  metrics.write_json(path, {"b": 2})
  assert json.load(open(path)) == {"b": 2}
  assert os.listdir(tmp_path) == ["config.json"]


def _tags_and_steps(directory):
  return [(tag, step) for tag, step, _, _ in metrics.read_tensorboard(directory)]


def test_tensorboard_mirrors_metrics_jsonl(tmp_path):
  with metrics.Writer(str(tmp_path)) as writer:
    writer.write("train", 5, {"loss": 2.0, "lr": 0.1})
    writer.write("eval", 5, {"test_loss": 1.5, "test_count": 50, "confusion": [[1, 0], [0, 1]]})
  scalars = metrics.read_tensorboard(str(tmp_path))
  assert [(t, s, v) for t, s, v, _ in scalars] == [
      ("train/loss", 5, 2.0), ("train/lr", 5, pytest.approx(0.1)), ("eval/test_loss", 5, 1.5)]
  assert len(glob.glob(str(tmp_path / metrics.EVENT_FILES))) == 1


def test_a_resume_rebuilds_the_event_files_without_repeated_steps(tmp_path):
  writer = metrics.Writer(str(tmp_path))
  for step in (10, 20, 30):
    writer.write("train", step, {"loss": 1.0 / step})
  writer.write("final", 30, {"test_accuracy": 0.5})
  writer.close()
  wall_time_10 = metrics.read_tensorboard(str(tmp_path))[0][3]
  time.sleep(1.1)  # so that a replayed wall time is not "now"

  # Resumed from the step-20 checkpoint: steps 21..30 are redone and logged again.
  with metrics.Writer(str(tmp_path)) as writer:
    writer.drop_after(20)
    writer.write("train", 30, {"loss": 0.5})
    writer.write("final", 30, {"test_accuracy": 0.75})
  assert _tags_and_steps(tmp_path) == [("train/loss", 10), ("train/loss", 20),
                                       ("train/loss", 30), ("final/test_accuracy", 30)]
  scalars = metrics.read_tensorboard(str(tmp_path))
  assert scalars[0][3] == wall_time_10  # replayed events keep their wall time
  assert [v for _, _, v, _ in scalars[2:]] == [0.5, 0.75]
  assert len(glob.glob(str(tmp_path / metrics.EVENT_FILES))) == 1


def test_event_files_lost_in_a_kill_are_rebuilt(tmp_path):
  with metrics.Writer(str(tmp_path)) as writer:
    writer.write("train", 10, {"loss": 1.0})
  for path in glob.glob(str(tmp_path / metrics.EVENT_FILES)):
    with open(path, "r+b") as f:  # cut the last record short, as a kill while writing would
      f.truncate(os.path.getsize(path) - 3)
  assert _tags_and_steps(tmp_path) == []
  with metrics.Writer(str(tmp_path)) as writer:
    writer.drop_after(10)
  assert _tags_and_steps(tmp_path) == [("train/loss", 10)]


def test_plain_progress_lines_have_no_carriage_return(tmp_path):
  stream = io.StringIO()
  progress = metrics.Progress(0, 100, 20, live=False, stream=stream)
  progress.advance(10)
  progress.train(10, {"loss": 0.5, "accuracy": 0.25, "examples_per_s": 1234.0})
  progress.print("eval at step 10")
  progress.close()
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue()
  assert lines[0].startswith("step  10/100 | epoch  0.50 | loss 0.5000 | acc 25.00% | 1,234 ex/s")
  assert "ETA" in lines[0] and lines[1] == "eval at step 10"


def test_live_progress_bar_shows_step_loss_and_throughput():
  stream = io.StringIO()
  progress = metrics.Progress(0, 100, 20, live=True, stream=stream)
  progress.advance(10)
  progress.train(10, {"loss": 0.5, "examples_per_s": 1234.0})
  progress.print("eval at step 10")
  progress.close()
  text = stream.getvalue()
  assert "\r" in text and "eval at step 10\n" in text
  last = text.rstrip("\n").split("\r")[-1]
  assert last.startswith("step 10/100") and "ETA" in last
  assert "loss 0.5000" in last and "1,234 ex/s" in last


def test_only_process_0_writes_or_prints(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(metrics.jax, "process_index", lambda: 1)
  with metrics.Writer(str(tmp_path)) as writer:
    writer.start_progress(0, 10, 5)
    writer.write("train", 5, {"loss": 1.0})
    writer.print("hello")
  assert capsys.readouterr().out == "" and os.listdir(tmp_path) == []


def test_summarise_three_classes_with_an_unpredicted_class():
  # Class 2 is never predicted (column of zeros) and class 1 never predicted correctly.
  confusion = np.array([[3, 1, 0], [2, 0, 0], [1, 1, 0]], np.float32)
  report = text_classification.summarise({"loss_sum": 1.0, "count": 8.0, "correct": 3.0,
                                           "confusion": confusion})
  assert report["precision"] == pytest.approx([3 / 6, 0.0, 0.0])
  assert report["recall"] == pytest.approx([3 / 4, 0.0, 0.0])
  assert report["f1"] == pytest.approx([2 * 0.5 * 0.75 / 1.25, 0.0, 0.0])
  assert report["macro_recall"] == pytest.approx(0.75 / 3)
  assert report["confusion"] == [[3, 1, 0], [2, 0, 0], [1, 1, 0]]


def test_summarise_a_classifier_with_a_confusion_matrix():
  # rows = true, cols = predicted: class 0: 3 right, 1 called 1; class 1: 2 right, 2 called 0.
  sums = {"loss_sum": 4.0, "count": 8.0, "correct": 5.0,
          "confusion": np.array([[3, 1], [2, 2]], np.float32)}
  m = text_classification.summarise(sums)
  assert m["loss"] == 0.5 and m["accuracy"] == 5 / 8 and m["count"] == 8
  np.testing.assert_allclose(m["precision"], [3 / 5, 2 / 3])
  np.testing.assert_allclose(m["recall"], [3 / 4, 2 / 4])
  f1 = [2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4), 2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2)]
  np.testing.assert_allclose(m["f1"], f1)
  np.testing.assert_allclose(m["macro_f1"], sum(f1) / 2)
  assert m["confusion"] == [[3, 1], [2, 2]]


def test_summarise_a_class_never_predicted_scores_zero_not_nan():
  m = text_classification.summarise({"loss_sum": 1.0, "count": 2.0, "correct": 1.0,
                                     "confusion": np.array([[1, 0], [1, 0]], np.float32)})
  assert m["precision"] == [0.5, 0.0] and m["f1"][1] == 0.0


def test_summarise_a_language_model():
  m = language_model.summarise({"loss_sum": np.log(4.0) * 10, "count": 10.0})
  assert "accuracy" not in m
  np.testing.assert_allclose([m["perplexity"], m["bits_per_token"]], [4.0, 2.0])


def test_tensorboard_does_not_import_torch(tmp_path):
  """tensorboardX imports torch when it can (1.5 s of start-up); the Writer hides it. A stand-in
  `torch` package on the path records any import of it."""
  (tmp_path / "torch").mkdir()
  marker = tmp_path / "imported"
  (tmp_path / "torch" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                                  "Tensor = object\n")
  code = ("import sys; from jaxdl import metrics; w = metrics.Writer(sys.argv[1]); "
          "w.write('train', 1, {'loss': 0.5}); w.close(); print('torch' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w")], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"})
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "False" and not marker.exists()
  assert glob.glob(str(tmp_path / "w" / metrics.EVENT_FILES))
