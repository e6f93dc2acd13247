"""Helpers shared by the benchmark scripts: data root, markdown tables, result files."""

from __future__ import annotations

import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_dir(explicit: str | None) -> str:
    """``--data-dir``, else ``$QSAL_DATA_DIR``, else the ``../shared/data`` beside the checkout."""
    return explicit or os.environ.get("QSAL_DATA_DIR") or str(DEFAULT_DATA)


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
