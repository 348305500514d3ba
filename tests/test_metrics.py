"""metrics.jsonl and TensorBoard: appends, resume trimming, event files; the progress view."""

import glob
import io
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO
from jaxdl import metrics
from jaxdl.tasks import classifier


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
  progress = metrics.Progress(0, 100, 20, classifier.FORMATS, live=False, stream=stream)
  progress.advance(10)
  progress.train(10, {"loss": 0.5, "accuracy": 0.25, "examples_per_s": 1234.0})
  progress.print("eval at step 10")
  progress.close()
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue()
  assert lines[0].startswith("step  10/100 | epoch  0.50 | loss 0.5000 | acc 25.00% | 1,234 ex/s")
  assert "ETA" in lines[0] and lines[1] == "eval at step 10"


def test_progress_shows_a_number_as_the_tasks_formats_say_else_plainly():
  stream = io.StringIO()
  progress = metrics.Progress(0, 100, 20, {"psnr": "PSNR {:.1f} dB"}, live=False, stream=stream)
  progress.train(10, {"loss": 0.5, "psnr": 21.234, "bleu": 0.123456, "images_per_s": 99.6})
  assert " | PSNR 21.2 dB | bleu 0.1235 | 100 images/s | ETA" in stream.getvalue()


def test_live_progress_bar_shows_step_loss_and_throughput():
  stream = io.StringIO()
  progress = metrics.Progress(0, 100, 20, classifier.FORMATS, live=True, stream=stream)
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
