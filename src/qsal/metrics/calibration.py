"""Calibration: expected calibration error, reliability-diagram data and plot, temperature scaling.

ECE follows Guo et al., *On Calibration of Modern Neural Networks* (ICML 2017): 15 equal-width bins of
the top-label confidence, ``sum_b |B|/N * |acc(B) - conf(B)|``. Multi-label sets pool every (image,
label) pair as a binary decision at 0.5. Temperature scaling divides the logits by one scalar ``T``
fitted by minimising the validation negative log-likelihood (ranking, hence AUC, is unchanged).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qsal.data.registry import TASK_MULTILABEL

__all__ = ["expected_calibration_error", "fit_temperature", "save_reliability_diagram", "N_BINS"]

N_BINS = 15


def _confidence_and_correct(y: np.ndarray, probs: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    if task == TASK_MULTILABEL:
        p = probs.ravel()
        return np.maximum(p, 1 - p), (p > 0.5) == (np.asarray(y).ravel() == 1)
    return probs.max(axis=1), probs.argmax(axis=1) == y


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, task: str, n_bins: int = N_BINS) -> tuple[float, list]:
    """``(ece, bins)`` for labels ``y`` ``(N,)`` and probabilities ``(N, K)``.

    ``bins``: one dict per non-empty bin, ``{"lo", "hi", "confidence", "accuracy", "count"}``
    (the reliability diagram's data).
    """
    conf, correct = _confidence_and_correct(y, probs, task)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece, bins = 0.0, []
    for b in range(n_bins):
        mask = which == b
        if not mask.any():
            continue
        c, a = float(conf[mask].mean()), float(correct[mask].mean())
        ece += mask.mean() * abs(a - c)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "confidence": c, "accuracy": a,
                     "count": int(mask.sum())})
    return float(ece), bins


def _nll(logits: np.ndarray, y: np.ndarray, task: str, temperature: float) -> float:
    z = logits / temperature
    if task == TASK_MULTILABEL:  # binary cross-entropy with logits, numerically stable
        return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, y: np.ndarray, task: str) -> float:
    """The temperature ``T`` in [0.05, 20] minimising the NLL of ``logits / T`` on (validation) labels ``y``."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    res = minimize_scalar(lambda log_t: _nll(logits, y, task, float(np.exp(log_t))), bounds=(np.log(0.05), np.log(20.0)),
                          method="bounded")
    return float(np.exp(res.x))


def save_reliability_diagram(curves: dict[str, list], path: str | Path, title: str = "") -> Path:
    """PNG reliability diagram: accuracy against confidence per bin, one line per model in ``curves``
    (``{label: bins}`` from ``expected_calibration_error``), with the diagonal of perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qsal._atomic import save_figure_atomic

    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.plot([0, 1], [0, 1], ":", c="gray", label="perfect calibration")
    for label, bins in curves.items():
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", ms=3, label=label)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure_atomic(fig, Path(path))
