"""The one exception type for user mistakes.

Anything a user can get wrong (a config value, a path, a data file) raises `UserError` with a
single line that names the key, file or value. `jaxdl.main` prints it as one line and exits 1,
so a traceback always means a bug in jaxdl, never in the user's input.
"""


class UserError(Exception):
  """A mistake in the user's config, command line or data; the message is one line."""
