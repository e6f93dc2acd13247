"""What a split must hold before anything is trained on it: a training split of two or more classes, and a validation
split with every class wherever it chooses the epoch (AUC) or the threshold (a rule). Each refusal is one line."""

from __future__ import annotations

import numpy as np

from qsal.data.arrays import ImageSplit
from qsal.data.registry import TASK_BINARY
from qsal.errors import QsalError
from qsal.metrics.operating_point import parse_rule

__all__ = ["require_training_classes", "require_validation_classes"]


def require_training_classes(train: ImageSplit) -> None:
    """A training split of a single class is refused: there is nothing to learn."""
    labels = np.asarray(train.labels)
    if train.info.task.startswith("multi-label") or labels.ndim != 1:
        return
    present = np.unique(labels)
    if len(present) < 2:
        only = train.info.labels[int(present[0])] if len(present) else "none"
        raise QsalError(f"the training split of {train.info.name} has a single class ({only!r}, {len(labels)} images); "
                        "a classifier needs examples of at least 2 classes: add images of the other classes")


def require_validation_classes(val: ImageSplit, select_on: str | None, rule: str) -> None:
    """A validation split missing a class has no AUC (to choose the epoch by; one-vs-rest needs every class) and, for
    a binary set, no ROC (to place a threshold by a rule): refuse before anything is trained or written."""
    labels = np.asarray(val.labels)
    if val.info.task.startswith("multi-label") or labels.ndim != 1:
        return
    names = list(val.info.labels)
    missing = [names[c] for c in range(len(names)) if not (labels == c).any()]
    if not missing:
        return
    cannot, flags = [], []
    if select_on == "auc":
        cannot.append("choose the epoch by its AUC")
        flags.append("--select-on loss (a study: select_on: loss)")
    if val.info.task == TASK_BINARY and parse_rule(rule)[0] != "fixed":
        cannot.append(f"place a threshold by rule {rule!r}")
        flags.append("--operating-point 0.5")
    if cannot:
        raise QsalError(f"the validation split of {val.info.name} ({len(labels)} images) has none of class "
                        f"{', '.join(map(repr, missing))}, so it cannot {' nor '.join(cannot)}; add images of it (a "
                        "folder dataset's validation part is 10 % of each class: 6 or more images put one there), or "
                        f"pass {' and '.join(flags)}")
