"""User-facing errors.

A `UserError` is a mistake in what the user gave us (a path, a value, a file's content). The CLI prints its
message on one line and exits with status 1, without a traceback; anything else is a bug and keeps its traceback.
Messages say what was wrong, where (file:line, tensor name, option) and what was expected.
"""


class UserError(Exception):
    """Bad input from the user: printed as one line by the CLI, exit status 1."""
