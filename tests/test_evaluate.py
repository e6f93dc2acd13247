import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from qsal.data import TASK_BINARY, TASK_MULTICLASS, TASK_MULTILABEL, TASK_ORDINAL
from qsal.metrics import compute_metrics, scores_from_logits


def test_binary_matches_sklearn_and_medmnist_definitions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    logits = rng.normal(size=(300, 2)) + np.stack([np.zeros(300), y * 1.5], axis=1)
    m = compute_metrics(y, logits, TASK_BINARY, n_bootstrap=200)
    p = scores_from_logits(logits, TASK_BINARY)[:, 1]
    assert np.isclose(m.auc, roc_auc_score(y, p))
    assert np.isclose(m.acc, accuracy_score(y, (p > 0.5).astype(int)))
    tp = np.sum((p > 0.5) & (y == 1))
    assert np.isclose(m.sensitivity, tp / np.sum(y == 1))
    assert np.isclose(m.specificity, np.sum((p <= 0.5) & (y == 0)) / np.sum(y == 0))
    assert np.isclose(m.balanced_accuracy, balanced_accuracy_score(y, (p > 0.5).astype(int)))
    lo, hi = m.ci["auc"]
    assert lo < m.auc < hi and hi - lo < 0.2


def test_multiclass_and_ordinal_use_macro_ovr_auc_and_argmax():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 400)
    logits = rng.normal(size=(400, 5))
    logits[np.arange(400), y] += 1.0
    probs = scores_from_logits(logits, TASK_MULTICLASS)
    for task in (TASK_MULTICLASS, TASK_ORDINAL):
        m = compute_metrics(y, logits, task, n_bootstrap=0)
        assert np.isclose(m.auc, roc_auc_score(y, probs, multi_class="ovr", average="macro"))
        assert np.isclose(m.acc, accuracy_score(y, probs.argmax(1)))
        assert np.isclose(m.macro_f1, f1_score(y, probs.argmax(1), average="macro"))
        assert np.array(m.confusion).sum() == 400


def test_multilabel_mean_auc_and_elementwise_acc():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (200, 4))
    logits = rng.normal(size=(200, 4)) + y
    m = compute_metrics(y, logits, TASK_MULTILABEL, n_bootstrap=0)
    p = 1 / (1 + np.exp(-logits))
    assert np.isclose(m.auc, np.mean([roc_auc_score(y[:, i], p[:, i]) for i in range(4)]))
    assert np.isclose(m.acc, np.mean((p > 0.5) == y))
