"""How jaxdl fails: one exception type for user mistakes, and one way for a tool to report.

Anything a user can get wrong (a config value, a path, a data file) raises `UserError` with a
single line that names the key, file or value; a config value is checked by `require`. Every
tool (main, predict, sample, plot, report, sweep) runs in `reported()`, which prints such an
error as `jaxdl: error: LINE` and exits 1, so a traceback always means a bug in jaxdl, never in
the user's input, and its last line says so.

A failure of the environment (a full disk, a permission, the network, a gs:// server that
refuses) is no bug either: `environment_failure` gives its one line.
"""


import contextlib
import errno
import os
import re
import sys
import traceback


class UserError(Exception):
  """A mistake in the user's config, command line or data; the message is one line."""


def require(ok: bool, key: str, value, rule: str) -> None:
  """Every check of a config value: unless `ok`, the UserError 'config.KEY=VALUE: RULE', which
  names the key as --config.KEY sets it, e.g. require(lr >= 0, "opt.lr", lr, "must be >= 0")."""
  if not ok:
    raise UserError(f"config.{key}={value!r}: {rule}")


def exit_at_once(message: str) -> None:
  """Prints `jaxdl: error: MESSAGE` and ends the process now (exit 1), without interpreter
  exit: for a process whose threads may never finish (Orbax's after a failed write; a main
  thread stuck in C++) or whose exit would wait for other processes of a job."""
  print(f"jaxdl: error: {message}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access


def first_line(error: BaseException) -> str:
  """A library exception's first line (or its type's name), to quote inside a UserError."""
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else type(error).__name__


def import_user_module(name: str, where: str):
  """A user's module by its import path (a task, or a model's PACKAGE.MODULE). Its code may
  raise anything while importing; every failure becomes one UserError naming `where`."""
  import importlib  # pylint: disable=g-import-not-at-top
  try:
    return importlib.import_module(name)
  except Exception as e:  # pylint: disable=broad-except  (the user's code may raise anything)
    raise UserError(f"{where}: cannot import {name!r} ({type(e).__name__}: {first_line(e)}; "
                    f"is it on PYTHONPATH or in the current directory?)") from None


# errno names of an OSError whose one line names the file: a full disk, a quota, a permission.
_ENVIRONMENT_ERRNOS = ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EIO", "EMFILE",
                       "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH")
# TensorStore's (and gRPC's) status codes for a failing environment: the network, the quota,
# permissions, memory. Such an error says nothing about jaxdl's code or a checkpoint's files.
_ENVIRONMENT_STATUSES = ("UNAVAILABLE", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                         "DEADLINE_EXCEEDED", "UNAUTHENTICATED", "ABORTED", "CANCELLED")


def chain(error: BaseException | None):
  """`error` and the errors it was raised from (Orbax wraps TensorStore's in plain Exceptions)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def environment_failure(error: BaseException) -> str | None:
  """One line saying how the environment failed, when `error` (or one it was raised from) is
  such a failure, else None. The environment: an OSError other than FileNotFoundError (a disk,
  a permission, the network), memory, a timeout, a TensorStore status above, or an object
  store's refusal. gcsfs (under etils.epath, for gs://) raises `OSError('Forbidden: URL\\nwhy')`,
  without an errno, for HTTP 403, and its own HttpError for 401, 429 and 5xx once its retries
  are spent. Both checkpoint.py's restore and `reported` ask this one question."""
  for e in chain(error):
    if isinstance(e, OSError) and errno.errorcode.get(e.errno) in _ENVIRONMENT_ERRNOS:
      return f"cannot write {e.filename}: {e.strerror}" if e.filename else first_line(e)
    refused = isinstance(e, OSError) and e.errno is None and str(e).startswith("Forbidden: ")
    if refused or type(e).__module__.startswith("gcsfs"):
      return f"the gs:// server refused a request: {' '.join(str(e).split())[:300]}"
    if isinstance(e, (MemoryError, TimeoutError)) or (
        isinstance(e, OSError) and not isinstance(e, FileNotFoundError)):
      return f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__
    if str(e).startswith(_ENVIRONMENT_STATUSES):
      return first_line(e)
  return None


def os_cause(error: BaseException) -> str:
  """The cause of a failed write in a few words: an OSError's message, or the OS error that a
  TensorStore status names ('No space left on device'), else the error's first line."""
  text = ""
  for e in chain(error):
    if isinstance(e, OSError) and e.strerror:
      return e.strerror
    text = text or first_line(e)
    code = re.search(r"\[os_error_code='(\d+)'\]", str(e))
    if code:
      return os.strerror(int(code.group(1)))
  return text


def fail(message: str) -> None:
  """Prints `jaxdl: error: MESSAGE` and exits 1; in a multi-process job at once (exit_at_once):
  at interpreter exit JAX's distributed client and its CPU collectives shut down together with
  every process (seen: process 0 of a job whose process 1 gave another --num_processes printed
  its line, then hung there after process 1 had exited)."""
  jax = sys.modules.get("jax")
  if jax is not None and jax.distributed.is_initialized():
    exit_at_once(message)
  print(f"jaxdl: error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)


def parse_absl_flags(argv: list[str]) -> list[str]:
  """absl's flag parser for app.run(main, flags_parser=...), with a bad flag or value one line
  (absl's own: 'FATAL Flags parsing error: ...' and a hint on two lines)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(first_line(e))


@contextlib.contextmanager
def reported(interrupted: str = ""):
  """Every tool's body runs in `with errors.reported():`, so that each failure ends the same way.
  A UserError or a failure of the environment: `jaxdl: error: LINE`, exit 1. Ctrl-C: one line
  (`interrupted` says what to do next), exit 130. Anything else is a bug of jaxdl: its traceback,
  then a line that says so, exit 1; never taken for the user's mistake."""
  try:
    yield
  except UserError as e:
    fail(str(e))
  except KeyboardInterrupt:
    print("jaxdl: interrupted" + (f"; {interrupted}" if interrupted else ""), file=sys.stderr,
          flush=True)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except  (classified here, or reported as a bug)
    line = environment_failure(e)
    if line is None:
      traceback.print_exc()
      line = (f"a bug of jaxdl, not a mistake in your input ({type(e).__name__}: "
              f"{first_line(e)}); please report it with the traceback above")
    fail(line)
