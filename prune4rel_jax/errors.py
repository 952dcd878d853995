"""The one exception type for bad user input.

Anything the user can fix (a config value, a missing file, a malformed label) raises `UserError` with a message
that names the field or file and what was expected; `main` prints that one line and exits with status 2 instead
of a traceback from deep inside JAX.
"""


class UserError(Exception):
  """Bad input the user can fix; the message alone must say what and where."""
