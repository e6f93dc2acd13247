"""User-facing errors.

Every problem a user can fix (a missing file, a bad shape, an unknown name) is raised as a
``QsalError`` whose message is one line naming the problem *and* the fix. The CLI prints it
as ``error: ...`` and exits with code 2, never with a traceback.
"""

from __future__ import annotations


import math
import os
import reprlib

__all__ = ["QsalError", "TYPE_WORDS", "quote", "is_integer", "is_finite_number"]

# How a one-line error names the type a value should have had ("is not an integer", not "is not a int").
TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class QsalError(Exception):
    """A problem with the user's input, data or environment that the user can fix."""

    exit_code = 2


def quote(value, limit: int = 60) -> str:
    """``value`` as a one-line error quotes a bad stored value: its ``repr``, cut to about ``limit`` characters
    (a whole tensor or a long list pasted into a message would drown the fix)."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlevel = limit, limit, 3
    return r.repr(value)


def is_integer(value) -> bool:
    """An ``int`` that is not a ``bool`` (JSON's ``true`` is not a class count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """An ``int`` or ``float``, not a ``bool``, neither NaN nor infinite."""
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an int too large for a float (a 400-digit number in a hand-edited JSON)
        return False


def is_utf8_path(path) -> bool:
    """Whether ``path`` is valid UTF-8: a name from another system may hold other bytes (surrogate escapes), which
    the Rust/C++ loaders (safetensors, onnxruntime) refuse as if the file were broken."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_path(path) -> str:
    """``path`` as valid UTF-8 text for a file qsal writes (CSV, JSON, Markdown): bytes that are not UTF-8 are
    written as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
