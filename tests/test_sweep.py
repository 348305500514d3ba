"""jaxdl.sweep: a two-run grid end to end; a re-run skips finished runs and resumes the others."""

import io
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from jaxdl import sweep
from jaxdl.errors import UserError


@pytest.mark.slow
def test_two_runs_each_in_its_own_workdir(tiny_sweep):
  root, _, results, out = tiny_sweep
  assert sorted(os.path.basename(w) for w in results) == ["opt.lr=0.003", "opt.lr=0.01"]
  assert set(results.values()) == {"done"}, out
  for workdir in results:
    assert sweep.status(workdir) == "finished"
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["opt"]["lr"] == float(os.path.basename(workdir).split("=")[1])
    assert config["num_train_steps"] == 8 and config["data"]["source"] == "synthetic"
    assert os.path.exists(os.path.join(root, os.path.basename(workdir) + ".log"))


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_resumes_an_unfinished_one(tiny_sweep, monkeypatch):
  root, axes, results, _ = tiny_sweep
  before = {w: open(os.path.join(w, "metrics.jsonl")).read() for w in results}
  def no_run(*args, **kwargs):
    raise AssertionError(f"a finished run was started again: {args}")
  with monkeypatch.context() as patch:
    patch.setattr(subprocess, "run", no_run)
    again = sweep.sweep("configs/mnist.py", axes, root, jobs=2, out=io.StringIO())
  assert set(again.values()) == {"skipped"}
  assert {w: open(os.path.join(w, "metrics.jsonl")).read() for w in results} == before

  # Drop one run's final event, as a kill after its last checkpoint would: only it runs again,
  # resuming from that checkpoint, and ends with the same final metrics.
  unfinished = sorted(results)[0]
  path = os.path.join(unfinished, "metrics.jsonl")
  lines = open(path).readlines()
  assert json.loads(lines[-1])["event"] == "final"
  open(path, "w").writelines(lines[:-1])
  assert sweep.status(unfinished) == "unfinished"
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    out = io.StringIO()
    third = sweep.sweep("configs/mnist.py", axes, root, jobs=1, out=out)
  finally:
    os.chdir(cwd)
  assert third == {w: "done" if w == unfinished else "skipped" for w in results}, out.getvalue()
  assert "resuming" in out.getvalue()
  assert open(path).read() == before[unfinished]
  log = open(os.path.join(root, os.path.basename(unfinished) + ".log")).read()
  assert "resumed from the checkpoint at step 8" in log


def test_names_come_from_the_keys_with_several_values():
  axes = sweep.parse_axes(["opt.lr=0.1,0.03", "seed=0,1,2", "data.path=../data/x"])
  assert sweep.run_name({"opt.lr": "0.1", "seed": "2", "data.path": "../data/x"}, axes) == \
      "opt.lr=0.1,seed=2"
  assert sweep.run_name({"seed": "0"}, sweep.parse_axes(["seed=0"])) == "run"


@pytest.mark.parametrize("axes, needle", [
    (["opt.lr"], "expected KEY=VALUE"),
    (["opt.lr=0.1,"], "expected KEY=VALUE"),
    (["seed=0", "seed=1"], "given twice"),
])
def test_bad_axes_are_one_line_errors(axes, needle):
  with pytest.raises(UserError, match=needle):
    sweep.parse_axes(axes)


def test_unknown_key_is_refused_before_any_run(tmp_path, capsys):
  with pytest.raises(SystemExit) as raised:  # the command line, in this process
    sweep.main([os.path.join(REPO, "configs/mnist.py"), "opt.lrr=1", f"--root={tmp_path}"])
  assert raised.value.code == 1 and os.listdir(tmp_path) == []
  assert capsys.readouterr().err.splitlines()[-1].startswith(
      "jaxdl: error: opt.lrr: no such config key")
  with pytest.raises(UserError, match="unknown preset"):
    sweep.check_keys(os.path.join(REPO, "configs/mnist.py:nope"), [])


def test_the_script_prints_the_report(tmp_path):
  """experiments/sweep.sh end to end, on runs that are already finished: no training, a table."""
  # Fake a finished run in the workdir the script will look at.
  workdir = tmp_path / "run"  # one value per key: the run is just 'run'
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"opt": {"lr": 0.1}}))
  (workdir / "metrics.jsonl").write_text(
      json.dumps({"event": "final", "step": 5, "test_accuracy": 0.5}) + "\n")
  result = subprocess.run(
      [os.path.join(REPO, "experiments/sweep.sh"), "configs/mnist.py", "opt.lr=0.1",
       f"--root={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, "PYTHON": sys.executable})
  assert result.returncode == 0, result.stderr
  assert "finished already, skipped" in result.stdout
  assert "| run | step | test_accuracy |" in result.stdout
