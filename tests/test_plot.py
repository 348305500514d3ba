"""jaxdl.plot: curves of several runs in one PNG."""

import json
import struct

import numpy as np
import pytest
from PIL import Image

from jaxdl import plot, report
from jaxdl.errors import UserError


@pytest.mark.slow
def test_plot_of_two_runs_is_a_real_png(tiny_sweep, tmp_path):
  _, _, results, _ = tiny_sweep
  out = str(tmp_path / "curves.png")
  plot.main([*sorted(results), f"--out={out}"])  # the command line, in this process
  data = open(out, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
  width, height = struct.unpack(">II", data[16:24])
  assert width >= 600 and height >= 250, (width, height)
  assert len(data) > 20_000  # two panels of curves, legends and axes, not a blank canvas
  pixels = np.asarray(Image.open(out).convert("RGB"))
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # coloured lines, not one colour


def test_curves_and_labels(tmp_path):
  path = tmp_path / "w"
  path.mkdir()
  (path / "config.json").write_text(json.dumps({"seed": 1, "task": "image_classification"}))
  events = [{"event": "train", "step": 5, "loss": 2.0, "accuracy": 0.1, "lr": 0.1},
            {"event": "eval", "step": 5, "test_loss": 1.5, "test_accuracy": 0.2, "test_count": 9},
            {"event": "train", "step": 10, "loss": 1.0, "accuracy": 0.3, "lr": 0.1},
            {"event": "final", "step": 10, "test_loss": 0.9, "test_accuracy": 0.4}]
  (path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
  run = report.load_run(str(path))
  curves = plot.curves(run)
  assert curves["loss"] == {"train": ([5, 10], [2.0, 1.0]), "eval": ([5, 10], [1.5, 0.9])}
  assert curves["accuracy"]["eval"] == ([5, 10], [0.2, 0.4])
  assert "lr" not in curves and "count" not in curves
  assert plot.default_metrics([run], [curves]) == ["loss", "accuracy"]  # the task's PLOT_METRICS
  assert report.label(run, []) == "w"
  with pytest.raises(UserError, match="no run logs 'f1'"):
    plot.plot([str(path)], str(tmp_path / "x.png"), ["f1"])

  # --out is the file written, whatever its name; a path that cannot be one is one line.
  assert plot.plot([str(path)], str(tmp_path / "curves")) == str(tmp_path / "curves")
  assert (tmp_path / "curves").read_bytes()[:4] == b"\x89PNG"
  assert not (tmp_path / "curves.png").exists()
  with pytest.raises(UserError, match=r"--out=.*: is a directory; give a file name, e.g. "
                                      r"--out=.*/curves.png"):
    plot.plot([str(path)], str(tmp_path))
  (tmp_path / "file").write_text("not a directory")
  with pytest.raises(UserError, match=r"--out=.*file/x.png: cannot be written \("):
    plot.plot([str(path)], str(tmp_path / "file" / "x.png"))


def test_a_directory_that_is_no_workdir_is_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as raised:
    plot.main([str(tmp_path), f"--out={tmp_path / 'x.png'}"])
  assert raised.value.code == 1
  assert capsys.readouterr().err.splitlines()[-1] == (
      f"jaxdl: error: {tmp_path}: no config.json or metrics.jsonl (not a jaxdl workdir?)")
