"""Metrics with the MedMNIST evaluator's exact definitions, plus what a clinician asks for.

- binary: AUC of the positive-class score, ACC at score > 0.5.
- multi-class and ordinal: macro one-vs-rest AUC, ACC by argmax.
- multi-label: mean per-label AUC, ACC = mean per-label accuracy at 0.5.
Scores are probabilities: softmax of logits (sigmoid for multi-label), as the MedMNIST code feeds them.
Clinical extras: sensitivity, specificity, balanced accuracy, macro F1, confusion matrix, and
percentile-bootstrap 95 % confidence intervals. The AUCs come from scikit-learn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from qsal.data.registry import TASK_BINARY, TASK_MULTILABEL

__all__ = ["Metrics", "scores_from_logits", "auc_score", "acc_score", "compute_metrics", "evaluate", "predict_logits"]


@dataclass
class Metrics:
    """Test-set figures of one model. AUC/ACC in [0, 1]; ``ci`` maps a metric to its (low, high) 95 % CI."""

    task: str
    n: int
    auc: float
    acc: float
    sensitivity: float | None = None
    specificity: float | None = None
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    confusion: list = field(default_factory=list)
    ci: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def scores_from_logits(logits: np.ndarray, task: str) -> np.ndarray:
    """Probabilities ``(N, K)`` from logits ``(N, K)``: sigmoid for multi-label, softmax otherwise."""
    logits = np.asarray(logits, dtype=np.float64)
    if task == TASK_MULTILABEL:
        return 1.0 / (1.0 + np.exp(-logits))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def auc_score(y_true: np.ndarray, scores: np.ndarray, task: str) -> float:
    """AUC as the MedMNIST evaluator defines it for ``task``; NaN when a class is absent."""
    y_true = np.asarray(y_true)
    try:
        if task == TASK_MULTILABEL:
            return float(np.mean([roc_auc_score(y_true[:, i], scores[:, i]) for i in range(y_true.shape[1])]))
        if task == TASK_BINARY:
            return float(roc_auc_score(y_true, scores[:, -1]))
        aucs = [roc_auc_score((y_true == i).astype(int), scores[:, i]) for i in range(scores.shape[1])]
        return float(np.mean(aucs))
    except ValueError:  # a label with one class only in this sample
        return float("nan")


def acc_score(y_true: np.ndarray, scores: np.ndarray, task: str, threshold: float = 0.5) -> float:
    """ACC as the MedMNIST evaluator defines it for ``task``."""
    if task == TASK_MULTILABEL:
        return float(np.mean((scores > threshold) == (y_true == 1)))
    if task == TASK_BINARY:
        return float(np.mean((scores[:, -1] > threshold).astype(int) == y_true))
    return float(np.mean(scores.argmax(axis=1) == y_true))


def _predictions(scores: np.ndarray, task: str, threshold: float) -> np.ndarray:
    return (scores[:, -1] > threshold).astype(int) if task == TASK_BINARY else scores.argmax(axis=1)


def compute_metrics(y_true: np.ndarray, logits: np.ndarray, task: str, *, n_bootstrap: int = 1000,
                    seed: int = 0, threshold: float = 0.5) -> Metrics:
    """All metrics for labels ``y_true`` ``(N,)`` (``(N, L)`` multi-label) and ``logits`` ``(N, K)``.

    ``n_bootstrap`` resamples of the test set give percentile 95 % CIs for AUC and ACC (and
    sensitivity/specificity for binary tasks); 0 disables them.
    """
    y_true = np.asarray(y_true)
    scores = scores_from_logits(logits, task)
    m = Metrics(task=task, n=int(len(y_true)), auc=auc_score(y_true, scores, task),
                acc=acc_score(y_true, scores, task, threshold))
    if task != TASK_MULTILABEL:
        pred = _predictions(scores, task, threshold)
        k = scores.shape[1]
        cm = confusion_matrix(y_true, pred, labels=list(range(k)))
        m.confusion = cm.tolist()
        recalls = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
        m.balanced_accuracy = float(np.mean(recalls[cm.sum(axis=1) > 0]))
        m.macro_f1 = float(f1_score(y_true, pred, average="macro", labels=list(range(k)), zero_division=0))
        if task == TASK_BINARY:
            tn, fp, fn, tp = cm.ravel()
            m.sensitivity = float(tp / max(tp + fn, 1))
            m.specificity = float(tn / max(tn + fp, 1))
    if n_bootstrap > 0:
        m.ci = _bootstrap(y_true, scores, task, n_bootstrap, seed, threshold)
    return m


def _bootstrap(y_true, scores, task, n_bootstrap, seed, threshold) -> dict:
    rng = np.random.default_rng(seed)
    n = len(y_true)
    samples: dict[str, list[float]] = {"auc": [], "acc": []}
    if task == TASK_BINARY:
        samples.update(sensitivity=[], specificity=[])
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        yt, sc = y_true[idx], scores[idx]
        samples["auc"].append(auc_score(yt, sc, task))
        samples["acc"].append(acc_score(yt, sc, task, threshold))
        if task == TASK_BINARY:
            pred = (sc[:, -1] > threshold).astype(int)
            pos, neg = yt == 1, yt == 0
            samples["sensitivity"].append(float(np.mean(pred[pos] == 1)) if pos.any() else np.nan)
            samples["specificity"].append(float(np.mean(pred[neg] == 0)) if neg.any() else np.nan)
    return {k: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))] for k, v in samples.items()}


def predict_logits(model, x, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Logits ``(N, K)`` of ``model`` on tensor ``x`` ``(N, C, H, W)``, in eval mode, no gradients."""
    import torch

    was_training = model.training
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(model(x[i:i + batch_size].to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(outs).numpy()


def evaluate(model, split, *, batch_size: int = 256, n_bootstrap: int = 1000, seed: int = 0,
             device: str = "cpu") -> Metrics:
    """Metrics of ``model`` on an ``ImageSplit`` (its task decides the definitions)."""
    x, y = split.tensors()
    logits = predict_logits(model, x, batch_size, device)
    return compute_metrics(y.numpy(), logits, split.info.task, n_bootstrap=n_bootstrap, seed=seed)
