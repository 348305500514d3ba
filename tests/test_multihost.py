"""Multi-process jobs for real: two `python -m jaxdl.main` processes on 127.0.0.1 with 2 CPU
devices each (gloo collectives) form one 4-device job. Each test kills what it started."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import (REPO, SMALL_MODEL, SUBPROCESS_CACHE, assert_close_events, assert_same_params,
                      flag_values, load_config, read_events, run_main, set_keys)
from jaxdl import parallel, runs, train
from jaxdl.errors import UserError

# Tiny synthetic MNIST; a constant learning rate so that the 8-step job and a 12-step run follow
# the same schedule.
ARGS = ["--config=configs/mnist.py", f"--config.model.name={SMALL_MODEL}",
        "--config.data.source=synthetic",
        "--config.data.synthetic_size=128", "--config.batch_size=16",
        "--config.eval_batch_size=16", "--config.log_every=4", "--config.checkpoint_every=4",
        "--config.opt.schedule=constant", "--config.eval_every=1000"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(*args, devices, cache=SUBPROCESS_CACHE, program=("-m", "jaxdl.main"), env=None):
  """`python -m jaxdl.main ARGS` (or `python PROGRAM ARGS`) on `devices` CPU devices, with the
  test session's persistent compilation cache (restarted processes skip XLA's compile time),
  never the user's; `env` added to this process's."""
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAXDL_XLA_CACHE": cache,
         **(env or {})}
  return subprocess.Popen([sys.executable, *program, *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _start_job(args, processes=2, devices=2, **start):
  """The processes of one job, each with a compilation cache of its own: two processes writing
  the same entries of one cache at once is a race this test suite does not need. `start`:
  _start's program and env."""
  port = _free_port()
  return [_start(*args, *_job(port, processes, i), devices=devices,
                 cache=os.path.join(SUBPROCESS_CACHE, f"process-{i}") if SUBPROCESS_CACHE else "",
                 **start)
          for i in range(processes)]


def _beside_one_process(args, job, single, **start):
  """Runs a 2-process job (2 devices each) into `job` and, at the same time, one process with
  4 devices into `single`; each process's (stdout, stderr), once all have exited 0. `start`:
  the job's program and env (_start's)."""
  procs = _start_job([*args, f"--workdir={job}"], **start)
  procs.append(_start(*args, f"--workdir={single}", devices=4))
  outputs = _finish(procs)
  assert all(p.returncode == 0 for p in procs), _report(procs, outputs)
  return outputs


def _wait_for_line(proc, prefix, timeout=120):
  """Reads proc's stdout until a line starts with `prefix`; returns the lines read."""
  lines, deadline = [], time.monotonic() + timeout
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(prefix) or time.monotonic() > deadline:
      break
  if not (lines and lines[-1].startswith(prefix)):
    ended = proc.poll() is not None  # its stderr says why (a process still running could block)
    pytest.fail("".join(lines) + (f"\nexit {proc.returncode}, stderr: ...{proc.stderr.read()[-3000:]}"
                                  if ended else ""))
  return lines


def _params(workdir):
  return runs.read_variables(workdir)[1]


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


@pytest.mark.slow
def test_a_process_count_that_disagrees_with_the_coordinator(tmp_path):
  port = _free_port()
  workdir = str(tmp_path / "w")
  procs = [_start(*ARGS, "--config.num_train_steps=8", f"--workdir={workdir}",
                  *_job(port, n, i), devices=2, cache="") for i, n in ((0, 2), (1, 3))]
  outputs = _finish(procs, timeout=120)
  for p, (_, err) in zip(procs, outputs):  # both stop, with the same line
    assert p.returncode == 1, err[-2000:]
    lines = [l for l in err.splitlines() if l.startswith("jaxdl: error:")]
    assert lines == [f"jaxdl: error: process 1 has --num_processes=3, which disagrees with the "
                     f"coordinator at 127.0.0.1:{port}, whose job has 2 processes"], err[-2000:]
  assert not os.path.exists(workdir)


