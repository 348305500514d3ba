"""The one exception type for user mistakes.

Anything a user can get wrong (a config value, a path, a data file) raises `UserError` with a
single line that names the key, file or value. `jaxdl.main` prints it as one line and exits 1,
so a traceback always means a bug in jaxdl, never in the user's input.

A failure of the environment (a full disk, a permission, the network, a gs:// server that
refuses) is no bug either: `environment_failure` gives its one line.
"""


import errno
import os
import sys


class UserError(Exception):
  """A mistake in the user's config, command line or data; the message is one line."""


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


# errno names that say the environment failed (a disk, a quota, a permission, the network).
_ENVIRONMENT_ERRNOS = ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EIO", "EMFILE",
                       "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH")


def environment_failure(error: BaseException) -> str | None:
  """One line saying how the environment failed, when `error` is such a failure, else None:
  an OSError with one of those errnos (a local file), or an object store's refusal. gcsfs (under
  etils.epath, for gs://) raises `OSError('Forbidden: URL\\nwhy')`, without an errno, for HTTP 403,
  and its own HttpError for 401, 429 and 5xx once its retries are spent."""
  if isinstance(error, OSError) and errno.errorcode.get(error.errno) in _ENVIRONMENT_ERRNOS:
    return (f"cannot write {error.filename}: {error.strerror}" if error.filename
            else first_line(error))
  refused = isinstance(error, OSError) and error.errno is None and str(error).startswith(
      "Forbidden: ")
  if refused or type(error).__module__.startswith("gcsfs"):
    return f"the gs:// server refused a request: {' '.join(str(error).split())[:300]}"
  return None
