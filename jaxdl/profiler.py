"""config.profile_steps='START:STOP': a JAX profiler trace of train steps START..STOP-1.

The trace goes to WORKDIR/profile/plugins/profile/<time>/: `<host>.xplane.pb` for TensorBoard's
profile plugin (`pip install tensorboard xprof; tensorboard --logdir=WORKDIR/profile`, Profile
tab) and `perfetto_trace.json.gz` for https://ui.perfetto.dev (Open trace file). Steps are the
loop's 0-based step indices; the first step run compiles, so start after it (e.g. '10:15').
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax

from jaxdl.errors import UserError, require


def parse(spec: str) -> tuple[int, int] | None:
  """'10:15' -> (10, 15); '' -> None; anything else is a UserError naming the key."""
  if not spec:
    return None
  start, sep, stop = spec.partition(":")
  try:
    if not sep:
      raise ValueError
    start, stop = int(start), int(stop)
  except ValueError:
    raise UserError(f"config.profile_steps={spec!r}: expected 'START:STOP' (e.g. '10:15', "
                    "steps 10 to 14) or '' for no profile") from None
  require(0 <= start < stop, "profile_steps", spec, "needs 0 <= START < STOP")
  return start, stop


class Profiler:
  """Starts and stops jax.profiler at the configured steps; a no-op when profile_steps is ''."""

  def __init__(self, spec: str, workdir: str, log: Callable[[str], None] = print):
    self.steps = parse(spec)
    self.directory = os.path.join(workdir, "profile")
    self.log = log
    self.tracing = False
    self.first = None  # the first step traced

  def at(self, step: int, state: Any) -> None:
    """Call before running step `step`; `state` is waited on before a trace ends."""
    if self.steps is None:
      return
    start, stop = self.steps
    if not self.tracing and self.first is None and start <= step < stop:
      jax.block_until_ready(state)  # earlier steps' device work stays out of the trace
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.tracing, self.first = True, step
    elif self.tracing and step >= stop:
      self.stop(state, step)

  def stop(self, state: Any, step: int) -> None:
    """Ends the trace (if one runs) after the device work of the steps before `step`."""
    if self.tracing:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.tracing = False
      self.log(f"profile of steps {self.first}..{step - 1} written to {self.directory} "
               "(TensorBoard's profile plugin, or perfetto_trace.json.gz in ui.perfetto.dev)")
