"""The decision a deployed model makes: positive class, threshold and temperature, chosen on *validation*.

A binary model outputs p(positive class); the clinic acts on ``p >= threshold``. The threshold rule:

- ``youden``: maximises Youden's J = sensitivity + specificity - 1 on the validation split;
- ``sensitivity:0.95``: the highest threshold whose validation sensitivity is at least 0.95 (so the
  most specific such point);
- a number such as ``0.5``: that fixed threshold.

The chosen ``{"rule", "threshold", "chosen_on": "validation"}`` is stored in the checkpoint and the
ONNX metadata, used by ``qsal predict`` and reported beside the MedMNIST ACC at 0.5. Multi-class and
multi-label sets decide by argmax / 0.5 per label and have no operating point.
"""

from __future__ import annotations

import numpy as np

from qsal.data.registry import TASK_BINARY
from qsal.errors import QsalError, is_finite_number, is_integer, quote

__all__ = ["parse_rule", "choose_threshold", "choose_decision", "require_binary_for_rule", "resolve_positive_label",
           "validate_decision", "validate_labels", "describe_operating_point", "DEFAULT_RULE"]

DEFAULT_RULE = "youden"


def parse_rule(rule: str) -> tuple[str, float | None]:
    """``("youden", None)``, ``("sensitivity", 0.95)`` or ``("fixed", 0.5)``; one-line error otherwise."""
    text = str(rule).strip().lower()
    if text == "youden":
        return "youden", None
    try:
        if text.startswith("sensitivity:"):
            target = float(text.split(":", 1)[1])
            if 0.0 < target <= 1.0:
                return "sensitivity", target
        else:
            value = float(text)
            if 0.0 < value < 1.0:
                return "fixed", value
    except ValueError:
        pass
    raise QsalError(f"operating point {rule!r} is not one of: youden, sensitivity:S (0 < S <= 1), or a threshold "
                    "between 0 and 1 such as 0.5")


def require_binary_for_rule(info) -> None:
    """An ``--operating-point`` asked for applies to a binary set's positive class; on any other task it would be
    dropped without a word (such a model decides by its most probable class)."""
    if info.task != TASK_BINARY:
        raise QsalError(f"{info.name} is {info.task}; --operating-point applies to binary sets only (a {info.task} "
                        "model decides by its most probable class)")


def choose_threshold(y_true: np.ndarray, p_positive: np.ndarray, positive_label: int, rule: str = DEFAULT_RULE) -> dict:
    """``{"rule", "threshold", "chosen_on": "validation"}`` for scores ``p_positive`` ``(N,)`` of the positive class."""
    from sklearn.metrics import roc_curve

    kind, value = parse_rule(rule)
    if kind == "fixed":  # given, not chosen on any split
        return {"rule": str(rule), "threshold": float(value), "chosen_on": "fixed"}
    is_pos = np.asarray(y_true) == positive_label
    if is_pos.all() or not is_pos.any():
        raise QsalError(f"the validation split has only one class, so rule {rule!r} cannot pick a threshold; "
                        "pass --operating-point 0.5 (a fixed threshold)")
    p_positive = np.asarray(p_positive, dtype=np.float64)
    if not np.isfinite(p_positive).all():
        raise QsalError("the model's validation scores are not finite numbers (training diverged), so no threshold "
                        "can be chosen; train again with a lower --lr")
    # every threshold: by default roc_curve drops points inside straight runs of the curve, and with them the
    # highest threshold that reaches a sensitivity target (Youden's maximum is a vertex, kept either way)
    fpr, tpr, thresholds = roc_curve(is_pos.astype(int), p_positive, drop_intermediate=False)
    thresholds = np.minimum(thresholds, 1.0)  # roc_curve's first threshold is +inf: "nothing positive"
    if kind == "youden":
        i = int(np.argmax(tpr - fpr))
    else:  # tpr is non-decreasing along the curve: the first point reaching the target is the most specific
        i = int(np.argmax(tpr >= value - 1e-12))
    return {"rule": str(rule), "threshold": float(thresholds[i]), "chosen_on": "validation"}


