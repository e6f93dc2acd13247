"""The helpers every one-line error uses to quote and type-check a stored value."""

import math

from qsal.errors import is_finite_number, is_integer, quote


def test_quote_keeps_a_bad_value_on_one_short_line():
    assert quote("big") == "'big'" and quote(7) == "7" and quote(None) == "None"
    long = quote(list(range(1000)))
    assert long.startswith("[0, 1, 2") and long.endswith("...]") and len(long) < 250
    assert len(quote("x" * 10_000)) <= 64 and "\n" not in quote({"a": ["b\nc"] * 3})


def test_bool_is_neither_an_integer_nor_a_number():
    assert is_integer(3) and not is_integer(True) and not is_integer(3.0)
    assert is_finite_number(0.5) and is_finite_number(2) and not is_finite_number(False)
    assert not is_finite_number(math.nan) and not is_finite_number(math.inf) and not is_finite_number("1")
    assert not is_finite_number(10 ** 400)  # too large for a float: not a usable number, and no OverflowError
