"""Orbax round trip of the train state and the loop's JSON state."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import checkpoint, steps
from jaxdl.models.cnn import CNN


def test_state_and_loop_round_trip(tmp_path):
  tx = optax.adamw(1e-3)
  state = steps.create_state(CNN(), tx, np.zeros((1, 28, 28, 1), np.uint8), seed=3)
  state = state.replace(step=jnp.int32(7))
  loop = {"data": {"epoch": 0, "batch_in_epoch": 7}, "interval_sums": {"loss_sum": 1.5}}
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  for step in (3, 5, 7):
    ckpts.save(step, state, loop)
  ckpts.close()
  assert sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit()) == [5, 7]

  blank = steps.create_state(CNN(), tx, np.zeros((1, 28, 28, 1), np.uint8), seed=0)
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  assert ckpts.latest_step() == 7
  restored, restored_loop = ckpts.restore_latest(blank)
  ckpts.close()
  assert restored_loop == loop
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)


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
  with checkpoint.StopSignals(_NoPreemption()) as signals:
    assert not signals.requested()
    os.kill(os.getpid(), signum)
    assert signals.requested() and signals.signum == signum
    if signum == signal.SIGINT:
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signum)
    else:
      assert signal.getsignal(signum) == signal.SIG_DFL
  assert signal.getsignal(signal.SIGINT) == signal.default_int_handler  # restored after
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_an_ignored_signal_stays_ignored(default_handlers):
  """`nohup` or a script's `cmd &` starts a run with SIGINT ignored: it stays so."""
  del default_handlers
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  with checkpoint.StopSignals(_NoPreemption()) as signals:
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGINT)
    assert not signals.requested()
  assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
