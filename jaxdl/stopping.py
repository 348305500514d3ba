"""SIGTERM and SIGINT: the run saves the step at hand and exits, and never takes longer than a
bound to do so, even when it is stuck.

- Once the workdir is open (`save_on_signal`), a signal only sets a flag, which the loop reads
  at each step boundary (`requested`): saving from inside a handler could interrupt a half-done
  step or an Orbax write. A second identical signal gets the default behaviour (kill; Ctrl-C
  raises KeyboardInterrupt) for a user who does not want to wait for the save. Before that
  (checks, data loading), a lone process has nothing to save and the signal acts at once.
- Always honoured: a run that has not stopped `timeout` seconds after the first signal (it
  waits on a filesystem or a gs:// endpoint that stopped answering, or in a collective whose
  peer is gone) exits with one line that says where it waits, without that save; its newest
  committed checkpoint is intact, and the same command resumes from it. The deadline is kept by
  a thread that reads the signal from Python's wakeup fd: a Python handler runs only when the
  main thread comes back to Python, which a thread blocked in C++ (an XLA collective, a
  TensorStore write) never does.
- Multi-process: every process must stop at the same step, after one save that all of them
  write. JAX's distributed runtime catches SIGTERM in C++ (its preemption notifier), and Orbax's
  `reached_preemption(n)` turns true on every process at the same count; a flag of this process
  alone would stop it a step apart from the others, which would then hang in their next
  collective. So there the loop stops only on that agreement, and the thread passes each SIGTERM
  or SIGINT on to JAX's handler, which Python's signal module can neither see nor call (hence
  `_c_handler`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import traceback
from typing import Any

from jaxdl.errors import exit_at_once

# Seconds from the first signal to the forced exit. It covers the end of the step at hand and
# one save; schedulers send SIGKILL 30 s (Kubernetes, Slurm) or more after their SIGTERM, and a
# process that exits by itself says why. main.py's --stop_timeout sets it per run.
TIMEOUT = 50.0


class Stopped(Exception):
  """Raised by the loop after a SIGTERM or SIGINT, once the current step is saved to disk."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
    self.signum, self.step = signum, step


class StopSignals:
  """The stop flag and its deadline, for the `with` block of a whole run."""

  def __init__(self, timeout: float = TIMEOUT, multi_process: bool = False):
    self.timeout, self.multi_process = timeout, multi_process
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}
    self._calls = 0  # requested() calls in this process: the preemption sync's counter
    self._saving = False  # save_on_signal() was called
    self._done = threading.Event()
    self._wakeup: tuple[int, int] | None = None  # (the pipe's write fd, the previous wakeup fd)
    self._jax: tuple[Any, Any] | None = None  # multi-process: (JAX's handler, its sigaction)

  def requested(self, manager) -> bool:
    """Whether to save the step just done and stop: a signal arrived, or all processes reached a
    preemption sync point of `manager` (an Orbax CheckpointManager; on a multi-process job,
    only the latter).

    JAX's sync point is one more than the largest counter any process reported when the notice
    came, and a process that has not been asked yet reports 0. So the counter is this process's
    count of calls, 1, 2, ..., not the step: a resumed job starts at step N, and a notice that
    came before its first step (during the restore) set the sync point to 1, which the step
    numbers would never meet, and the job never stopped. Every process of a job restores the
    same step and dispatches the same steps, so their counts agree as their steps do.
    """
    self._calls += 1  # the loop asks once per dispatch, in the same order on every process
    reached = manager.reached_preemption(self._calls)
    return reached if self.multi_process else (self.signum is not None or reached)

  def save_on_signal(self) -> None:
    """From now on (the run's workdir is open) a signal asks for a save, then a stop. Before,
    on a lone process, there is nothing to save and it acts at once, as without jaxdl (SIGTERM
    ends the process, Ctrl-C raises KeyboardInterrupt); a multi-process job's stops at its
    first step, where the processes agree, or at the deadline."""
    self._saving = True

  def _handle(self, signum, frame) -> None:
    previous = self._previous[signum]
    signal.signal(signum, previous)
    if not (self._saving or self.multi_process):
      if callable(previous):
        previous(signum, frame)  # Python's Ctrl-C handler: KeyboardInterrupt
      else:
        signal.raise_signal(signum)  # the default action: SIGTERM ends the process
      return
    self.signum = signum

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is not threading.main_thread():
      return self  # signal handlers can only be set from the main thread
    handled = [signal.SIGTERM, signal.SIGINT]
    if self.multi_process:
      self._jax = _c_handler(signal.SIGTERM)
      if self._jax is None:  # JAX's handler not found: SIGTERM stays its, without a deadline
        handled.remove(signal.SIGTERM)
    for signum in handled:
      # An ignored signal stays ignored: `nohup`, or a shell script's `cmd &` (which starts
      # with SIGINT ignored so that the terminal's Ctrl-C leaves it alone), chose that.
      if signal.getsignal(signum) != signal.SIG_IGN:
        self._previous[signum] = signal.signal(signum, self._handle)
    read, write = os.pipe()
    os.set_blocking(write, False)  # the signal's byte is dropped, never waited for, when full
    self._wakeup = (write, signal.set_wakeup_fd(write, warn_on_full_buffer=False))
    threading.Thread(target=self._watch, args=(read,), daemon=True,
                     name="jaxdl-stop-deadline").start()
    return self

  def _watch(self, read: int) -> None:
    """The deadline's thread: waits for a stop signal's byte on the wakeup fd, tells JAX's
    notifier on a multi-process job, then gives the run `timeout` seconds to stop."""
    previous = self._wakeup[1]
    try:
      while not self._done.is_set():
        received = os.read(read, 64)
        if not received:  # the write end closed
          return
        if previous >= 0:  # someone else's wakeup fd (an asyncio loop): it gets its bytes too
          try:
            os.write(previous, received)
          except OSError:
            pass
        stops = [s for s in received if s in (signal.SIGTERM, signal.SIGINT)]
        if stops and not self._done.is_set():
          if self._jax:
            self._jax[0](signal.SIGTERM)  # JAX's notifier: every process agrees on a step
          elif self.multi_process:
            os.kill(os.getpid(), signal.SIGTERM)  # a Ctrl-C, to JAX's handler where it is
          if not self._done.wait(self.timeout):
            _overdue(stops[0], self.timeout)
          return
    finally:
      os.close(read)

  def __exit__(self, *exc) -> None:
    self._done.set()
    if self._wakeup:
      write, previous = self._wakeup
      signal.set_wakeup_fd(previous)
      try:
        os.write(write, b"\0")  # wakes the thread, which sees _done, closes `read` and ends
      except OSError:  # it had ended already (the pipe is closed) or has bytes to read
        pass
      os.close(write)
      self._wakeup = None
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    if self._jax:  # JAX's handler back in place, as Python's signal.signal cannot put it
      _libc().sigaction(signal.SIGTERM, self._jax[1], None)


