"""Metrics: MedMNIST definitions + clinical extras (``classification``), the validation-chosen decision
(``operating_point``), and calibration (``calibration``). ``qsal.evaluate`` / ``qsal.compute_metrics``
are re-exported from here."""

from qsal.metrics.calibration import expected_calibration_error, fit_temperature, save_reliability_diagram
from qsal.metrics.classification import (Metrics, acc_score, as_label_vector, auc_score, compute_metrics, evaluate,
                                         predict_logits, scores_from_logits)
from qsal.metrics.operating_point import choose_decision, choose_threshold, parse_rule, resolve_positive_label

__all__ = ["Metrics", "acc_score", "as_label_vector", "auc_score", "compute_metrics", "evaluate", "predict_logits",
           "scores_from_logits", "expected_calibration_error", "fit_temperature", "save_reliability_diagram",
           "choose_decision", "choose_threshold", "parse_rule", "resolve_positive_label"]
