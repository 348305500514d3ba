"""jaxdl.report: the final-metrics table, with a column for each config key that differs."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, read_events
from jaxdl import report


@pytest.mark.slow
def test_two_runs_differing_in_one_override_get_exactly_that_column(tiny_sweep):
  _, _, results, _ = tiny_sweep
  workdirs = sorted(results)  # opt.lr=0.003, opt.lr=0.01
  result = subprocess.run([sys.executable, "-m", "jaxdl.report", *workdirs], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  assert header[:3] == ["run", "opt.lr", "step"]  # the one differing key, and no other
  assert sorted(header[3:]) == ["test_accuracy", "test_count", "test_loss", "val_accuracy",
                                "val_count", "val_loss"]  # val: 10% of train, held out
  assert len(lines) == 4
  for line, workdir, lr in zip(lines[2:], workdirs, ("0.003", "0.01")):
    cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
    final = read_events(workdir)[-1]
    assert (cells["run"], cells["opt.lr"], cells["step"]) == (workdir, lr, "8")
    assert cells["test_loss"] == f"{final['test_loss']:.4f}"
    assert cells["test_accuracy"] == f"{final['test_accuracy']:.4f}"
    assert cells["test_count"] == "50" and cells["val_count"] == "20"


def _workdir(path, config, events):
  path.mkdir()
  (path / "config.json").write_text(json.dumps(config))
  (path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
  return str(path)


def test_unfinished_runs_missing_keys_and_nested_values(tmp_path):
  a = _workdir(tmp_path / "a", {"seed": 0, "opt": {"lr": 0.1, "name": "sgd"}, "tag": "x|y"},
               [{"event": "train", "step": 5, "loss": 1.0},
                {"event": "final", "step": 10, "test_accuracy": 0.5, "confusion": [[1]]}])
  b = _workdir(tmp_path / "b", {"seed": 0, "opt": {"lr": 0.1, "name": "adam"}},
               [{"event": "train", "step": 5, "loss": 1.0}])
  runs = [report.load_run(a), report.load_run(b)]
  assert report.differing_keys(runs) == ["opt.name", "tag"]
  assert report.label(runs[1], ["opt.name"]) == "opt.name=adam"
  lines = report.table(runs).splitlines()
  assert lines[0] == "| run | opt.name | tag | step | test_accuracy |"  # lists left out
  assert lines[2] == f"| {a} | sgd | x\\|y | 10 | 0.5000 |"
  assert lines[3] == f"| {b} | adam | - | 5 (unfinished) | - |"


def test_a_directory_that_is_no_workdir_is_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as raised:
    report.main([str(tmp_path)])
  assert raised.value.code == 1
  assert capsys.readouterr().err.strip().splitlines() == [
      f"jaxdl: error: {tmp_path}: no config.json or metrics.jsonl (not a jaxdl workdir?)"]
