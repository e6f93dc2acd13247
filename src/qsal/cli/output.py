"""How the CLI shows results and help: aligned tables by default, JSON with ``--json``, defaults in ``--help``.

Tables round floats to 4 significant digits (JSON keeps every digit); progress goes to stderr and
never mixes with a result on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["metrics_table", "summary_table", "note_unfinished", "HelpFormatter", "add_output_args", "print_result", "print_rows", "format_value", "is_terminal"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every flag that has a default; not for flags whose default is
    "unset" (None) or "off" (a store_true flag), where it would say nothing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or any(action.default is d for d in (None, False, argparse.SUPPRESS)):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + " (default: %(default)s)"
        return text


def add_output_args(p: argparse.ArgumentParser) -> None:
    """``--json`` and ``--quiet``, the same two flags on every sub-command."""
    p.add_argument("--json", action="store_true", help="print the result as JSON (machine-readable) instead of a table")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars, per-epoch lines or notes; print only the result")


def is_terminal(stream=None) -> bool:
    """Whether ``stream`` (stderr by default) is an interactive terminal: progress bars only there."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def is_ci_key(key: str) -> bool:
    """Whether a result key holds a confidence interval ``[lo, hi]`` (``auc_ci``, ``ci.auc``): only those print as
    ``lo–hi``; any other pair of numbers (two images' probabilities) is a list."""
    import re

    parts = str(key).split(".")
    return re.search(r"(^|_)(\d+)?ci$", parts[-1]) is not None or "ci" in parts[:-1]


