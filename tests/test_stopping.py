"""SIGTERM and SIGINT: a flag for the loop, a second signal at once, ignored signals left
ignored, and the deadline that ends a run which does not stop (stopping.py). The deadline on a
real stuck run: test_gcs_workdir.py (a gs:// endpoint that stopped answering) and
test_multihost.py (a collective whose peer is gone)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO
from jaxdl import stopping


class _NoPreemption:
  def reached_preemption(self, step):
    del step
    return False


@pytest.fixture
def default_handlers():
  """SIGINT and SIGTERM at Python's defaults for the test, whatever pytest was started with (a
  shell script's `pytest &` starts with SIGINT ignored); restored after."""
  before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  yield
  for signum, handler in before.items():
    signal.signal(signum, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_stops_at_once(signum, default_handlers):
  """The first signal only asks for a save at the next step boundary; a second identical one
  gets the default behaviour (Ctrl-C: KeyboardInterrupt; SIGTERM: the process dies, which is
  checked here as the default handler being back in place)."""
  del default_handlers
  with stopping.StopSignals() as signals:
    signals.save_on_signal()
    assert not signals.requested(_NoPreemption())
    os.kill(os.getpid(), signum)
    assert signals.requested(_NoPreemption()) and signals.signum == signum
    if signum == signal.SIGINT:
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signum)
    else:
      assert signal.getsignal(signum) == signal.SIG_DFL
  assert signal.getsignal(signal.SIGINT) == signal.default_int_handler  # restored after
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_before_the_workdir_is_open_a_signal_acts_at_once(default_handlers):
  """Before save_on_signal (validation, data loading) there is nothing to save: Ctrl-C raises
  KeyboardInterrupt there and then, as without jaxdl (SIGTERM's default action, ending the
  process, is the command-line tests')."""
  del default_handlers
  with pytest.raises(KeyboardInterrupt):
    with stopping.StopSignals() as signals:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1.0)  # the handler runs at the next bytecode, long before this ends
  assert signals.signum is None
  assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


def test_an_ignored_signal_stays_ignored(default_handlers):
  """`nohup` or a script's `cmd &` starts a run with SIGINT ignored: it stays so."""
  del default_handlers
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  with stopping.StopSignals() as signals:
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGINT)
    assert not signals.requested(_NoPreemption())
  assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_a_run_that_does_not_stop_exits_at_the_deadline_in_one_line():
  """The deadline's thread ends a process whose main thread never gets back to the loop, in
  one line naming where it waits; without a signal nothing happens."""
  script = textwrap.dedent("""
      import os, signal, sys, time
      from jaxdl import stopping
      with stopping.StopSignals(timeout=float(sys.argv[1])) as signals:
        signals.save_on_signal()
        print("ready", flush=True)
        time.sleep(1.0)  # no signal yet: the deadline has not started
        os.kill(os.getpid(), signal.SIGTERM)
        while True:  # a loop that never asks signals.requested()
          time.sleep(0.05)
      """)
  start = time.monotonic()
  result = subprocess.run([sys.executable, "-c", script, "0.5"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
  took = time.monotonic() - start
  assert result.returncode == 1 and result.stdout == "ready\n", result
  assert result.stderr.startswith(
      "jaxdl: error: SIGTERM came 0.5 s ago and the run has not stopped: it waits in "
      "<string>:10 (<module>); exiting without saving that step"), result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and took < 30, (took, result.stderr)
