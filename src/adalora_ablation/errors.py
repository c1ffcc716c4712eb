"""Errors a user can fix: printed as one line, exit code 2, no traceback."""


class UsageError(Exception):
    """Bad input (arguments, paths, versions). The message names the problem and the fix."""