@pytest.mark.slow
def test_processes_that_do_not_share_the_workdir_or_the_config_stop_in_one_line(tmp_path):
  """Process 1 writes to another directory (as on a node-local disk) with another seed: each
  process stops at start-up with the same line naming what differs, instead of both hanging at
  the first save (Orbax's 600 s timeout)."""
  port = _free_port()
  procs = [_start(*ARGS, "--config.num_train_steps=8", f"--workdir={tmp_path / workdir}",
                  *extra, *_job(port, 2, i), devices=2, cache="")
           for i, (workdir, extra) in enumerate((("w", []), ("other", ["--config.seed=1"])))]
  start = time.monotonic()
  outputs = _finish(procs, timeout=120)
  assert time.monotonic() - start < 60
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 1, err[-2000:]
    lines = [l for l in err.splitlines() if l.startswith("jaxdl: error:")]
    assert lines == [
        "jaxdl: error: the processes of this job disagree: process 1 differs from process 0 in "
        "the workdir's files (not shared with process 0: a node-local disk? use gs:// or a "
        "shared file system) and the config; run the same command, with the same jaxdl, on "
        f"every process, with one shared --workdir={tmp_path / ('w' if p is procs[0] else 'other')}"
    ], err[-2000:]
  assert open(tmp_path / "w" / "lease.json").read() == ""  # process 0 released its lease


@pytest.mark.slow
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


# A longer 2-process run for the stop and kill tests: evals, and log/checkpoint intervals that
# differ, so a save often holds partial metric sums of a log interval.
# (6 % 4: the saves at 6, 18, 30 and 42 hold a log interval's partial sums.) fsdp: the state is
# sharded over all 4 devices of both processes, so each process saves and restores only its
# shards of every large array.
LONG = [*ARGS, "--config.num_train_steps=48", "--config.log_every=4", "--config.eval_every=16",
        "--config.checkpoint_every=6", "--config.parallel.fsdp=True",
        "--config.parallel.fsdp_min_size=64"]


@pytest.fixture(scope="module")
def two_process_reference(tmp_path_factory):
  """An uninterrupted 2-process run of LONG, and a 1-process 4-device one, run side by side."""
  root = tmp_path_factory.mktemp("mp")
  job, single = str(root / "job"), str(root / "single")
  outputs = _beside_one_process(LONG, job, single)
  assert "4 cpu device(s) in 2 processes, batch 16 (4 per device) | jit+fsdp" in outputs[0][0]
  # Process 1 prints nothing of its own: process 0 logs. Gloo (C++) announces each connection
  # itself, from several threads without a lock, so its words interleave anywhere (seen: a
  # line "2 is connected to ..." in CI, a lone "3" here): remove its words and numbers, and
  # nothing may be left.
  gloo = r"\[Gloo\] Rank|is connected to|(Expected number of connected )?peer ranks( is :|\.)|\d+"
  assert not re.sub(gloo, "", outputs[1][0]).strip(), outputs[1][0]
  return job, single


