"""Orbax checkpoints under WORKDIR/checkpoints: the TrainState plus the loop's JSON state.

Each checkpoint step holds two items: 'state' (the TrainState pytree, restored with the shardings
of the state it replaces) and 'loop' (JSON: the data position and the partial metric sums of the
current log interval), so a resumed run logs exactly what an uninterrupted one would.
Saves are asynchronous: device arrays are copied to host before `save` returns, so the next
(donating) train step may run while the files are written.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxdl.errors import UserError, first_line


class Checkpoints:
  """Save every N steps (the loop decides when), keep the last K, restore the latest."""

  def __init__(self, workdir: str, keep: int):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True)
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, like_state: Any) -> tuple[Any, dict]:
    """The latest checkpoint, laid out like `like_state` (same shapes, dtypes and shardings)."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like_state)
    step = self.manager.latest_step()
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                        loop=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
      raise UserError(f"the checkpoint at step {step} in {self.directory} does not fit this "
                      f"config's model or optimizer ({first_line(e)}); use a new --workdir"
                      ) from None
    return restored["state"], restored["loop"]

  def save(self, step: int, state: Any, loop: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    loop=ocp.args.JsonSave(loop)), force=True)

  def close(self) -> None:
    """Waits for the last asynchronous save to be committed."""
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def latest_params(workdir: str) -> Any:
  """The params of the newest checkpoint in WORKDIR/checkpoints, as host arrays (for sampling)."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  step = None
  if os.path.isdir(directory):
    with ocp.CheckpointManager(directory) as manager:
      step = manager.latest_step()
      if step is not None:
        try:
          restored = manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore()))
        except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
          raise UserError(f"the checkpoint at step {step} in {directory} cannot be read "
                          f"({first_line(e)})") from None
  if step is None:
    raise UserError(f"no checkpoint in {directory}; train first: python -m jaxdl.main "
                    f"--config=configs/tiny_lm.py --workdir={workdir}")
  return restored["state"]["params"]
