"""One run per workdir, and no run's record erased in silence (jaxdl/lease.py), with real
processes on a real workdir: the lease is the OS's file lock, held across processes."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import (REPO, SMALL_MODEL, SUBPROCESS_CACHE, file_bytes, load_config, read_events,
                      run_main, set_keys)
from jaxdl import checkpoint, history, lease, metrics, train
from jaxdl.errors import UserError

# The tiny MNIST run of these tests, as flags (the subprocesses) and as a config (in-process).
FLAGS = {"model.name": SMALL_MODEL, "data.source": "synthetic", "data.synthetic_size": 200,
         "data.validation_size": 0, "batch_size": 16, "eval_batch_size": 32,
         "num_train_steps": 24, "log_every": 5, "eval_every": 10, "checkpoint_every": 8,
         "opt.warmup_steps": 4}


def _config():
  return set_keys(load_config("mnist"), FLAGS)


def _args(workdir, *more, **overrides):
  return ["--config=configs/mnist.py", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in {**FLAGS, **overrides}.items()), *more]


def _error_lines(stderr):
  return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
  """The run alone in its workdir: what every run below must end equal to."""
  workdir = str(tmp_path_factory.mktemp("alone") / "w")
  final = train.train_and_evaluate(_config(), workdir)
  return workdir, final


@pytest.mark.slow
def test_a_second_run_while_the_first_runs_is_refused_and_touches_nothing(alone, tmp_path,
                                                                          monkeypatch):
  """Staggered: the first run (this process) is at step 10, past its first checkpoint, when the
  same command starts in another process. That one is refused in one line naming the holder;
  the workdir is byte for byte as it was, and the first run ends as if alone."""
  workdir = str(tmp_path / "w")
  seen = {}
  write, enter = metrics.Writer.write, checkpoint.Checkpoints.__enter__

  def second_run_at_step_10(self, event, step, values):
    write(self, event, step, values)
    if event == "eval" and step == 10 and "second" not in seen:
      seen["ckpts"].wait()  # the first run's own writes, done before the second starts
      self._tb.flush()
      before = file_bytes(workdir)
      seen["second"] = run_main(*_args(workdir))
      after = file_bytes(workdir)
      seen["unchanged"] = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))

  monkeypatch.setattr(metrics.Writer, "write", second_run_at_step_10)
  monkeypatch.setattr(checkpoint.Checkpoints, "__enter__",
                      lambda self: seen.setdefault("ckpts", enter(self)))
  final = train.train_and_evaluate(_config(), workdir)
  second = seen["second"]
  assert second.returncode == 1, second.stderr[-2000:]
  lines = _error_lines(second.stderr)
  assert lines == [lines[0]] and lines[0].startswith(
      f"jaxdl: error: {workdir} is in use by another run (pid {os.getpid()} on "
      f"{socket.gethostname()}, since "), lines
  assert not seen["unchanged"], seen["unchanged"]
  assert final == alone[1] and read_events(workdir) == read_events(alone[0])
  assert open(os.path.join(workdir, lease.LEASE)).read() == ""  # released at the end


@pytest.mark.slow
def test_two_runs_started_at_once_one_is_refused(alone, tmp_path):
  """Two fresh starts of one command at the same moment: one runs to the end, equal to a run
  alone; the other is refused in one line, whether it finds the lease held or (slower) finds
  the workdir written meanwhile by the first."""
  workdir = str(tmp_path / "w")
  env = {**os.environ, "JAXDL_XLA_CACHE": SUBPROCESS_CACHE}
  procs = [subprocess.Popen([sys.executable, "-m", "jaxdl.main", *_args(workdir)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  codes = sorted(p.returncode for p in procs)
  assert codes == [0, 1], outputs
  _, stderr = outputs[[p.returncode for p in procs].index(1)]
  lines = _error_lines(stderr)
  assert len(lines) == 1 and (" is in use by another run (pid " in lines[0]
                              or " changed while this run was starting" in lines[0]), lines
  assert read_events(workdir) == read_events(alone[0])


def test_a_lease_left_by_a_dead_run_is_taken_over(alone, tmp_path, caplog):
  """A killed run's lease file still names it, but the OS dropped its lock with the process:
  the next start takes the lease over with a WARNING naming the dead holder."""
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  with open(os.path.join(workdir, lease.LEASE), "w") as f:
    json.dump({"host": socket.gethostname(), "pid": int(dead), "start_time": "then",
               "command": "python -m jaxdl.main ..."}, f)
  caplog.set_level("WARNING")
  with lease.held(workdir):
    holder = json.loads(open(os.path.join(workdir, lease.LEASE)).read())
    assert holder["pid"] == os.getpid()
    with pytest.raises(UserError, match=f"is in use by another run \\(pid {os.getpid()} "):
      with lease.held(os.path.join(workdir, ".", "")):  # another spelling, the same directory
        pass
  assert any(f"pid {dead} on" in r.getMessage() and "took over" in r.getMessage()
             for r in caplog.records)


def test_a_record_without_checkpoints_is_refused_and_restart_keeps_it(alone, tmp_path,
                                                                       capsys):
  """Checkpoints deleted to save space: a fresh start would empty metrics.jsonl and overwrite
  config.json. It is refused, changing nothing; --restart keeps the record in previous-<time>/
  and the new run ends as one alone."""
  workdir = str(tmp_path / "w")
  shutil.copytree(alone[0], workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  before = file_bytes(workdir)
  with pytest.raises(UserError, match=r"holds the record of a run \(metrics.jsonl: \d+ events "
                     r"up to step 24, the run finished; run.json: 1 start\(s\), checkpoints "
                     r"saved up to step 24\) but no checkpoint to resume; re-run with --restart"):
    train.train_and_evaluate(_config(), workdir)
  assert file_bytes(workdir) == before
  capsys.readouterr()
  final = train.train_and_evaluate(_config(), workdir, restart=True)
  kept = [n for n in os.listdir(workdir) if n.startswith(history.PREVIOUS)]
  assert len(kept) == 1
  assert f"--restart: kept what {workdir} held in {os.path.join(workdir, kept[0])}" in (
      capsys.readouterr().out)
  old = file_bytes(os.path.join(workdir, kept[0]))
  assert old.pop("restarted.txt").startswith(b"kept aside by --restart at ")
  assert old == before  # every byte kept, nothing deleted
  assert final == alone[1] and read_events(workdir) == read_events(alone[0])
  # A run killed before its first checkpoint left nothing a fresh start would not redo: no
  # refusal (a scheduler that restarts a killed job relies on it); test_train.py covers that run.
  assert not history.record_evidence(str(tmp_path / "empty"))


@pytest.mark.slow
def test_restart_on_the_command_line(alone, tmp_path):
  """--restart is a flag of jaxdl.main; a finished run's workdir is kept aside whole."""
  workdir = str(tmp_path / "w")
  shutil.copytree(alone[0], workdir)
  result = run_main(*_args(workdir, "--restart", num_train_steps=8))
  assert result.returncode == 0, result.stderr[-2000:]
  kept = [n for n in os.listdir(workdir) if n.startswith(history.PREVIOUS)]
  assert sorted(os.listdir(os.path.join(workdir, kept[0], "checkpoints"))) == ["16", "24", "8"]
  assert [e["step"] for e in read_events(workdir) if e["event"] == "final"] == [8]


def test_a_kill_before_the_first_save_committed_is_no_record(alone, tmp_path):
  """Saves are asynchronous: a job killed after logging step 10 may not have committed its
  step-8 checkpoint (seen in test_multihost's kill). Its record holds nothing a fresh start does
  not redo, so it is no evidence; run.json's `last_checkpoint` is what tells a run that did save."""
  workdir = tmp_path / "w"
  shutil.copytree(alone[0], workdir)
  shutil.rmtree(workdir / "checkpoints")
  events = [e for e in metrics.read_events(str(workdir / "metrics.jsonl")) if e["step"] <= 10]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
  record = json.loads((workdir / "run.json").read_text())
  assert record["segments"][0]["last_checkpoint"] == 24  # written as each save committed
  record["segments"][0].update(end_time=None, end_step=None, final=None, last_checkpoint=None)
  (workdir / "run.json").write_text(json.dumps(record))
  assert history.record_evidence(str(workdir)) == []
  record["segments"][0]["last_checkpoint"] = 8
  (workdir / "run.json").write_text(json.dumps(record))
  assert history.record_evidence(str(workdir)) == [
      f"metrics.jsonl: {len(events)} events up to step 10",
      "run.json: 1 start(s), checkpoints saved up to step 8"]
