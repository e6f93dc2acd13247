"""Argument types that check ranges as the command line is parsed, and a parser whose errors are one line.

argparse prints its usage block before an error; qsal prints only ``error: qsal <command>: <what> ...``
(exit 2), like every other bad input, and points at ``--help``.
"""

from __future__ import annotations

import argparse
import math
import sys

__all__ = ["OneLineErrorParser", "int_range", "float_range", "positive_int", "non_negative_int", "positive_float",
           "fraction"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are a single ``error:`` line on stderr, exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        print(f"error: {self.prog}: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def int_range(low: int | None = None, high: int | None = None, what: str = "an integer"):
    """An argparse ``type`` accepting integers in ``[low, high]`` (either bound optional)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (f">= {low}" if high is None else f"<= {high}" if low is None else f"in {low}-{high}")
            raise argparse.ArgumentTypeError(f"{value} is out of range: {what} must be {bounds}")
        return value

    parse.__name__ = "int"
    return parse


def float_range(low: float | None = None, high: float | None = None, low_open: bool = False, what: str = "a number",
                high_open: bool = False):
    """An argparse ``type`` accepting finite floats in ``[low, high]`` (``(low, ...`` with ``low_open``,
    ``..., high)`` with ``high_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: {what} must be finite"
                                             f"{', ' + lo if lo else ''}{', ' + hi if hi else ''}")
        return value

    parse.__name__ = "float"
    return parse


positive_int = int_range(1, None, "a count")
non_negative_int = int_range(0, None, "a count")
positive_float = float_range(0.0, None, low_open=True)
fraction = float_range(0.0, 1.0, low_open=False, what="a fraction")
