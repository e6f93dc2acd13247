import numpy as np

from qsal.data import TASK_BINARY, TASK_MULTICLASS
from qsal.metrics import compute_metrics, expected_calibration_error, fit_temperature, scores_from_logits


def _ece_by_hand(y, probs, n_bins=15):
    conf, correct = probs.max(1), probs.argmax(1) == y
    total = 0.0
    for lo, hi in zip(np.linspace(0, 1, n_bins + 1)[:-1], np.linspace(0, 1, n_bins + 1)[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return total


def test_ece_matches_the_guo_et_al_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 500)
    logits = rng.normal(size=(500, 3)) * 2
    logits[np.arange(500), y] += 1.0
    probs = scores_from_logits(logits, TASK_MULTICLASS)
    ece, bins = expected_calibration_error(y, probs, TASK_MULTICLASS)
    assert np.isclose(ece, _ece_by_hand(y, probs))
    assert sum(b["count"] for b in bins) == 500


def test_temperature_scaling_recovers_an_overconfident_models_temperature():
    """Finding 2: probabilities were never calibrated. Logits x4 of a calibrated model -> T close to 4, ECE drops."""
    rng = np.random.default_rng(1)
    n = 4000
    true_logit = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(int)  # calibrated by construction
    logits = np.stack([np.zeros(n), 4.0 * true_logit], axis=1)
    t = fit_temperature(logits, y, TASK_BINARY)
    assert 3.5 < t < 4.5
    raw = compute_metrics(y, logits, TASK_BINARY, n_bootstrap=0)
    scaled = compute_metrics(y, logits, TASK_BINARY, temperature=t, n_bootstrap=0)
    assert scaled.ece < 0.03 < raw.ece and np.isclose(scaled.auc, raw.auc) and scaled.temperature == t
