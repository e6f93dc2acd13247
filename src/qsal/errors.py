"""User-facing errors.

Every problem a user can fix (a missing file, a bad shape, an unknown name) is raised as a
``QsalError`` whose message is one line naming the problem *and* the fix. The CLI prints it
as ``error: ...`` and exits with code 2, never with a traceback.
"""

from __future__ import annotations

__all__ = ["QsalError", "TYPE_WORDS"]

# How a one-line error names the type a value should have had ("is not an integer", not "is not a int").
TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class QsalError(Exception):
    """A problem with the user's input, data or environment that the user can fix."""

    exit_code = 2
