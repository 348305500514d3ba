"""Orbax round trip of the train state and the loop's JSON state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

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