def resolve_positive_label(info, positive_class: str | int | None = None) -> int | None:
    """The positive class id of a binary set: ``positive_class`` (a name or id) or the dataset table's."""
    if info.task != TASK_BINARY:
        if positive_class is not None:
            raise QsalError(f"{info.name} is {info.task}; --positive-class applies to binary sets only")
        return None
    if positive_class is None:
        return 1 if info.positive_label is None else int(info.positive_label)
    names = [str(n) for n in info.labels]
    if str(positive_class) in names:
        return names.index(str(positive_class))
    if str(positive_class) in ("0", "1"):
        return int(positive_class)
    raise QsalError(f"positive class {positive_class!r} is not a class of {info.name}; choose one of "
                    f"{', '.join(repr(n) for n in names)} (or 0/1)")


def choose_decision(val_logits: np.ndarray, val_labels: np.ndarray, info, *, positive_class: str | int | None = None,
                    rule: str = DEFAULT_RULE, temperature_scaling: bool = False, scores: str | None = None) -> dict:
    """Everything a deployed model needs to decide, fitted on the validation split.

    ``scores``: whose logits ``val_logits`` are (``"PyTorch model"``, ``"INT8 PyTorch model"``): recorded in the
    operating point and said wherever it is described, so a file exported with another model's threshold shows it.

    Returns ``{"positive_label", "positive_class", "operating_point", "temperature", "temperature_scaling"}``
    (the operating point is ``None`` for tasks that decide by argmax; the temperature 1.0 without scaling).
    """
    from qsal.metrics.calibration import fit_temperature
    from qsal.metrics.classification import as_label_vector, scores_from_logits

    y = as_label_vector(val_labels, info.task)
    temperature = fit_temperature(val_logits, y, info.task) if temperature_scaling else 1.0
    positive = resolve_positive_label(info, positive_class)
    decision = {"positive_label": positive, "positive_class": info.labels[positive] if positive is not None else None,
                "operating_point": None, "temperature": temperature, "temperature_scaling": bool(temperature_scaling)}
    if info.task == TASK_BINARY:
        probs = scores_from_logits(val_logits, info.task, temperature)
        decision["operating_point"] = choose_threshold(y, probs[:, positive], positive, rule)
        if scores:
            decision["operating_point"]["scores"] = str(scores)
    return decision


def describe_operating_point(op: dict, positive_name: str | None = None) -> str:
    """An operating point in words, one wording wherever qsal shows one (predict's ``decided_by``, evaluate's
    table, the model card, the study report): ``p(malignant) >= 0.0472135 (youden, chosen on the validation split
    with the PyTorch model's scores)``; a fixed threshold says ``fixed, not chosen``. ``positive_name`` ``None``
    reads ``threshold 0.0472135 (...)``."""
    chosen = op.get("chosen_on")
    if chosen in ("fixed", "fixed default"):
        where = "fixed, not chosen"
    else:
        where = f"chosen on the {chosen} split" if chosen else "chosen on an unrecorded split"
        where += f" of {op['dataset']}" if op.get("dataset") else ""  # scored on another set (--other-dataset)
        where += f" with the {op['scores']}'s scores" if op.get("scores") else ""
    threshold = f"{float(op['threshold']):.6g}"
    head = f"p({positive_name}) >= {threshold}" if positive_name is not None else f"threshold {threshold}"
    return f"{head} ({op.get('rule') or 'unrecorded rule'}, {where})"


