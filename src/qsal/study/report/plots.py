"""Report figures: trade-offs with CI bars and an uncertainty-aware Pareto front, CI forest plots and
per-model diagnostics (confusion matrix, ROC curve, reliability diagram). matplotlib, headless."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from qsal._atomic import save_figure_atomic  # noqa: E402

__all__ = ["pareto_front", "robust_pareto_front", "size_unit", "tradeoff_plot", "ci_plot", "diagnostics_plot"]

_DPI = 110
# Latencies closer than this factor count as equal: repeated runs on a shared CPU move by about this much.
LATENCY_TOLERANCE = 0.10


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (smaller x is better, larger y is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return front


def robust_pareto_front(x: list[float], y: list[float], lo: list[float], hi: list[float], x_tol: float = 0.0) -> list[int]:
    """Pareto front that ignores differences inside the uncertainty.

    Model j dominates model i when it is no worse on both axes, counting ``y_j >= lo_i`` (j inside or
    above i's 95 % CI) as no worse, and better on one of them beyond the noise: ``x_j (1 + x_tol) < x_i``
    or ``y_j > hi_i``. Models that tie within their CIs thus collapse onto the smallest/fastest one.
    """
    front = []
    for i in range(len(x)):
        dominated = any(x[j] <= x[i] * (1 + x_tol) and y[j] >= lo[i] and (x[j] * (1 + x_tol) < x[i] or y[j] > hi[i])
                        for j in range(len(x)) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: x[i])


def size_unit(max_bytes: float) -> tuple[str, float]:
    """``("KiB", 1024)`` or ``("MiB", 1024**2)``: the unit that keeps the axis numbers short."""
    return ("MiB", 1024.0 ** 2) if max_bytes >= 1024 ** 2 else ("KiB", 1024.0)


def _ci(row: dict, key: str) -> tuple[float, float]:
    """The row's 95 % CI, widened to contain its plotted value: a multi-seed row whose seeds did not all save their
    predictions shows its first seed's CI beside the mean over seeds, which can fall outside it (matplotlib refuses
    negative error bars)."""
    ci = row.get({"test_acc": "acc_ci", "test_auc": "auc_ci"}.get(key, key + "_ci"))
    return (min(ci[0], row[key]), max(ci[1], row[key])) if ci else (row[key], row[key])


def tradeoff_plot(rows: list[dict], x_key: str, path: Path, y_key: str = "test_acc") -> tuple[Path, list[str]]:
    """``y_key`` (with its 95 % CI as a bar) against file size (KiB/MiB) or latency (ms).

    The front is drawn only through models that differ beyond the CI (``robust_pareto_front``); a front
    of one model is marked, not drawn, and never appears in the legend. Returns the PNG and the names of
    the models on the front.
    """
    y = [r[y_key] for r in rows]
    lo, hi = zip(*(_ci(r, y_key) for r in rows))
    if x_key == "size_bytes":
        unit, scale = size_unit(max(r[x_key] for r in rows))
        x = [r[x_key] / scale for r in rows]
        x_label, tol = f"ONNX file size ({unit})", 0.0
    else:
        x = [r[x_key] for r in rows]
        x_label, tol = "latency, batch 1, 1 thread, p50 (ms)", LATENCY_TOLERANCE
    front = robust_pareto_front(x, y, list(lo), list(hi), tol)
    fig, ax = plt.subplots(figsize=(5.4, 3.9), dpi=_DPI)
    ax.errorbar(x, y, yerr=[np.subtract(y, lo), np.subtract(hi, y)], fmt="o", c="tab:blue", ecolor="tab:blue",
                capsize=4, label=f"{'ACC' if y_key == 'test_acc' else 'AUC'} with 95% CI")
    for i, (r, xi, yi) in enumerate(zip(rows, x, y)):
        # models at (nearly) the same size stack their labels instead of printing over each other
        near = sorted((j for j in range(len(x)) if abs(x[j] - xi) <= 0.04 * max(x)), key=lambda j: (-y[j], j))
        k, m = near.index(i), len(near)
        ax.annotate(r["model"], (xi, yi), fontsize=8, xytext=(7, 11 * ((m - 1) / 2 - k)), textcoords="offset points",
                    va="center", arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if m > 1 else None)
    if len(front) >= 2:
        ax.plot([x[i] for i in front], [y[i] for i in front], "--", c="tab:red", label="Pareto front (beyond 95% CI)")
    ax.scatter([x[i] for i in front], [y[i] for i in front], s=160, facecolors="none", edgecolors="tab:red",
               label="not dominated beyond the CI")
    ax.set_xlabel(x_label, fontsize=9)
    ax.set_ylabel(("test ACC" if y_key == "test_acc" else "test AUC") + " (95% CI)", fontsize=9)
    ax.set_xlim(0, max(x) * 1.25)
    ax.set_ylim(max(0.0, min(lo) - 0.05), min(1.0, max(hi) + 0.05))
    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure_atomic(fig, path), [rows[i]["model"] for i in front]


def ci_plot(rows: list[dict], path: Path) -> Path:
    """Forest plot: AUC and ACC of every model with 95 % bootstrap CIs, one row per model."""
    keys = [k for k in ("test_auc", "test_acc") if all(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys) + 1.4, 0.42 * len(rows) + 1.2), dpi=_DPI,
                             sharey=True, squeeze=False)
    pos = np.arange(len(rows))[::-1]
    for ax, key in zip(axes[0], keys):
        v = np.array([r[key] for r in rows])
        lo, hi = map(np.array, zip(*(_ci(r, key) for r in rows)))
        ax.errorbar(v, pos, xerr=[v - lo, hi - v], fmt="o", capsize=4, c="tab:blue")
        ax.set_title(("test AUC" if key == "test_auc" else "test ACC") + " (95% CI)", fontsize=10)
        ax.tick_params(labelsize=9)
        ax.set_xlim(max(0.0, lo.min() - 0.05), min(1.0, hi.max() + 0.05))
        ax.grid(alpha=0.3, axis="x")
    axes[0, 0].set_yticks(pos, [r["model"] for r in rows], fontsize=10)
    axes[0, 0].set_ylim(-0.6, len(rows) - 0.4)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def diagnostics_plot(model: str, y_true: np.ndarray, probs: np.ndarray, class_names: list[str], path: Path,
                     positive: int | None = None, ece: float | None = None, threshold: float | None = None) -> Path:
    """Confusion matrix, ROC curve(s) and reliability diagram of one model's test probabilities ``(N, K)``.

    Binary tasks: one ROC curve for ``positive`` (label 1 when ``None``), and the confusion matrix at the model's
    operating point ``p(positive) >= threshold`` (marked on the curve), or at 0.5 without one; otherwise argmax
    and one-vs-rest curves. The reliability curve has the ECE's 15 bins (``metrics.calibration``); ``ece``: the
    recorded ECE of these probabilities, else the one computed here.
    """
    from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

    from qsal.data.registry import TASK_BINARY, TASK_MULTICLASS
    from qsal.metrics.calibration import N_BINS, expected_calibration_error

    y_true, probs = np.asarray(y_true), np.asarray(probs)
    k = probs.shape[1]
    binary = k == 2
    if binary:
        positive = k - 1 if positive is None else positive
        cut = 0.5 if threshold is None else float(threshold)
        pred = np.where(probs[:, positive] >= cut, positive, 1 - positive)
        at = f"p({class_names[positive]}) >= {cut:.4g}" + ("" if threshold is not None else " (no operating point)")
    else:
        pred = probs.argmax(axis=1)
        at = "most probable class"
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.6), dpi=_DPI)
    cm = confusion_matrix(y_true, pred, labels=list(range(k)))
    ax = axes[0]
    ax.imshow(cm, cmap="Blues")
    short = [c if len(c) <= 14 else c[:13] + "…" for c in class_names]
    # a count fits its cell: a 10-class matrix of 3-digit counts ran into its neighbours at 10 pt (a digit is about
    # 0.6 of the point size wide; the matrix is about 2 in wide at this figure size, 85 % of a cell for the text)
    digits = len(str(int(cm.max()))) if cm.size else 1
    count_pt = float(np.clip(2.0 * 72 / k * 0.85 / (0.6 * digits), 5, 10))
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=count_pt,
                c="white" if v > cm.max() / 2 else "black")
    if k > 2:  # slanted names, anchored at their tick, do not overlap their neighbours
        ax.set_xticks(range(k), short, fontsize=8 if k <= 5 else 7, rotation=45, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(range(k), short, fontsize=8)
    ax.set_yticks(range(k), short, fontsize=8)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    ax.set_title(f"confusion matrix (n = {len(y_true)})\nat {at}", fontsize=9)
    ax = axes[1]
    for c in ([positive] if binary else range(k)):
        yc = (y_true == c).astype(int)
        if 0 < yc.sum() < len(yc):
            fpr, tpr, _ = roc_curve(yc, probs[:, c])
            ax.plot(fpr, tpr, label=f"{short[c]} (AUC {roc_auc_score(yc, probs[:, c]):.3f})")
            if binary:  # where the confusion matrix's decision sits on the curve
                hit = probs[:, c] >= cut
                ax.plot(hit[yc == 0].mean(), hit[yc == 1].mean(), "o", c="tab:red", ms=5,
                        label="operating point" if threshold is not None else "p = 0.5")
    ax.plot([0, 1], [0, 1], ":", c="gray")
    ax.set_xlabel("1 − specificity (false-positive rate)", fontsize=9)
    ax.set_ylabel("sensitivity (true-positive rate)", fontsize=9)
    ax.set_title("ROC, positive class: " + short[positive] if binary else "ROC, one class vs rest", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[2]
    binned_ece, bins = expected_calibration_error(y_true, probs, TASK_BINARY if binary else TASK_MULTICLASS)
    lo = 1.0 / k
    ax.plot([lo, 1], [lo, 1], ":", c="gray", label="perfect calibration")
    if bins:
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", c="tab:blue", label="model")
        for b in bins:
            # the last bins sit at the right edge: their counts go to the left of the point, inside the axes
            right = b["confidence"] > 0.9
            ax.annotate(str(b["count"]), (b["confidence"], b["accuracy"]), fontsize=6, xytext=(-3 if right else 3, -9),
                        textcoords="offset points", ha="right" if right else "left")
    ax.set_title(f"reliability: ECE {binned_ece if ece is None else ece:.3f} ({N_BINS} bins)", fontsize=9)
    ax.set_xlabel("confidence (top-class probability)", fontsize=9)
    ax.set_ylabel("accuracy in the bin", fontsize=9)
    ax.set_xlim(lo - 0.02, 1.01)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="upper left")
    for a in axes[1:]:
        a.grid(alpha=0.3)
    fig.suptitle(model, fontsize=10)
    fig.tight_layout()
    return save_figure_atomic(fig, path)
