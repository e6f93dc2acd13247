"""User-facing errors.

Every problem a user can fix (a missing file, a bad shape, an unknown name) is raised as a
``QsalError`` whose message is one line naming the problem *and* the fix. The CLI prints it
as ``error: ...`` and exits with code 2, never with a traceback.
"""

from __future__ import annotations

__all__ = ["QsalError"]


class QsalError(Exception):
    """A problem with the user's input, data or environment that the user can fix."""

    exit_code = 2