def validate_labels(labels, num_classes: int | None, where: str, fix: str) -> None:
    """Refuse stored class names (``dataset.labels`` / ``data.labels``) that are not ``num_classes`` strings;
    ``None`` (absent) passes: predictions then name classes by id."""
    if labels is None:
        return
    if not (isinstance(labels, list) and labels and all(isinstance(n, str) for n in labels)):
        raise QsalError(f"{where}.labels must be a list of class names (strings), got {quote(labels)}; {fix}")
    if num_classes is not None and len(labels) != num_classes:
        raise QsalError(f"{where}.labels: {len(labels)} class names for a model with {num_classes} outputs; {fix}")
    if len(set(labels)) != len(labels):  # predictions are keyed by class name: two classes would share one column
        twice = sorted({n for n in labels if labels.count(n) > 1})
        raise QsalError(f"{where}.labels names {quote(twice[0])} twice; class names must be distinct; {fix}")


def validate_decision(decision, num_classes: int | None, where: str, fix: str, labels=None) -> None:
    """Refuse a stored decision (``choose_decision``'s dict, read back from a checkpoint or ONNX metadata) that
    would not decide correctly: a positive label outside ``[0, num_classes)``, a threshold that is not a
    probability, a temperature that is not a finite number > 0. ``None`` (absent) passes: argmax / 0.5."""
    if decision is None:
        return
    if not isinstance(decision, dict):
        raise QsalError(f"{where}: 'decision' must be a mapping, got {quote(decision)}; {fix}")
    pos = decision.get("positive_label")
    if pos is not None and not (is_integer(pos) and 0 <= pos < (num_classes if num_classes is not None else 2)):
        raise QsalError(f"{where}: decision.positive_label must be a class id 0-{(num_classes or 2) - 1} or null, "
                        f"got {quote(pos)}; {fix}")
    if decision.get("positive_class") is not None and not isinstance(decision["positive_class"], str):
        raise QsalError(f"{where}: decision.positive_class must be a class name, got "
                        f"{quote(decision['positive_class'])}; {fix}")
    named = decision.get("positive_class")
    if named is not None and pos is not None and labels and pos < len(labels) and str(labels[pos]) != named:
        # output names the class by id (labels[positive_label]): two answers to "which class is positive"
        raise QsalError(f"{where}: decision.positive_class is {named!r} but decision.positive_label {pos} is "
                        f"{str(labels[pos])!r}; {fix}")
    op = decision.get("operating_point")
    if op is not None:
        if not isinstance(op, dict):
            raise QsalError(f"{where}: decision.operating_point must be a mapping or null, got {quote(op)}; {fix}")
        if pos is None:  # the threshold applies to p(positive): without the class it decides nothing
            raise QsalError(f"{where}: decision.operating_point is set but decision.positive_label is null; a threshold "
                            f"applies to one class's probability, so name it (a class id); {fix}")
        if not (is_finite_number(op.get("threshold")) and 0.0 <= op["threshold"] <= 1.0):
            raise QsalError(f"{where}: decision.operating_point.threshold must be a probability in [0, 1], got "
                            f"{quote(op.get('threshold'))}; {fix}")
        for key in ("rule", "chosen_on", "scores"):
            if op.get(key) is not None and not isinstance(op[key], str):
                raise QsalError(f"{where}: decision.operating_point.{key} must be a string, got {quote(op[key])}; "
                                f"{fix}")
        if op.get("rule") is not None:  # quantize re-applies it to its child: refused here, where it was read
            try:
                parse_rule(op["rule"])
            except QsalError:
                raise QsalError(f"{where}: decision.operating_point.rule {op['rule']!r} is not youden, "
                                f"sensitivity:S or a threshold; {fix}") from None
    t = decision.get("temperature")
    if t is not None and not (is_finite_number(t) and t > 0):
        raise QsalError(f"{where}: decision.temperature must be a finite number > 0 (it divides the logits), got "
                        f"{quote(t)}; {fix}")
    if decision.get("temperature_scaling") is not None and not isinstance(decision["temperature_scaling"], bool):
        raise QsalError(f"{where}: decision.temperature_scaling must be true or false, got "
                        f"{quote(decision['temperature_scaling'])}; {fix}")
