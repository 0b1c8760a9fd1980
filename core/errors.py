"""The one error type for mistakes a user can fix.

Raise `UserError` with a message that names the file (or config key) and the
fix. Entry points turn it into a one-line message and a non-zero exit code,
never a traceback.
"""


class UserError(Exception):
    """A problem with the user's input: a file, a flag or a config value."""
