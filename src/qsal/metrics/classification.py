"""Metrics with the MedMNIST evaluator's exact definitions, plus what a clinician asks for.

- binary: AUC of the label-1 score, ACC at score > 0.5 (the MedMNIST standard, whatever the positive class).
- multi-class and ordinal: macro one-vs-rest AUC, ACC by argmax, per-class recall.
- multi-label: mean per-label AUC, ACC = mean per-label accuracy at 0.5.
Scores are probabilities: softmax of logits (sigmoid for multi-label), as the MedMNIST code feeds them,
optionally divided by a fitted temperature first (``calibration.fit_temperature``).

Binary sets name a clinically positive class (``DatasetInfo.positive_label``: BreastMNIST's is
label 0, malignant): sensitivity and specificity are always about that class and the dict says so
(``positive_class``). Besides the standard 0.5 point, an operating point chosen on the validation
split (``operating_point.choose_operating_point``) gives ``sensitivity_at_op`` / ``specificity_at_op``, and what
the deployed decision means for a patient: ``ppv_at_op`` / ``npv_at_op`` (at the test split's prevalence, recorded as
``prevalence``) and ``accuracy_at_op``, with its confusion matrix ``confusion_at_op``.

95 % CIs (``ci_method`` names each): AUC and ACC by the percentile bootstrap (the split resampled); the proportions of
one class or one decision at a fixed threshold (sensitivity, specificity, PPV, NPV, accuracy at the operating point)
by the Wilson score interval, which stays honest where the bootstrap collapses: 12 of 12 positives found is
[1.000, 1.000] by resampling, [0.757, 1.000] by Wilson. AUCs by the rank identity, equal to scikit-learn's
``roc_auc_score``. Undefined numbers (an AUC on a sample with one class) are ``None`` in ``to_dict()`` with the
reason in ``undefined``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import confusion_matrix, f1_score

from qsal.data.registry import TASK_BINARY, TASK_MULTILABEL, TASKS
from qsal.errors import QsalError, is_finite_number, is_integer
from qsal.metrics.calibration import expected_calibration_error

__all__ = ["Metrics", "scores_from_logits", "auc_score", "acc_score", "compute_metrics", "evaluate", "predict_logits",
           "as_label_vector"]


@dataclass
class Metrics:
    """Figures of one model on one split. AUC/ACC in [0, 1]; ``ci`` maps a metric to its (low, high) 95 % CI.

    ``sensitivity``/``specificity`` are about ``positive_class`` at the MedMNIST 0.5 point;
    ``*_at_op`` at ``operating_point`` (``{"rule", "threshold", "chosen_on"}``): also PPV/NPV (at ``prevalence``,
    the positive class's share of the split), accuracy and ``confusion_at_op`` (rows true label, columns decided). ``ece`` is the expected
    calibration error of the probabilities after dividing the logits by ``temperature``; ``reliability``
    its per-bin data. ``artifact``: True for the exported ONNX file, False for the PyTorch model.
    ``kernel_notes``: where the CPU decided which integer kernels onnxruntime scored the file on (no VNNI), its
    ``runtime.kernel_notes`` (``u8u8_kernels`` or ``saturating_kernels``, each with its sentence); ``to_dict`` gives
    them as top-level keys, and none where the kernels are the usual ones.
    """

    task: str
    n: int
    auc: float
    acc: float
    positive_class: str | None = None
    positive_label: int | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    operating_point: dict | None = None
    sensitivity_at_op: float | None = None
    specificity_at_op: float | None = None
    ppv_at_op: float | None = None
    npv_at_op: float | None = None
    accuracy_at_op: float | None = None
    confusion_at_op: list = field(default_factory=list)
    prevalence: float | None = None
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    per_class_recall: dict | None = None
    ece: float | None = None
    temperature: float = 1.0
    reliability: list = field(default_factory=list)
    confusion: list = field(default_factory=list)
    ci: dict = field(default_factory=dict)
    ci_method: dict = field(default_factory=dict)
    artifact: bool | None = None
    undefined: dict = field(default_factory=dict)
    kernel_notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-safe: NaN becomes ``None`` and ``undefined`` says why."""
        d = asdict(self)
        d.update(d.pop("kernel_notes"))
        for key, value in list(d.items()):
            if isinstance(value, float) and math.isnan(value):
                d[key] = None
                d["undefined"].setdefault(key, "undefined on this sample (a class is missing)")
        d["ci"] = {k: (None if v is None or any(math.isnan(x) for x in v) else v) for k, v in d["ci"].items()}
        return d


def as_label_vector(y_true, task: str) -> np.ndarray:
    """Labels as ``(N,)`` int64 (``(N, L)`` for multi-label); the official ``(N, 1)`` shape is accepted."""
    y = np.asarray(y_true)
    if task == TASK_MULTILABEL:
        return y.reshape(len(y), -1).astype(np.int64)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise QsalError(f"labels have shape {y.shape}; expected (N,) or (N, 1) class ids for a {task} task")
    return y.astype(np.int64)


def scores_from_logits(logits: np.ndarray, task: str, temperature: float = 1.0) -> np.ndarray:
    """Probabilities ``(N, K)`` from logits ``(N, K)`` / ``temperature``: sigmoid for multi-label, softmax otherwise."""
    logits = np.asarray(logits, dtype=np.float64) / float(temperature)
    if task == TASK_MULTILABEL:
        return 1.0 / (1.0 + np.exp(-logits))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _auc_or_nan(y_binary: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank identity (ties get average ranks): equal to scikit-learn's
    ``roc_auc_score`` (tested) and ~30x faster, which the 1000-resample bootstrap needs. NaN, without a
    warning, when the sample has one class."""
    positive = np.asarray(y_binary) == 1
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_score(y_true: np.ndarray, scores: np.ndarray, task: str) -> float:
    """AUC as the MedMNIST evaluator defines it for ``task``; NaN when a class is absent."""
    y_true = np.asarray(y_true)
    if task == TASK_MULTILABEL:
        return float(np.mean([_auc_or_nan(y_true[:, i], scores[:, i]) for i in range(y_true.shape[1])]))
    if task == TASK_BINARY:
        return _auc_or_nan(y_true, scores[:, -1])
    return float(np.mean([_auc_or_nan((y_true == i).astype(int), scores[:, i]) for i in range(scores.shape[1])]))


def acc_score(y_true: np.ndarray, scores: np.ndarray, task: str, threshold: float = 0.5) -> float:
    """ACC as the MedMNIST evaluator defines it for ``task``."""
    if task == TASK_MULTILABEL:
        return float(np.mean((scores > threshold) == (y_true == 1)))
    if task == TASK_BINARY:
        return float(np.mean((scores[:, -1] > threshold).astype(int) == y_true))
    return float(np.mean(scores.argmax(axis=1) == y_true))


WILSON = "Wilson score"
_Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson_interval(successes: int, n: int) -> list[float] | None:
    """95 % Wilson score interval ``[low, high]`` of the proportion ``successes / n``; ``None`` when ``n`` is 0.

    Where the percentile bootstrap resamples 12 found of 12 into [1, 1], this gives [0.757, 1]: a test split
    with few positives says little, and the interval shows it (Wilson 1927; Brown, Cai & DasGupta 2001).
    """
    if n <= 0:
        return None
    p, z2 = successes / n, _Z95 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # exact at the ends: 0 of n found has lower bound 0 (the formula leaves ~1e-18 of rounding), n of n upper bound 1
    return [0.0 if successes == 0 else max(0.0, centre - half), 1.0 if successes == n else min(1.0, centre + half)]


def _proportion(successes: int, n: int) -> tuple[float, list[float] | None]:
    """``(successes / n, Wilson CI)``; NaN and no CI for an empty denominator (no positives, say)."""
    return (successes / n if n else float("nan")), wilson_interval(successes, n)


def _binary_decision(y, decided_positive, positive_label: int) -> dict:
    """Sensitivity, specificity, PPV, NPV and accuracy of one binary decision, each ``(value, Wilson CI)``,
    and its confusion matrix by label (rows true, columns decided)."""
    pos, neg = positive_label, 1 - positive_label
    cm = confusion_matrix(y, np.where(decided_positive, pos, neg), labels=[0, 1])
    tp, fn, fp, tn = (int(cm[pos, pos]), int(cm[pos, neg]), int(cm[neg, pos]), int(cm[neg, neg]))
    return {"sensitivity": _proportion(tp, tp + fn), "specificity": _proportion(tn, tn + fp),
            "ppv": _proportion(tp, tp + fp), "npv": _proportion(tn, tn + fn),
            "accuracy": _proportion(tp + tn, len(y)), "confusion": cm.tolist()}


def compute_metrics(y_true: np.ndarray, logits: np.ndarray, task: str, *, class_names=None,
                    positive_label: int | None = None, operating_point: dict | None = None,
                    temperature: float = 1.0, n_bootstrap: int = 1000, seed: int = 0,
                    artifact: bool | None = None) -> Metrics:
    """All metrics for labels ``y_true`` ``(N,)`` or ``(N, 1)`` (``(N, L)`` multi-label) and ``logits`` ``(N, K)``.

    Args:
        class_names: names by class id (defaults to the ids as strings).
        positive_label: binary tasks: the class sensitivity is about (default 1, the MedMNIST convention;
            pass the dataset table's ``positive_label``).
        operating_point: ``{"rule", "threshold", "chosen_on"}``: binary tasks also report sensitivity and
            specificity at ``p(positive) >= threshold``.
        temperature: logits are divided by it before softmax/sigmoid (1 = uncalibrated).
        n_bootstrap: resamples of the split for the percentile 95 % CIs of AUC and ACC; 0 disables them (the
            Wilson intervals of the binary proportions cost nothing and are always given).
    """
    if task not in TASKS:  # 'binary' was scored as multi-class, with no positive class and no sensitivity
        raise QsalError(f"task {task!r} is not one of {', '.join(TASKS)}")
    if not (is_finite_number(temperature) and temperature > 0):  # -1 inverted every prediction (AUC .09 for .91)
        raise QsalError(f"temperature must be a number > 0 (1 = the logits as they are), got {temperature!r}")
    logits = np.asarray(logits)
    if logits.ndim != 2 or (task == TASK_BINARY and logits.shape[1] != 2):
        raise QsalError(f"logits must be (N, K) with K = 2 for a binary task, got shape {tuple(logits.shape)}")
    y = as_label_vector(y_true, task)
    scores = scores_from_logits(logits, task, temperature)
    if len(y) != len(scores):
        raise QsalError(f"{len(y)} labels but {len(scores)} predictions")
    k = scores.shape[1]
    if class_names is not None and len(class_names) != k:
        raise QsalError(f"class_names names {len(class_names)} classes but the logits score {k}")
    if positive_label is not None and not (is_integer(positive_label) and 0 <= positive_label < k):
        raise QsalError(f"positive_label must be a class id 0-{k - 1}, got {positive_label!r}")
    if operating_point is not None and not is_finite_number((operating_point or {}).get("threshold")):
        raise QsalError(f"operating_point needs a 'threshold' (a probability), got {operating_point!r}")
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    m = Metrics(task=task, n=int(len(y)), auc=auc_score(y, scores, task), acc=acc_score(y, scores, task),
                temperature=float(temperature), artifact=artifact)
    m.ece, m.reliability = expected_calibration_error(y, scores, task)
    threshold = None
    proportion_ci: dict[str, list[float] | None] = {}
    if task != TASK_MULTILABEL:
        pred = scores[:, -1] > 0.5 if task == TASK_BINARY else scores.argmax(axis=1)
        cm = confusion_matrix(y, pred.astype(int), labels=list(range(k)))
        m.confusion = cm.tolist()
        support = cm.sum(axis=1)
        recalls = np.diag(cm) / np.maximum(support, 1)
        m.balanced_accuracy = float(np.mean(recalls[support > 0]))
        m.macro_f1 = float(f1_score(y, pred.astype(int), average="macro", labels=list(range(k)), zero_division=0))
        m.per_class_recall = {names[i]: (float(recalls[i]) if support[i] else None) for i in range(k)}
        if task == TASK_BINARY:
            m.positive_label = 1 if positive_label is None else int(positive_label)
            m.positive_class = names[m.positive_label]
            if operating_point is not None:
                m.operating_point = dict(operating_point)
                threshold = float(operating_point["threshold"])
            m.prevalence = float(np.mean(y == m.positive_label))
            # MedMNIST's rule: label 1 when its score > 0.5, whichever class is positive
            at_05 = _binary_decision(y, (scores[:, -1] > 0.5) == (m.positive_label == 1), m.positive_label)
            (m.sensitivity, proportion_ci["sensitivity"]) = at_05["sensitivity"]
            (m.specificity, proportion_ci["specificity"]) = at_05["specificity"]
            if threshold is not None:
                at_op = _binary_decision(y, scores[:, m.positive_label] >= threshold, m.positive_label)
                for key in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
                    value, proportion_ci[f"{key}_at_op"] = at_op[key]
                    setattr(m, f"{key}_at_op", value)
                m.confusion_at_op = at_op["confusion"]
                # both classes present, but no decision of one kind: not "a class is missing"
                for key, side in (("ppv_at_op", "positive"), ("npv_at_op", "negative")):
                    if math.isnan(getattr(m, key)):
                        m.undefined[key] = f"no image was decided {side} at the operating point"
    if n_bootstrap > 0:
        m.ci = _bootstrap(y, scores, task, n_bootstrap, seed)
        m.ci_method = {k: f"percentile bootstrap, {n_bootstrap} resamples, seed {seed}" for k in m.ci}
    m.ci.update(proportion_ci)
    m.ci_method.update({k: WILSON for k in proportion_ci})
    return m


def _bootstrap(y, scores, task, n_bootstrap, seed) -> dict:
    """Percentile-bootstrap 95 % CIs of AUC and ACC (the split resampled with replacement; ``bootstrap``)."""
    from qsal.metrics.bootstrap import bootstrap_ci

    return bootstrap_ci([(y, scores)], task, n_bootstrap, seed)


def predict_logits(model, x, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Logits ``(N, K)`` of ``model`` on tensor ``x`` ``(N, C, H, W)``, in eval mode, no gradients."""
    import torch

    from qsal.models.modes import evaluating

    outs = []
    with torch.no_grad(), evaluating(model):
        for i in range(0, len(x), batch_size):
            outs.append(model(x[i:i + batch_size].to(device)).float().cpu())
    return torch.cat(outs).numpy()


def evaluate(model, split, *, decision: dict | None = None, batch_size: int = 256, n_bootstrap: int = 1000,
             seed: int = 0, device: str = "cpu") -> Metrics:
    """Metrics of a PyTorch ``model`` on an ``ImageSplit`` (its task decides the definitions).

    ``decision``: the ``{"positive_label", "operating_point", "temperature"}`` chosen on validation
    (``choose_decision``); without it the dataset table's positive class and temperature 1 are used.
    """
    from qsal.metrics.operating_point import validate_decision

    if not hasattr(split, "tensors"):
        raise QsalError(f"evaluate needs an ImageSplit (qsal.load_split(...)), got {type(split).__name__}")
    validate_decision(decision, split.info.num_classes, "evaluate", "pass the decision a checkpoint records "
                      "(its best.json's 'decision'), or none")
    x, y = split.tensors()
    logits = predict_logits(model, x, batch_size, device)
    decision = decision or {}
    positive = decision.get("positive_label", split.info.positive_label)
    return compute_metrics(y.numpy(), logits, split.info.task, class_names=split.info.labels, positive_label=positive,
                           operating_point=decision.get("operating_point"), temperature=decision.get("temperature") or 1.0,
                           n_bootstrap=n_bootstrap, seed=seed, artifact=False)