@pytest.mark.slow
def test_two_processes_match_one_process(two_process_reference):
  """The same global batches on the same 4-device mesh: the same train, eval and final
  numbers (they were bitwise equal when measured; the tolerance only allows for another
  all-reduce order)."""
  job, single = two_process_reference
  got, want = read_events(job), read_events(single)
  assert {e["event"] for e in got} == {"train", "eval", "final"}
  assert_close_events(got, want, rtol=1e-6)


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_on_one_device(two_process_reference, tmp_path,
                                                        capsys):
  """The job's oldest kept checkpoint (4 devices, 2 processes) restores in this pytest process,
  on one CPU device (Orbax reshards), and continues as the reference did; a 1-device batch
  mean sums in another order (rtol 1e-5)."""
  job, single = two_process_reference
  workdir = str(tmp_path / "w")
  shutil.copytree(job, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  kept = sorted(int(n) for n in os.listdir(ckpts) if n.isdigit())
  for step in kept[1:]:
    shutil.rmtree(os.path.join(ckpts, str(step)))
  train.train_and_evaluate(set_keys(load_config("mnist"), flag_values(LONG)), workdir)
  assert f"resumed from the checkpoint at step {kept[0]}" in capsys.readouterr().out
  assert_close_events(read_events(workdir), read_events(single), rtol=1e-5)


@pytest.mark.slow
def test_two_processes_stopped_and_killed_resume_bitwise(two_process_reference, tmp_path):
  """The whole job SIGKILLed at a seeded random moment (a step line, then up to 0.3 s more:
  mid-step or mid-save); then SIGTERM to process 1 alone (a preempted host): both save the same
  step and exit 0; then Ctrl-C on process 0 alone: both save one step, it exits 130; then the
  newest checkpoint truncated. Restarted each time with the same commands, the job ends as the
  uninterrupted one did, bit for bit. (Kills of one process at more moments, one mid-save among
  them: test_faults.py's chaos test.)"""
  reference, _ = two_process_reference
  workdir = str(tmp_path / "w")
  rng = np.random.default_rng(0)
  # Early step lines: a stop passed through JAX's preemption sync lands some steps after the
  # signal (measured: 3 in a fresh job, 12 in a resumed one), and each stop must land before
  # the job's 48 steps are done.
  at = sorted(rng.choice(np.arange(4, 16, 4), 2, replace=False).tolist())
  procs = _start_job([*LONG, f"--workdir={workdir}"])
  try:
    _wait_for_line(procs[0], f"step {at[0]:>2}/")
    time.sleep(float(rng.uniform(0, 0.3)))
  finally:
    _kill_all(procs)

  procs = _start_job([*LONG, f"--workdir={workdir}"])
  _wait_for_line(procs[0], f"step {at[1]:>2}/")
  procs[1].send_signal(signal.SIGTERM)
  outputs = _finish(procs)
  assert [p.returncode for p in procs] == [0, 0], _report(procs, outputs)
  saved = re.search(r"SIGTERM: saved the checkpoint at step (\d+)", outputs[0][0])
  assert saved, _report(procs, outputs)
  stopped = int(saved.group(1))
  assert at[1] <= stopped < 48 and str(stopped) in os.listdir(os.path.join(workdir, "checkpoints"))

  procs = _start_job([*LONG, f"--workdir={workdir}"])
  _wait_for_line(procs[0], f"resumed from the checkpoint at step {stopped} ")
  procs[0].send_signal(signal.SIGINT)  # Ctrl-C on process 0: both save one step
  outputs = _finish(procs)
  assert [p.returncode for p in procs] == [130, 0], _report(procs, outputs)
  saved = int(re.search(r"SIGINT: saved the checkpoint at step (\d+)", outputs[0][0]).group(1))

  # A save cut short on shared storage: both processes must fall back to the same older step.
  step_dir = os.path.join(workdir, "checkpoints", str(saved))
  files = [os.path.join(d, f) for d, _, names in os.walk(step_dir) for f in names]
  largest = max(files, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)
  procs = _start_job([*LONG, f"--workdir={workdir}"])
  outputs = _finish(procs)
  assert all(p.returncode == 0 for p in procs), _report(procs, outputs)
  assert f"damaged-{saved}" in os.listdir(os.path.join(workdir, "checkpoints"))
  assert re.search(r"resumed from the checkpoint at step \d+", outputs[0][0])
  assert read_events(workdir) == read_events(reference), at
  assert_same_params(_params(workdir), _params(reference))


@pytest.mark.slow
def test_a_job_whose_peer_hangs_still_stops_on_sigterm(tmp_path):
  """Process 1 frozen (SIGSTOP: a host that hangs): process 0 waits in a collective, in C++,
  where no Python signal handler runs. A SIGTERM still ends it at --stop_timeout, in one line,
  well within 60 s."""
  procs = _start_job([*LONG, f"--workdir={tmp_path / 'w'}", "--stop_timeout=3"])
  try:
    _wait_for_line(procs[0], "step  4/")
    procs[1].send_signal(signal.SIGSTOP)
    time.sleep(1.0)  # process 0 runs on into its next collective
    start = time.monotonic()
    procs[0].send_signal(signal.SIGTERM)
    _, stderr = procs[0].communicate(timeout=60)
    took = time.monotonic() - start
  finally:
    _kill_all(procs)  # SIGKILL ends a stopped process too
  assert procs[0].returncode == 1 and took < 60, (procs[0].returncode, took, stderr[-3000:])
  assert stderr.strip().splitlines()[-1].startswith(
      "jaxdl: error: SIGTERM came 3 s ago and the run has not stopped: it waits in "), stderr
  assert "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_too_few_processes_give_up_after_the_initialization_timeout(tmp_path):
  workdir, port = str(tmp_path / "w"), _free_port()
  start = time.monotonic()
  result = run_main(*ARGS, f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2", "--process_id=0", "--initialization_timeout=3")
  assert result.returncode == 1 and time.monotonic() - start < 60
  assert result.stderr.strip().splitlines()[-1] == (
      "jaxdl: error: not every process joined the job at --coordinator_address="
      f"127.0.0.1:{port} within --initialization_timeout=3 s: a process is "
      "missing or still starting, or a host was given another --coordinator_address or "
      "--num_processes"), result.stderr[-2000:]
  assert not os.path.exists(workdir)


@pytest.mark.slow
def test_a_prepared_lm_corpus_in_two_processes(tmp_path, capsys):
  """A language model trained from a prepared corpus (data/tokens.py) by a 2-process job logs
  what one 4-device process logs, and the job's checkpoint resumes in this one process, on one
  device (its data position, with the corpus's sha256, is the same)."""
  from conftest import write_play  # pylint: disable=g-import-not-at-top
  from jaxdl.data import tokens  # pylint: disable=g-import-not-at-top
  write_play(str(tmp_path / "play.txt"))
  prepared = str(tmp_path / "tokens")
  tokens.prepare(str(tmp_path / "play.txt"), prepared, "chars", 0.1)
  args = ["--config=configs/tiny_lm.py", f"--config.data.path={prepared}",
          "--config.model.num_layers=1", "--config.model.width=32", "--config.model.num_heads=2",
          "--config.model.block_size=16", "--config.model.dropout=0.0", "--config.batch_size=8",
          "--config.eval_batch_size=16", "--config.data.eval_windows=32",
          "--config.num_train_steps=12", "--config.log_every=4", "--config.eval_every=6",
          "--config.checkpoint_every=6", "--config.opt.schedule=constant"]
  job, single = str(tmp_path / "job"), str(tmp_path / "single")
  _beside_one_process(args, job, single)
  assert_close_events(read_events(job), read_events(single), rtol=1e-6)
  _resume_in_one_process(job, single, "tiny_lm", args, 6, str(tmp_path / "resumed"), capsys)


def _resume_in_one_process(job, single, config, args, step, workdir, capsys):
  """The job's workdir copied to `workdir` without its last checkpoint (12), resumed in this
  process on one device from checkpoint `step`: it ends logging what `single` logged."""
  shutil.copytree(job, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "12"))
  train.train_and_evaluate(set_keys(load_config(config), flag_values(args)), workdir)
  assert f"resumed from the checkpoint at step {step}" in capsys.readouterr().out
  assert_close_events(read_events(workdir), read_events(single), rtol=1e-5)


# A process of a job that counts what it reads: `python -m jaxdl.main` (runpy) with the records'
# read wrapped to note the size and rows of every read of the training split, written as JSON to
# $JAXDL_TEST_READS-<process_id>.json when the run ends.
_COUNTING = """
import json, os, runpy, sys
from jaxdl.data import records
reads, read = [], records.Records.read
def counting(self, indices):
  if self.split == "train":
    reads.append([int(i) for i in indices])
  return read(self, indices)
records.Records.read = counting
sys.argv = ["jaxdl.main", *sys.argv[1:]]
process = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--process_id="))
try:
  runpy.run_module("jaxdl.main", run_name="__main__", alter_sys=True)
finally:
  with open(f"{os.environ['JAXDL_TEST_READS']}-{process}.json", "w") as f:
    json.dump(reads, f)
"""


@pytest.mark.slow
def test_records_streamed_in_two_processes(tmp_path, capsys):
  """Image records (data/records.py) streamed through Grain by a 2-process job, beside one
  4-device process: the job logs what the one process logs, and its checkpoint resumes in this
  one process, on one device (the data position, with the records' hash, is the same). Each
  process reads only its own rows: every read of the training split is its 8 rows of a global
  batch of 16 (the runner's sample batch), or of each step of a block of 8 (64), never 16 or
  128; what the two read of step 0 is that global batch, in its halves."""
  from conftest import tiny_mnist_config, write_mnist_dir  # pylint: disable=g-import-not-at-top
  from jaxdl import prepare  # pylint: disable=g-import-not-at-top
  from jaxdl.data import records  # pylint: disable=g-import-not-at-top
  from jaxdl.data.iterator import TrainBatches  # pylint: disable=g-import-not-at-top
  write_mnist_dir(str(tmp_path / "idx"), n_train=96, n_test=20, learnable=True)
  config = tiny_mnist_config()
  config.data.source, config.data.path = "files", str(tmp_path / "idx")
  rec = str(tmp_path / "records")
  prepare.prepare(config, rec)
  args = [*ARGS[:2], "--config.data.source=files", f"--config.data.path={rec}",
          "--config.data.validation_size=0", *ARGS[4:], "--config.num_train_steps=12",
          "--config.data.streaming=on"]
  job, single = str(tmp_path / "job"), str(tmp_path / "single")
  script = tmp_path / "counting.py"
  script.write_text(_COUNTING)
  _beside_one_process(args, job, single, program=(str(script),),
                      env={"JAXDL_TEST_READS": str(tmp_path / "reads")})
  assert_close_events(read_events(job), read_events(single), rtol=1e-6)
  reads = [json.loads((tmp_path / f"reads-{i}.json").read_text()) for i in range(2)]
  for process in reads:
    assert process and {len(r) for r in process} <= {8, 64}, [len(r) for r in process]
  step0 = TrainBatches(records.RecordRows(records.Records(rec, "train", records.read_meta(rec))),
                       16, 0).indices(0)[0]
  assert reads[0][0] + reads[1][0] == step0.tolist()
  _resume_in_one_process(job, single, "mnist", args, 8, str(tmp_path / "resumed"), capsys)
