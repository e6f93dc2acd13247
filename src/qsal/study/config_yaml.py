"""A study config file as YAML: read with the checks a hand-written file needs, and YAML 1.1's numbers read as text.

``read_config_yaml`` refuses a missing, huge, non-UTF-8 or invalid file, and a key given twice in one mapping, each
with the place to fix; ``study.config`` validates what it returns. PyYAML implements YAML 1.1, which reads ``1e-3``
and ``1.0e3`` (an exponent without a dot, or without its sign) as text where YAML 1.2 and JSON read numbers:
``text_number`` takes such text as the number meant wherever a config expects a float, and ``number_hint`` says how
to write a number that came as text where an integer (or any other number) is expected.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from qsal.errors import QsalError

__all__ = ["read_config_yaml", "text_number", "number_hint"]

# a number with an exponent, as YAML 1.2 / JSON write it (1e-3, 2E5, 1.0e3): PyYAML's YAML 1.1 resolver reads the
# forms without a dot or without the exponent's sign as strings
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def text_number(value):
    """``value`` as a float where it is a number with an exponent that YAML 1.1 read as text (``'1e-3'``: the user
    meant 0.001, as YAML 1.2 and JSON read it); any other value unchanged. For fields that take a float only: an
    integer field written ``1e2`` is refused with ``number_hint``'s advice, not rounded."""
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def number_hint(value, want: type) -> str:
    """How to write ``value``, text that reads as a number (or a whole float), as the ``want`` (``int`` or ``float``)
    a setting needs: `` (YAML reads it as text: write 2)``, `` (write 2)`` for ``2.0`` where an integer is expected;
    ``""`` when it is neither, or no number of that type says it."""
    if want is int and isinstance(value, float) and value.is_integer():
        return f" (write {int(value)})"
    if not isinstance(value, str) or want not in (int, float):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    if want is int:  # "2" or "1e2" for epochs: the integer; "2.5" is no integer, and advice would only mislead
        return f" (YAML reads it as text: write {int(number)})" if number.is_integer() else ""
    return f" (YAML reads it as text: write {number!r})"


class _DuplicateKey(Exception):
    """A key given twice in one mapping; its message names both lines."""


def _unique_key_loader():
    """A ``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last one, so a
    second ``seeds:`` would silently replace the first). Keys merged in with ``<<: *anchor`` may be overridden."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        # The check runs in flatten_mapping, which SafeLoader calls on every mapping before it is built, and
        # which is the only thing that rewrites a mapping's keys (merging `<<: *anchor` keys in front): its first
        # call on a node therefore sees the keys as written, even where another mapping merged this one first.
        def flatten_mapping(self, node):
            checked = self.__dict__.setdefault("_qsal_checked", set())
            if id(node) not in checked:
                checked.add(id(node))
                seen: dict = {}  # key -> the line it was first given on
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # `<<: *defaults` brings keys the mapping's own keys may override, as YAML intends
                    key = self.construct_object(key_node)
                    if not isinstance(key, (str, int, float, bool)) or key is None:
                        continue  # an unhashable key: SafeLoader's own error names it
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        raise _DuplicateKey(f"key {key!r} appears twice in one mapping (lines {seen[key]} and {line})")
                    seen[key] = line
            return super().flatten_mapping(node)

    return UniqueKeyLoader


def _yaml_problem(e) -> str:
    """PyYAML's complaint and where (``line 5, column 9``): its message's first line names no place."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{str(what)[:120]}{where}"


def read_config_yaml(path: str | Path):
    """The YAML document of the study config file ``path``, as loaded (``study.config`` checks its keys and values);
    ``QsalError`` for a file that is missing, not a file, too large for a config, not UTF-8, empty or not valid YAML."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise QsalError(f"{path} is a folder; pass the study YAML file (see configs/)")
    if path.exists() and not path.is_file():  # /dev/null, a FIFO: "not found" sent the user looking for a typo
        raise QsalError(f"{path} is not a regular file; pass the study YAML file (see configs/)")
    if not path.is_file():
        raise QsalError(f"config file {path} not found")
    if path.stat().st_size > 1_000_000:
        raise QsalError(f"{path} is {path.stat().st_size:,} bytes; a study config is a short YAML file (see configs/)")
    try:
        raw = yaml.load(path.read_bytes().decode("utf-8"), Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as e:
        raise QsalError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except _DuplicateKey as e:
        raise QsalError(f"{path} is not valid YAML: {e}; keep one of them") from None
    except yaml.YAMLError as e:
        raise QsalError(f"{path} is not valid YAML: {_yaml_problem(e)}; fix that line") from None
    if raw is None:
        raise QsalError(f"{path} is empty; a study names at least its datasets, models and methods (see configs/)")
    return raw
