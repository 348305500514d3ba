"""Entry point: python -m jaxdl.main --config=configs/mnist.py[:preset] --workdir=DIR [--config.k=v].

Flags become a locked ConfigDict (ml_collections config_flags), and train.train_and_evaluate
does the rest. Every user mistake, in a flag or later, ends as one line on stderr and exit 1.
"""

from __future__ import annotations

import os
import signal
import sys

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

from jaxdl import errors, stopping

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file, optionally with a preset: configs/mnist.py:seed",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints and metrics")
_RESTART = flags.DEFINE_bool(
    "restart", False, "start afresh in a workdir that holds a run: what it holds is kept in "
    "WORKDIR/previous-<time>/, never deleted")
_XLA_CACHE = flags.DEFINE_string(
    "xla_cache_dir", os.environ.get("JAXDL_XLA_CACHE", "~/.cache/jaxdl/xla"),
    "JAX's persistent compilation cache: compiled steps are reused by later runs of the same "
    "program (default $JAXDL_XLA_CACHE, else ~/.cache/jaxdl/xla); '' turns it off")
_STOP_TIMEOUT = flags.DEFINE_float(
    "stop_timeout", stopping.TIMEOUT, "seconds a run may take to save and exit after SIGTERM or "
    "SIGINT; a run still going then (stuck on storage or in a collective) exits with one line, "
    "without that save", lower_bound=1.0)
# Multi-process jobs (see parallel.initialize). A Cloud TPU VM needs none of these, and neither
# does a cluster that sets JAX_COORDINATOR_ADDRESS and is detected by JAX (Slurm, Open MPI).
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "HOST:PORT of process 0, where the job's processes meet")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "processes in the job (0 = one, or "
                                      "detected)")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "this process's index, 0..num_processes-1")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "seconds to wait for every process of a multi-process job to "
    "join; then each waiting process stops with one line", lower_bound=1)


def _last_line(error: BaseException) -> str:
  """The message of an error, one line: config_flags wraps a config file's exception in the
  text of its traceback, whose last line ('ValueError: unknown preset ...') says what went wrong."""
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  line = lines[-1] if lines else type(error).__name__
  name, sep, rest = line.partition(": ")
  return rest if sep and name.isidentifier() and name.endswith(("Error", "Exception")) else line


def _config_file(argv: list[str]) -> str | None:
  """The --config value, written as --config=FILE[:preset] or --config FILE[:preset]."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg[len("--config="):]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _unknown_key(argv: list[str], error: BaseException) -> str:
  """config_flags names only the missing part ('zzz'); find the override that holds it."""
  missing = str(error).strip("\"'")
  for arg in argv[1:]:
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      if missing in key.split("."):
        return f"unknown config key {key!r} in {arg}; the config file lists the valid keys"
  return f"unknown config key {missing!r} in the --config.* overrides"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with each failure turned into one line naming the flag, key or file."""
  rest = parse_config_flags(argv)
  if not _WORKDIR.value:
    errors.fail("--workdir is required, e.g. --workdir=runs/mnist")
  return rest


def config() -> ml_collections.ConfigDict:
  """The --config flag's locked ConfigDict, overrides applied (after parse_config_flags)."""
  return _CONFIG.value


def parse_config_flags(argv: list[str]) -> list[str]:
  """parse_flags but for --workdir: the --config flag and its overrides, for every tool that
  reads a config (jaxdl.main, jaxdl.prepare)."""
  config_file = _config_file(argv)
  if config_file and not os.path.isfile(config_file.split(":")[0]):
    errors.fail(f"--config={config_file}: no such config file")
  try:
    rest = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # config_flags reports an unknown key as either
    if "has no attribute 'get_config'" in str(e):  # config_flags calls the file's get_config
      errors.fail(f"--config={config_file}: the file defines no get_config() "
                  f"(see configs/mnist.py)")
    errors.fail(_unknown_key(argv, e))
  except Exception as e:  # pylint: disable=broad-except  (a bad flag, value or config file)
    errors.fail(_last_line(e))
  if _CONFIG.value is None:
    errors.fail("--config is required, e.g. --config=configs/mnist.py")
  if not isinstance(_CONFIG.value, ml_collections.ConfigDict):
    errors.fail(f"--config={config_file}: get_config() returned a "
                f"{type(_CONFIG.value).__name__}, not an ml_collections.ConfigDict (see "
                f"configs/mnist.py)")
  if not any(a.startswith(("--verbosity", "-v")) for a in argv[1:]):
    # jaxdl prints its own progress; library INFO chatter (Orbax, XLA) only with --verbosity=0.
    logging.set_verbosity(logging.WARNING)
    # A failed asynchronous save makes Orbax's threads log each failing write (hundreds of
    # lines), and gcsfs logs each request out of retries; jaxdl reports the failure itself.
    logging.get_absl_handler().addFilter(_quiet_library_errors)
    # ... and TensorStore's callbacks into the closed event loop of that failed write raise
    # 'Event loop is closed' where nothing can catch it: Python prints them as unraisable.
    sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)
  return rest


def _quiet_library_errors(record) -> bool:
  """False (drop) for an ERROR that Orbax, gcsfs or asyncio logs, with its traceback, about a
  write or a request that failed: each raises the failure into jaxdl's calls, which report it
  in one line. --verbosity shows them."""
  return not (record.levelno >= logging.ERROR and (
      f"{os.sep}orbax{os.sep}" in record.pathname or record.name.startswith("gcsfs")
      or record.name == "asyncio"))


def _quiet_closed_loop(default_hook):
  """sys.unraisablehook without TensorStore's 'Event loop is closed' after a failed save."""
  def hook(info) -> None:
    if not (info.exc_type is RuntimeError and str(info.exc_value) == "Event loop is closed"):
      default_hook(info)
  return hook


def enable_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache in `directory` for every executable.

  JAX caches only compilations that took >= 1 s by default; on CPU most of jaxdl's steps
  compile faster than that and would be compiled again on every start, so both thresholds go.
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def main(argv: list[str]) -> None:
  with errors.reported("re-run the same command to resume from the newest checkpoint"):
    if len(argv) > 1:
      raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _XLA_CACHE.value:
      enable_compilation_cache(_XLA_CACHE.value)
    # Imported here so that flag errors are reported before the slower jax/flax/orbax imports.
    from jaxdl import checkpoint, parallel, train  # pylint: disable=g-import-not-at-top
    try:
      parallel.set_cpu_devices(_CONFIG.value.parallel.cpu_devices)
      parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                          _INIT_TIMEOUT.value)
      train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, restart=_RESTART.value,
                               stop_timeout=_STOP_TIMEOUT.value)
    except checkpoint.SaveError as e:
      errors.exit_at_once(str(e))  # Orbax's threads may wait out long timeouts on the failed write
    except stopping.Stopped as e:  # the step is saved: 0 for SIGTERM (preemption), 130 for ^C
      sys.exit(0 if e.signum == signal.SIGTERM else 130)
    except errors.UserError:
      raise  # reported() prints its line
    except Exception as e:  # pylint: disable=broad-except  (else reported() calls it a bug)
      # A disk or an object store failing mid-run: TensorStore's and gcsfs's threads may still
      # be on a failed write, and interpreter exit beside them crashed once (SIGSEGV, Python
      # 3.12.1, a gs:// server refusing writes: CI 2026-12-04). The run's own clean-up has run
      # (the writer, the checkpoints, the lease), so end at once, as for a failed save.
      line = errors.environment_failure(e)
      if line is None:
        raise
      errors.exit_at_once(line)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
