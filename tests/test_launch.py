"""launch.sh, run with --dry-run (no gcloud, no network): the printed gcloud lines, and the
remote commands they carry, executed here by bash as a TPU worker's shell would execute them."""

import os
import shlex
import subprocess
import time

import pytest

from conftest import REPO

ENV = {"TPU_NAME": "my-tpu", "TPU_ZONE": "us-central2-b", "PATH": os.environ["PATH"]}
# Overrides a shell would mangle without correct quoting: spaces, both quotes, $, backticks, a
# glob, a newline, and an empty value.
TRICKY = ["--config.data.name=it's a \"test\"", "--config.data.path=$HOME/`x` *",
          "--config.seed=1\n2", "--config.data.tfds_dir="]


def _launch(*args, env=None):
  return subprocess.run(["bash", os.path.join(REPO, "launch.sh"), *args], capture_output=True,
                        text=True, env={**ENV, **(env or {})}, timeout=30)


def _gcloud_lines(*args, env=None):
  """The printed command lines, each split back into argv words as a shell would."""
  result = _launch("--dry-run", *args, env=env)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in _split_lines(result.stdout)]


def _split_lines(text):
  """Printed lines; a quoted argument may itself contain a newline, so split with shlex."""
  lines, current = [], ""
  for line in text.splitlines(keepends=True):
    current += line
    try:
      shlex.split(current)
    except ValueError:  # an open quote: the command continues on the next line
      continue
    lines.append(current.rstrip("\n"))
    current = ""
  assert not current, f"unterminated quote in {current!r}"
  return lines


def _remote_command(argv):
  assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
  assert argv[5] == "my-tpu" and "--zone=us-central2-b" in argv
  (command,) = [a for a in argv if a.startswith("--command=")]
  return command[len("--command="):]


def _fake_worker(tmp_path):
  """A worker's $HOME: the checkout, and a venv 'python' that records its argv and waits."""
  home = tmp_path / "home"
  (home / "jaxdl").mkdir(parents=True)
  python = home / "jaxdl-venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  # Written aside and renamed, so the test never reads a file that printf has yet to fill.
  python.write_text('#!/bin/bash\nprintf "%s\\0" "$@" > "$HOME/argv.tmp"\n'
                    'mv "$HOME/argv.tmp" "$HOME/argv"\nexec sleep 60\n')
  python.chmod(0o755)
  return home


def test_run_passes_every_override_through_unchanged(tmp_path):
  args = ["--workdir=gs://bucket/runs/r1", "--config=configs/mnist.py:seed", *TRICKY]
  (argv,) = _gcloud_lines("run", *args)
  assert "--worker=all" in argv
  command = _remote_command(argv)

  # Run the remote command with bash, as ssh does on each worker, and read the argv it gave.
  home = _fake_worker(tmp_path)
  env = {"HOME": str(home), "PATH": os.environ["PATH"]}
  started = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                           timeout=30)
  pid_file = home / "jaxdl-runs" / "r1.pid"
  try:
    assert started.returncode == 0, started.stderr
    assert "started pid" in started.stdout
    deadline = time.time() + 10
    while not (home / "argv").exists() and time.time() < deadline:
      time.sleep(0.05)
    received = (home / "argv").read_text().split("\0")[:-1]
    # jaxdl's deadline after SIGTERM is stop's default wait
    assert received == ["-m", "jaxdl.main", args[0], "--stop_timeout=300", *args[1:]]
    pid = int(pid_file.read_text())
    os.kill(pid, 0)  # the run is alive after the 'ssh' shell has exited

    # stop: the same remote shell ends the detached process group.
    (stop_argv,) = _gcloud_lines("stop", "--run-name=r1")
    stopped = subprocess.run(["bash", "-c", _remote_command(stop_argv)], env=env,
                             capture_output=True, text=True, timeout=30)
    assert f"stopped {pid}" in stopped.stdout, stopped
    deadline = time.time() + 10
    while _alive(pid) and time.time() < deadline:
      time.sleep(0.05)
    assert not _alive(pid)
  finally:
    if pid_file.exists() and _alive(int(pid_file.read_text())):
      os.killpg(int(pid_file.read_text()), 9)


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A killed child of ours that nobody reaped yet is a zombie: dead for this purpose.
  with open(f"/proc/{pid}/stat") as f:
    return f.read().split(")")[-1].split()[0] != "Z"


