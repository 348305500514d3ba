"""The one exception type for user mistakes.

Anything a user can get wrong (a config value, a path, a data file) raises `UserError` with a
single line that names the key, file or value. `jaxdl.main` prints it as one line and exits 1,
so a traceback always means a bug in jaxdl, never in the user's input.
"""


class UserError(Exception):
  """A mistake in the user's config, command line or data; the message is one line."""


def first_line(error: BaseException) -> str:
  """A library exception's first line (or its type's name), to quote inside a UserError."""
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else type(error).__name__