def _overdue(signum: int, timeout: float) -> None:
  """Ends the process: the run did not stop within `timeout` seconds of the signal."""
  frame = sys._current_frames().get(threading.main_thread().ident)  # pylint: disable=protected-access
  exit_at_once(f"{signal.Signals(signum).name} came {timeout:g} s ago and the run has not "
               f"stopped: it waits in {_where(frame)}; exiting without saving that step (its "
               f"newest committed checkpoint is intact: re-run the same command to resume from "
               f"it)")  # the main thread is stuck: no clean exit


def _where(frame) -> str:
  """The main thread's innermost call, and its innermost jaxdl call when that is another one."""
  if frame is None:
    return "an unknown place"
  stack = traceback.extract_stack(frame)
  def name(entry) -> str:
    parts = entry.filename.split(os.sep)
    return f"{os.sep.join(parts[-2:])}:{entry.lineno} ({entry.name})"
  ours = [e for e in stack if f"{os.sep}jaxdl{os.sep}" in e.filename]
  if not ours or ours[-1] is stack[-1]:
    return name(stack[-1])
  return f"{name(stack[-1])}, called from {name(ours[-1])}"


def _libc():
  return ctypes.CDLL(None, use_errno=True)


def _c_handler(signum: int) -> tuple[Any, Any] | None:
  """(The handler that C++ code installed for `signum`, its sigaction to put back), or None.

  JAX's preemption notifier sets its SIGTERM handler from C++; Python's signal module still
  reports the default, and replacing it would lose JAX's. Every libc puts the handler first in
  `struct sigaction` (glibc, musl, macOS), and 256 bytes hold the whole struct.
  """
  if signal.getsignal(signum) not in (signal.SIG_DFL, None):
    return None  # Python's own handler, or ignored: not a C++ one
  try:
    action = ctypes.create_string_buffer(256)
    if _libc().sigaction(signum, None, action) != 0:
      return None
  except (OSError, AttributeError):  # no libc to ask (not a POSIX system)
    return None
  address = ctypes.c_void_p.from_buffer(action).value
  if not address or address == 1:  # SIG_DFL (0) or SIG_IGN (1)
    return None
  return ctypes.CFUNCTYPE(None, ctypes.c_int)(address), action
