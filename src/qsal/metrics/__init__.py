"""Metrics: MedMNIST definitions + clinical extras (``classification``), the validation-chosen decision
(``operating_point``), and calibration (``calibration``). ``qsal.evaluate`` / ``qsal.compute_metrics``
are re-exported from here."""

import importlib

# Imported on first use (PEP 562), so qsal.runtime, which needs only the decision's helpers (operating_point), loads
# neither scikit-learn nor SciPy on an edge device.
_LAZY = {**dict.fromkeys(("expected_calibration_error", "fit_temperature", "save_reliability_diagram"),
                         "qsal.metrics.calibration"),
         **dict.fromkeys(("Metrics", "acc_score", "as_label_vector", "auc_score", "compute_metrics", "evaluate",
                          "predict_logits", "scores_from_logits"), "qsal.metrics.classification"),
         **dict.fromkeys(("choose_decision", "choose_threshold", "parse_rule", "resolve_positive_label"),
                         "qsal.metrics.operating_point")}

__all__ = ["Metrics", "acc_score", "as_label_vector", "auc_score", "compute_metrics", "evaluate", "predict_logits",
           "scores_from_logits", "expected_calibration_error", "fit_temperature", "save_reliability_diagram",
           "choose_decision", "choose_threshold", "parse_rule", "resolve_positive_label"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qsal.metrics' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
