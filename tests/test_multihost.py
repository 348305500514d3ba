"""Multi-process jobs for real: two `python -m jaxdl.main` processes on 127.0.0.1 with 2 CPU
devices each (gloo collectives) form one 4-device job. Each test kills what it started."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, load_config, run_main
from jaxdl import parallel, train
from jaxdl.errors import UserError

# Tiny synthetic MNIST; a constant learning rate so that the 8-step job and a 12-step run follow
# the same schedule.
ARGS = ["--config=configs/mnist.py", "--config.data.source=synthetic",
        "--config.data.synthetic_size=128", "--config.batch_size=16",
        "--config.eval_batch_size=16", "--config.log_every=4", "--config.checkpoint_every=4",
        "--config.opt.schedule=constant", "--config.eval_every=1000"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(*args, devices):
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices)}
  return subprocess.Popen([sys.executable, "-m", "jaxdl.main", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_all(procs):
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.communicate()


def _finish(procs, timeout=240):
  """Each process's (stdout, stderr) once all have exited. If one is still running after
  `timeout` seconds in all, kills them all and fails with every process's output, so that a
  hang can be read from the test log (the 2-process test failed once, its output lost)."""
  deadline = time.monotonic() + timeout
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
  except subprocess.TimeoutExpired:
    for p in procs[len(outputs):]:
      p.kill()
      outputs.append(p.communicate())  # retrying after a timeout loses no output
    pytest.fail(f"still running after {timeout} s, killed:\n" + _report(procs, outputs))
  finally:
    _kill_all(procs)
  return outputs


def _report(procs, outputs, chars=3000):
  """Every process's exit status and the tail of its stdout and stderr."""
  return "\n".join(f"--- process {i}: exit {p.returncode}\nstdout: ...{out[-chars:]}\n"
                   f"stderr: ...{err[-chars:]}"
                   for i, (p, (out, err)) in enumerate(zip(procs, outputs)))


def _job(port, num_processes, process_id):
  return [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
          f"--process_id={process_id}"]


def _config_from_args(args):
  """configs/mnist.py with ARGS' --config.k=v overrides applied, as config_flags would."""
  config = load_config("mnist")
  for arg in args:
    if arg.startswith("--config."):
      key, value = arg[len("--config."):].split("=", 1)
      *parents, leaf = key.split(".")
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = type(node[leaf])(value)
  return config


def _events(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k != "examples_per_s"} for line in f]


def _assert_close(events, expected, rtol):
  assert [(e["event"], e["step"]) for e in events] == [(e["event"], e["step"]) for e in expected]
  for got, want in zip(events, expected):
    for key, value in want.items():
      if isinstance(value, float):
        np.testing.assert_allclose(got[key], value, rtol=rtol, err_msg=f"{got}")
      else:
        assert got[key] == value, (got, want)


def test_two_processes_match_one_process_and_resume_on_one_device(tmp_path, capsys):
  job_dir, ref_dir = str(tmp_path / "job"), str(tmp_path / "ref")
  port = _free_port()
  # The 2-process job (8 steps) and the 1-process, 4-device reference (12 steps) run together.
  procs = [_start(*ARGS, "--config.num_train_steps=8", f"--workdir={job_dir}",
                  *_job(port, 2, i), devices=2) for i in range(2)]
  procs.append(_start(*ARGS, "--config.num_train_steps=12", f"--workdir={ref_dir}", devices=4))
  outputs = _finish(procs)
  assert all(p.returncode == 0 for p in procs), _report(procs, outputs)
  assert "4 cpu device(s) in 2 processes, batch 16 (4 per device)" in outputs[0][0]
  # Process 1 prints nothing of its own: process 0 logs. Gloo (C++) announces each connection
  # itself, from several threads without a lock, so its words interleave anywhere (seen: a
  # line "2 is connected to ..." in CI, a lone "3" here): remove its words and numbers, and
  # nothing may be left.
  gloo = r"\[Gloo\] Rank|is connected to|(Expected number of connected )?peer ranks( is :|\.)|\d+"
  assert not re.sub(gloo, "", outputs[1][0]).strip(), outputs[1][0]

  # The same global batches on the same 4-device mesh: the same metrics (they were bitwise equal
  # when measured; the tolerance only allows for a different all-reduce order).
  ref = _events(ref_dir)
  job = _events(job_dir)
  _assert_close([e for e in job if e["event"] == "train"], [e for e in ref if e["step"] <= 8],
                rtol=1e-6)
  assert sorted(os.listdir(os.path.join(job_dir, "checkpoints"))) == ["4", "8"]

  # The job's 4-device checkpoint restores in one process with one device (Orbax reshards) and
  # continues as the reference did; a 1-device batch mean sums in another order (rtol 1e-5).
  # (This pytest process is that single process: one CPU device.)
  config = _config_from_args(ARGS + ["--config.num_train_steps=12"])
  train.train_and_evaluate(config, job_dir)
  assert "resumed from the checkpoint at step 8" in capsys.readouterr().out
  _assert_close(_events(job_dir), ref, rtol=1e-5)


def test_a_process_count_that_disagrees_with_the_coordinator(tmp_path):
  port = _free_port()
  workdir = str(tmp_path / "w")
  procs = [_start(*ARGS, "--config.num_train_steps=8", f"--workdir={workdir}",
                  *_job(port, n, i), devices=2) for i, n in ((0, 2), (1, 3))]
  outputs = _finish(procs, timeout=120)
  for p, (_, err) in zip(procs, outputs):  # both stop, with the same line
    assert p.returncode == 1, err[-2000:]
    lines = [l for l in err.splitlines() if l.startswith("jaxdl: error:")]
    assert lines == [f"jaxdl: error: process 1 has --num_processes=3, which disagrees with the "
                     f"coordinator at 127.0.0.1:{port}, whose job has 2 processes"], err[-2000:]
  assert not os.path.exists(workdir)


def test_job_flags_without_a_coordinator_are_one_line(tmp_path):
  workdir = str(tmp_path / "w")
  result = run_main(*ARGS, f"--workdir={workdir}", "--num_processes=2", "--process_id=0")
  assert result.returncode == 1 and not os.path.exists(workdir)
  assert result.stderr == ("jaxdl: error: --num_processes and --process_id need "
                           "--coordinator_address=HOST:PORT (the address of process 0)\n")


@pytest.mark.parametrize("address, num_processes, process_id, needle", [
    ("127.0.0.1", 2, 0, "--coordinator_address=127.0.0.1: must be HOST:PORT"),
    ("127.0.0.1:1", 2, 2, "--process_id=2: must be in 0..1"),
    ("127.0.0.1:1", 2, -1, "go together"),
    ("", 0, 1, "need --coordinator_address"),
])
def test_bad_job_flags(address, num_processes, process_id, needle):
  with pytest.raises(UserError, match=needle):  # all raised before jax.distributed is touched
    parallel.initialize(address, num_processes, process_id)