def test_every_subcommand_prints_its_gcloud_lines():
  create = _gcloud_lines("create", "--accelerator-type=v4-32", "--version=v2-alpha", "--spot",
                         "--project=p1")
  assert create == [["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu",
                     "--zone=us-central2-b", "--project=p1", "--accelerator-type=v4-32",
                     "--version=v2-alpha", "--spot"]]
  setup = _gcloud_lines("setup")
  assert setup[1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert "jaxdl-src-XXXXXX" in setup[1][5]  # made by mktemp, not a name others can predict
  assert "--worker=all" in setup[1] and "pip install" in _remote_command(setup[2])
  # the tested set: every package pinned by the committed constraints file
  assert "pip install -q --python ~/jaxdl-venv/bin/python -c ~/jaxdl/constraints.txt 'jax[tpu]'" \
      in _remote_command(setup[2])
  logs = _gcloud_lines("logs", "--workdir=gs://b/runs/r2/", "--worker=1")
  assert "--worker=1" in logs[0] and "~/jaxdl-runs/r2.log" in _remote_command(logs[0])
  assert _gcloud_lines("delete")[0][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete",
                                            "my-tpu"]
  # The environment supplies what flags do not; flags win.
  env_lines = _gcloud_lines("create", env={"TPU_ACCELERATOR_TYPE": "v5litepod-8",
                                           "TPU_PROJECT": "p2"})
  assert "--accelerator-type=v5litepod-8" in env_lines[0] and "--project=p2" in env_lines[0]
  assert _gcloud_lines("delete", "--name=other")[0][5] == "other"


@pytest.mark.parametrize("args, needle", [
    (["run", "--config=configs/mnist.py"], "--workdir=gs://"),
    (["run", "--workdir=runs/local", "--config=configs/mnist.py"], "must be a gs:// path"),
    (["run", "--workdir=gs://b/r"], "--config=FILE"),
    (["create", "--config.x=1"], "takes no jaxdl arguments"),
    (["create", "--bogus"], "unknown argument: --bogus"),
    (["setup", "--name=../../etc/x"], "--name=../../etc/x: a TPU name is lowercase letters"),
    ([], "no subcommand"),
])
def test_mistakes_are_one_line(args, needle):
  result = _launch("--dry-run", *args)
  assert result.returncode == 1 and result.stdout == ""
  assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr


def test_missing_name_or_zone():
  result = subprocess.run(["bash", os.path.join(REPO, "launch.sh"), "--dry-run", "delete"],
                          capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
  assert result.returncode == 1 and "TPU_NAME" in result.stderr


def test_help_explains_every_subcommand():
  result = _launch("--help")
  assert result.returncode == 0
  for sub in ("create", "setup", "run", "logs", "stop", "delete", "--dry-run"):
    assert f"\n  {sub} " in result.stdout or f"  {sub}  " in result.stdout, sub


def _fake_jaxdl(home, body):
  """The worker's venv 'python' replaced by a bash script: `body` decides how it meets SIGTERM."""
  python = home / "jaxdl-venv" / "bin" / "python"
  python.write_text("#!/bin/bash\n" + body + "\n")
  python.chmod(0o755)


def _on_worker(command, home, timeout=60):
  return subprocess.run(["bash", "-c", command], env={"HOME": str(home), "PATH": os.environ["PATH"]},
                        capture_output=True, text=True, timeout=timeout)


def _start(home, *args):
  (argv,) = _gcloud_lines("run", "--workdir=gs://bucket/runs/r1", "--config=configs/mnist.py",
                          *args)
  return _on_worker(_remote_command(argv), home)


def _kill_all(home):
  for pid_file in (home / "jaxdl-runs").glob("*.pid"):
    pid = int(pid_file.read_text())
    if _alive(pid):
      try:
        os.killpg(pid, 9)
      except ProcessLookupError:  # it ended between the check and the kill (seen once, 12-02)
        pass


def test_a_second_run_on_the_same_name_or_workdir_is_refused_unless_forced(tmp_path):
  home = _fake_worker(tmp_path)
  try:
    assert _start(home).returncode == 0
    again = _start(home)
    assert again.returncode == 3 and "refused: run r1" in again.stderr, again
    assert "stop it first, or pass --force" in again.stderr
    other_name = _start(home, "--run-name=r2")  # another name, the same workdir
    assert other_name.returncode == 3 and "is running on gs://bucket/runs/r1" in other_name.stderr
    for spelling in ("gs://bucket//runs/r1/", "gs://bucket/runs//r1//"):  # the same workdir
      (argv,) = _gcloud_lines("run", f"--workdir={spelling}", "--run-name=r9",
                              "--config=configs/mnist.py")
      again = _on_worker(_remote_command(argv), home)
      assert again.returncode == 3 and "is running on gs://bucket/runs/r1" in again.stderr
    (argv,) = _gcloud_lines("run", "--workdir=gs://bucket/runs/r3", "--config=configs/mnist.py")
    assert _on_worker(_remote_command(argv), home).returncode == 0  # another workdir: fine
    forced = _start(home, "--force")
    assert forced.returncode == 0 and "started pid" in forced.stdout
  finally:
    _kill_all(home)


def test_stop_waits_for_the_save_and_escalates_only_after_the_grace_time(tmp_path):
  home = _fake_worker(tmp_path)
  _fake_jaxdl(home, 'trap \'echo "SIGTERM: saved the checkpoint at step 7 and waited"; exit 0\' '
                    'TERM\nsleep 60 & wait')
  try:
    assert _start(home).returncode == 0
    time.sleep(0.5)  # the trap is set
    (stop_argv,) = _gcloud_lines("stop", "--run-name=r1")
    assert "-lt 300 ]" in _remote_command(stop_argv)  # the default grace time
    stopped = _on_worker(_remote_command(stop_argv), home)
    assert "stopped" in stopped.stdout and "saved the checkpoint at step 7" in stopped.stdout
    assert "killed" not in stopped.stdout, stopped.stdout

    # A job that exits on SIGTERM without saving: the step-7 line of the earlier job, still in
    # the log, is not reported as this one's.
    _fake_jaxdl(home, "trap 'exit 0' TERM\nsleep 60 & wait")
    assert _start(home).returncode == 0
    time.sleep(0.5)
    stopped = _on_worker(_remote_command(stop_argv), home)
    assert "stopped" in stopped.stdout and "saved the checkpoint" not in stopped.stdout, (
        stopped.stdout)

    _fake_jaxdl(home, "trap '' TERM\nwhile true; do sleep 0.1; done")  # a job that never exits
    assert _start(home).returncode == 0
    time.sleep(0.5)
    (stop_argv,) = _gcloud_lines("stop", "--run-name=r1", "--grace=1")
    started = time.time()
    stopped = _on_worker(_remote_command(stop_argv), home)
    assert "no exit within 1s of SIGTERM, killed" in stopped.stdout, stopped.stdout
    assert time.time() - started < 10
    pid = int((home / "jaxdl-runs" / "r1.pid").read_text())
    deadline = time.time() + 10
    while _alive(pid) and time.time() < deadline:
      time.sleep(0.05)
    assert not _alive(pid)
  finally:
    _kill_all(home)


def test_a_bad_grace_time_is_one_line():
  result = _launch("--dry-run", "stop", "--run-name=r1", "--grace=soon")
  assert result.returncode == 1 and result.stderr == (
      "launch.sh: error: --grace=soon: must be a whole number of seconds\n")
