"""The report's explanation figures: the same test images for every model, labelled with the truth and
each model's prediction, plus a figure of the images whose explanation changed most."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qsal.runtime import decide
from qsal.saliency.plot import save_saliency_grid

__all__ = ["saliency_figures", "most_changed_rows"]

MAX_ROWS = 8


def _short(name: str, n: int = 16) -> str:
    return name if len(name) <= n else name[:n - 1] + "…"


def most_changed_rows(most_changed: dict[str, list[dict]], per_model: int = 2, max_rows: int = 6) -> list[int]:
    """Positions (in the explained images) of each model's ``per_model`` most-changed images, deduplicated."""
    rows: list[int] = []
    for changed in most_changed.values():
        for c in changed[:per_model]:
            if c["index"] not in rows and len(rows) < max_rows:
                rows.append(int(c["index"]))
    return rows


def saliency_figures(sal: dict, most_changed: dict[str, list[dict]], out_dir: Path,
                     decisions: dict[str, dict] | None = None) -> list[tuple[Path, str]]:
    """PNG figures ``[(path, alt text)]`` from ``sal``.

    ``sal``: ``images`` ``(N, H, W[, 3])`` in [0, 1]; ``maps`` model -> ``(N, C, H, W)``; ``y_true`` ``(N,)``;
    ``probs`` model -> ``(N, K)``; ``class_names``; ``method``; optional ``indices`` (test-set index of
    each image), ``reference`` (the model the others' maps are compared with) and ``task``. ``decisions``: model ->
    ``{"positive_label", "operating_point"}`` (``write_report`` takes them from the rows): a binary model's caption
    is its decision there, else 0.5 on label 1, as ``runtime.decide``.
    """
    images = np.asarray(sal["images"])
    n = len(images)
    names = sal["class_names"]
    idx = list(sal.get("indices") or range(n))
    y_true = np.asarray(sal["y_true"]) if sal.get("y_true") is not None else None

    def row_label(i: int) -> str:
        truth = f"\ntrue: {_short(names[int(y_true[i])])}" if y_true is not None and y_true.ndim == 1 else ""
        return f"test #{idx[i]}{truth}"

    decisions = decisions or {}
    task = sal.get("task") or ("binary-class" if len(names) == 2 else "multi-class")

    def cell_captions(rows: list[int]) -> dict[str, list[str]]:
        out = {}
        for model, p in (sal.get("probs") or {}).items():
            p = np.asarray(p)
            decided = decide(p, task, decisions.get(model))  # at the model's operating point, as it is deployed
            if decided.ndim != 1:  # multi-label: one caption names the most probable label
                decided = p.argmax(axis=1)
            out[model] = [f"{_short(names[int(decided[i])])} {p[i, int(decided[i])]:.2f}"
                          + (" ✗" if y_true is not None and y_true.ndim == 1 and decided[i] != y_true[i] else "")
                          for i in rows]
        return out

    def grid(rows: list[int], path: Path, title: str) -> Path:
        return save_saliency_grid(images[rows], {m: np.asarray(v)[rows] for m, v in sal["maps"].items()}, path,
                                  [row_label(i) for i in rows], title=title, cell_captions=cell_captions(rows),
                                  overlay_only=True, cell_inches=1.75)

    method = sal.get("method", "saliency")
    figures = []
    rows = list(range(min(n, MAX_ROWS)))
    figures.append((grid(rows, out_dir / "saliency_grid.png", f"{method}: the same test images, every model"),
                    f"Saliency maps ({method}) of {len(rows)} test images for every model, each of the image's true class "
                    "(so the models' maps compare); under each map the class the model decides at its operating "
                    "point and that class's probability (✗ = wrong)"))
    changed = most_changed_rows({m: c for m, c in most_changed.items() if m != sal.get("reference")})
    if changed:
        figures.append((grid(changed, out_dir / "saliency_most_changed.png",
                             f"{method}: images whose map changed most vs {sal.get('reference', 'the reference')}"),
                        "Saliency maps of the images whose explanation changed most against the reference model, "
                        "for every model"))
    return figures