def format_value(v, key: str = "") -> str:
    """A value for a table cell: 4 significant digits for floats, ``lo–hi`` for a CI (``key``: ``is_ci_key``),
    compact lists."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 1e4 else str(v)
    if isinstance(v, (list, tuple)):
        if len(v) == 2 and all(isinstance(x, float) for x in v) and is_ci_key(key):
            return f"{format_value(v[0])}–{format_value(v[1])}"
        # a class name holding a comma ('normal, benign') is quoted: unquoted, 8 names read as 9
        return "[" + ", ".join(json.dumps(x) if isinstance(x, str) and ("," in x or x != x.strip()) else format_value(x)
                               for x in v) + "]"
    if isinstance(v, dict):
        return ", ".join(f"{k}={format_value(x)}" for k, x in v.items())
    return str(v)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    items = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key not in ("operating_point",) and prefix.count(".") < 1:
            items += _flatten(v, key + ".")
        else:
            items.append((key, v))
    return items


# A binary model's counts as every table labels them: at probability 0.5, or at its stored operating point
_DECIDED_AT = {"sensitivity": "sensitivity @ 0.5", "specificity": "specificity @ 0.5",
               "sensitivity_at_op": "sensitivity @ op", "specificity_at_op": "specificity @ op",
               "ppv_at_op": "PPV @ op", "npv_at_op": "NPV @ op", "accuracy_at_op": "accuracy @ op"}


def _ci_methods_line(methods: dict) -> str:
    """``{"auc": "percentile bootstrap...", "sensitivity": "Wilson score"}`` as one line, keys grouped by method."""
    by_method: dict[str, list[str]] = {}
    for key, method in methods.items():
        by_method.setdefault(str(method), []).append(_DECIDED_AT.get(key, key))
    return "; ".join(f"{', '.join(keys)}: {method}" for method, keys in by_method.items())


def metrics_table(m: dict) -> dict:
    """``qsal evaluate``'s result as the terminal table shows it: each key says what its number is about (what was
    scored, the positive class, at 0.5 or at the stored operating point, the confusion matrix's order). The bins of
    the reliability diagram are left to ``--json`` and ``--reliability r.png``. ``--json`` prints ``m`` unchanged."""
    pos = m.get("positive_class")  # its row comes just before the sensitivity rows
    names = list(m.get("per_class_recall") or {})
    task = str(m.get("task") or "")
    # binary: decided at 0.5, not at op; multi-label: each label at p > 0.5; multi-class: the most probable class
    at = " @ 0.5" if task == "binary-class" else " (p > 0.5 per label)" if task.startswith("multi-label") else \
        " (most probable class)"
    renamed = {**_DECIDED_AT,
               "per_class_recall": f"per_class_recall{at}", "balanced_accuracy": f"balanced_accuracy{at}",
               "macro_f1": f"macro_f1{at}",
               "operating_point": "op (operating point)",
               "acc": f"acc{at}",
               "confusion": f"confusion{at} (true x predicted" + (f": {' | '.join(names)})" if names else ")"),
               "confusion_at_op": "confusion @ op (true x decided" + (f": {' | '.join(names)})" if names else ")"),
               "prevalence": f"prevalence of {pos} (PPV/NPV hold at it)", "ci_method": "95% CI methods",
               "u8u8_kernels": "kernels (no VNNI here)", "saturating_kernels": "kernels (no VNNI here)"}
    # the decision's figures exist for a binary model with an operating point only: elsewhere they are not "—" rows
    binary_only = {"ppv_at_op", "npv_at_op", "accuracy_at_op", "confusion_at_op", "prevalence", "sensitivity_at_op",
                   "specificity_at_op"}
    out = {}
    for k, v in m.items():
        if k in ("reliability", "artifact") or (k == "undefined" and not v):
            continue
        if (k in binary_only and task != "binary-class") or (k in ("ci_method", "confusion_at_op") and not v):
            continue
        if k == "operating_point" and isinstance(v, dict) and v.get("threshold") is not None:
            from qsal.metrics.operating_point import describe_operating_point  # qsal.metrics loads torch: not at startup

            v = describe_operating_point(v, pos)
        if k == "ci_method" and isinstance(v, dict):
            v = _ci_methods_line(v)
        out[renamed.get(k, k)] = v
        if k == "n" and "artifact" in m:
            out["scored"] = "the ONNX file run by onnxruntime" if m["artifact"] else "the PyTorch model"
            # where a CPU without VNNI chose the integer kernels, the row that says what was scored says on which
            if m.get("u8u8_kernels"):
                out["scored"] += " on its exact u8 x u8 kernels (no VNNI)"
            elif m.get("saturating_kernels"):
                out["scored"] += " on the fast kernels that saturate here (QSAL_INTEGER_KERNELS=1)"
    return out


def note_unfinished(model, quiet: bool) -> None:
    """A one-line note on stderr when ``model`` is a checkpoint of a run that stopped before it finished (its best
    epoch so far, no operating point, not scored: ``run_folder.unfinished_run``); nothing with ``--quiet``."""
    from pathlib import Path

    if quiet or Path(str(model)).suffix.lower() not in (".safetensors", ".json"):
        return
    from qsal.run_folder import unfinished_run

    why = unfinished_run(Path(str(model)).with_suffix(".safetensors"))
    if why:
        print(f"note: {why}", file=sys.stderr)


def summary_table(result: dict) -> dict:
    """``qsal train`` / ``qsal quantize``'s result as the terminal table shows it: for a model with a positive class,
    each count says where it was decided (@ 0.5, or @ op: the stored operating point, which the ``scored`` line
    names). ``--json`` prints ``result`` unchanged."""
    if result.get("positive_class") is None:
        return result
    renamed = {**_DECIDED_AT, "test_acc": "test_acc @ 0.5"}
    return {renamed.get(k, k): v for k, v in result.items()}


def print_result(result: dict, as_json: bool, file=None) -> None:
    """One result: JSON (``as_json``), else a two-column table of ``key  value`` (nested keys dotted)."""
    file = file or sys.stdout
    if as_json:
        print(json.dumps(result, indent=2, default=str), file=file)
        return
    items = _flatten(result)
    width = max((len(k) for k, _ in items), default=0)
    for k, v in items:
        print(f"{k.ljust(width)}  {format_value(v, k)}", file=file)


def print_rows(rows: list[dict], as_json: bool = False, file=None) -> None:
    """Several results with the same keys: JSON list, else an aligned table (numbers right-aligned)."""
    file = file or sys.stdout
    if as_json:
        print(json.dumps(rows, indent=2, default=str), file=file)
        return
    if not rows:
        return
    from qsal.errors import is_finite_number

    keys = list(dict.fromkeys(k for r in rows for k in r))
    numeric = [all(isinstance(r.get(k), (int, float)) or r.get(k) is None for r in rows) for k in keys]
    # a column where some number takes thousands separators gives them to every number above 999 ("8,479" beside
    # "12,342", not "8479")
    grouped = {k for k, num in zip(keys, numeric)
               if num and any(is_finite_number(r.get(k)) and abs(r[k]) >= 1e4 for r in rows)}

    def cell(v, k):
        if isinstance(v, str):
            return v
        if k in grouped and is_finite_number(v) and 1e3 <= abs(v) < 1e4:
            return f"{v:,}" if isinstance(v, int) else f"{v:,.0f}"
        return format_value(v, k)

    cells = [[cell(r.get(k), k) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    print(line(keys), file=file)
    for c in cells:
        print(line(c), file=file)


def check_out(out, reads: dict, force: bool, example: str, flag: str = "--out") -> None:
    """``--out`` must not be a file the command reads (not even with --force: the command would destroy what it
    reads; ``reads`` maps each such path to how the message names it), nor an existing file without --force, nor a
    folder (``example`` names a file inside it). ``flag``: the option the messages name."""
    import os

    from qsal.errors import QsalError
    from qsal.run_folder import refuse_overwrite

    real = os.path.realpath(out)
    for path, what in reads.items():
        if os.path.realpath(path) == real:
            raise QsalError(f"{flag} {out} is {what} this command reads; choose another file")
    refuse_overwrite(out, force, example=example, flag=flag)
