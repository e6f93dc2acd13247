"""Helpers shared by the benchmark scripts: data root, markdown tables, result files."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_dir(explicit: str | None) -> str:
    """``--data-dir``, else ``$QSAL_DATA_DIR``, else the ``../shared/data`` beside the checkout."""
    return explicit or os.environ.get("QSAL_DATA_DIR") or str(DEFAULT_DATA)


def command_line(script: str) -> str:
    """``python benchmarks/x.py --flag v``: the command this process runs (``script``: the caller's ``__file__``)."""
    return " ".join(["python", "benchmarks/" + Path(script).name, *map(shlex.quote, sys.argv[1:])])


def written_by(script: str) -> str:
    """The markdown line naming the command that wrote a table: ``Written by `python benchmarks/x.py --flag v`.``"""
    return f"Written by `{command_line(script)}`."


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """``columns``: (key, header). Floats are printed with 3 decimals, None as an em dash."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for k, _ in columns:
            v = r.get(k)
            cells.append("—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def what_changed(before: list[dict], after: list[dict], keys: tuple[str, ...], metrics: list[tuple[str, str]],
                 only=lambda row: True) -> str:
    """Markdown table of the rows present in both runs (matched on ``keys``): each metric before -> after and the
    difference. ``metrics``: (key, header). Rows where ``only(row)`` is false are left out."""
    old = {tuple(r.get(k) for k in keys): r for r in before}
    head = "| " + " | ".join(keys) + " | " + " | ".join(f"{h} before | {h} after | Δ{h}" for _, h in metrics) + " |"
    lines = [head, "|" + "|".join("---" for _ in range(len(keys) + 3 * len(metrics))) + "|"]
    for r in after:
        k = tuple(r.get(x) for x in keys)
        if k not in old or not only(r):
            continue
        cells = [str(x) for x in k]
        for m, _ in metrics:
            a, b = old[k].get(m), r.get(m)
            cells += ["—" if a is None else f"{a:.3f}", "—" if b is None else f"{b:.3f}",
                      "—" if a is None or b is None else f"{b - a:+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def median_alpha_change(checkpoint: str | Path) -> float | None:
    """Median over a PACT checkpoint's clips of |alpha_end - alpha_start| / alpha_start (its JSON's
    ``quantization.activations``); None when it has no PACT clip."""
    acts = json.loads(Path(checkpoint).with_suffix(".json").read_text()).get("quantization", {}).get("activations", [])
    change = [abs(a["alpha_end"] - a["alpha_start"]) / a["alpha_start"] for a in acts if a.get("kind") == "pact"]
    return float(np.median(change)) if change else None


def write_results(stem: Path, payload: dict, head: str, columns: list[tuple[str, str]]) -> None:
    """``stem.json``: ``payload`` (with its ``rows``) plus the environment; ``stem.md``: ``head`` (title and what
    the numbers are), then the rows as a table (``columns``: (key, header))."""
    from qsal._atomic import write_json_atomic, write_text_atomic
    from qsal.provenance import environment

    write_json_atomic(stem.with_suffix(".json"), {**payload, "environment": environment()})
    write_text_atomic(stem.with_suffix(".md"), f"{head}\n\n{markdown_table(payload['rows'], columns)}\n")
    print(f"wrote {stem.with_suffix('.md')}")
