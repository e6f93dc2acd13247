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


def test_sensitivity_is_about_the_named_positive_class():
    """Finding 1: BreastMNIST's positive class is malignant (label 0); sensitivity is malignant recall."""
    from qsal.data import get_info

    info = get_info("breastmnist")
    assert info.positive_label == 0 and info.positive_class == "malignant"
    assert get_info("pneumoniamnist").positive_class == "pneumonia"
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    logits = rng.normal(size=(400, 2)) + np.stack([np.zeros(400), y * 1.2], axis=1)
    m = compute_metrics(y, logits, TASK_BINARY, class_names=info.labels, positive_label=0, n_bootstrap=0)
    pred = scores_from_logits(logits, TASK_BINARY)[:, 1] > 0.5
    assert m.positive_class == "malignant" and m.to_dict()["positive_class"] == "malignant"
    assert np.isclose(m.sensitivity, np.mean(~pred[y == 0]))  # malignant recall
    assert np.isclose(m.specificity, np.mean(pred[y == 1]))
    assert np.isclose(m.per_class_recall["malignant"], m.sensitivity)
    label1 = compute_metrics(y, logits, TASK_BINARY, n_bootstrap=0)  # the MedMNIST label-1 convention
    assert np.isclose(label1.sensitivity, m.specificity) and m.sensitivity != label1.sensitivity


def test_operating_point_metrics_and_cis():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    logits = rng.normal(size=(300, 2)) + np.stack([np.zeros(300), y * 1.5], axis=1)
    op = {"rule": "youden", "threshold": 0.3, "chosen_on": "validation"}
    m = compute_metrics(y, logits, TASK_BINARY, positive_label=1, operating_point=op, n_bootstrap=200)
    p1 = scores_from_logits(logits, TASK_BINARY)[:, 1]
    assert np.isclose(m.sensitivity_at_op, np.mean(p1[y == 1] >= 0.3))
    assert np.isclose(m.specificity_at_op, np.mean(p1[y == 0] < 0.3))
    assert m.sensitivity_at_op > m.sensitivity  # a lower threshold catches more positives
    lo, hi = m.ci["sensitivity_at_op"]
    assert lo <= m.sensitivity_at_op <= hi and m.operating_point == op


def test_wilson_interval_matches_published_values():
    """Brown, Cai & DasGupta (2001) / Newcombe (1998) worked examples: 81 of 263 -> [0.2553, 0.3662];
    0 of 10 -> [0, 0.2775]; 10 of 10 -> [0.7225, 1]."""
    from qsal.metrics.classification import wilson_interval

    assert np.allclose(wilson_interval(81, 263), [0.2553, 0.3662], atol=5e-5)
    assert np.allclose(wilson_interval(0, 10), [0.0, 0.2775], atol=5e-5)
    assert np.allclose(wilson_interval(10, 10), [0.7225, 1.0], atol=5e-5)
    assert wilson_interval(0, 0) is None
    # exactly 0 and 1 at the ends: 0 of 234 printed "1.735e-18–0.01615" (the formula's rounding left over)
    for n in (1, 7, 234, 10_000):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


def test_decision_metrics_at_the_operating_point_for_positive_label_0():
    """BreastMNIST's positive class is label 0: PPV, NPV, accuracy and the confusion matrix at the operating point
    are about it (scikit-learn with pos_label=0 agrees), and a sensitivity of 1.000 on few positives gets a
    Wilson interval, not the bootstrap's zero-width [1, 1]."""
    from sklearn.metrics import confusion_matrix, precision_score

    rng = np.random.default_rng(7)
    y = np.r_[np.zeros(12, int), np.ones(188, int)]
    logits = np.stack([np.where(y == 0, 3.0, 0.0) + rng.normal(0, 0.3, 200), rng.normal(0, 1, 200)], axis=1)
    op = {"rule": "youden", "threshold": 0.6, "chosen_on": "validation"}
    m = compute_metrics(y, logits, TASK_BINARY, positive_label=0, operating_point=op, n_bootstrap=100)
    p0 = scores_from_logits(logits, TASK_BINARY)[:, 0]
    decided = np.where(p0 >= 0.6, 0, 1)
    assert m.sensitivity_at_op == 1.0 and m.confusion_at_op == confusion_matrix(y, decided, labels=[0, 1]).tolist()
    assert np.isclose(m.ppv_at_op, precision_score(y, decided, pos_label=0))
    assert np.isclose(m.npv_at_op, precision_score(y, decided, pos_label=1))
    assert np.isclose(m.accuracy_at_op, np.mean(decided == y)) and np.isclose(m.prevalence, 0.06)
    lo, hi = m.ci["sensitivity_at_op"]
    assert hi == 1.0 and np.isclose(lo, 0.7575, atol=1e-4)  # 12 of 12: Wilson, not [1, 1]
    assert m.ci_method["sensitivity_at_op"] == "Wilson score" and "bootstrap" in m.ci_method["auc"]
    d = m.to_dict()
    assert d["ppv_at_op"] == m.ppv_at_op and d["ci"]["npv_at_op"] is not None


def test_an_undefined_ppv_says_no_image_was_decided_positive_not_that_a_class_is_missing():
    y = np.array([0, 1] * 5)
    logits = np.zeros((10, 2))
    m = compute_metrics(y, logits, TASK_BINARY, positive_label=1,
                        operating_point={"rule": "fixed", "threshold": 0.99, "chosen_on": "fixed"}, n_bootstrap=0)
    d = m.to_dict()
    assert d["ppv_at_op"] is None and d["undefined"]["ppv_at_op"] == "no image was decided positive at the operating point"
    assert d["npv_at_op"] == 0.5 and "npv_at_op" not in d["undefined"]


def test_labels_shaped_n_by_1_give_the_same_numbers():
    """Finding 6: the official (N, 1) label shape gave a wrong ACC and crashed the bootstrap."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 250)
    logits = rng.normal(size=(250, 2)) + np.stack([np.zeros(250), y * 2.0], axis=1)
    flat = compute_metrics(y, logits, TASK_BINARY, n_bootstrap=50)
    column = compute_metrics(y[:, None], logits, TASK_BINARY, n_bootstrap=50)
    assert flat.to_dict() == column.to_dict()
    assert np.isclose(column.acc, np.mean((scores_from_logits(logits, TASK_BINARY)[:, 1] > 0.5) == y))


def test_one_class_sample_gives_null_with_a_reason_and_no_warnings():
    """Finding 3: a one-class sample printed "auc": NaN (invalid JSON) and a flood of scikit-learn warnings."""
    import json
    import warnings

    y = np.zeros(6, dtype=int)
    logits = np.random.default_rng(6).normal(size=(6, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = compute_metrics(y, logits, TASK_BINARY, n_bootstrap=200).to_dict()
    text = json.dumps(d, allow_nan=False)  # raises on NaN
    assert json.loads(text)["auc"] is None and "auc" in d["undefined"] and d["sensitivity"] is None


def test_multiclass_reports_per_class_recall():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), y] += 1.0
    m = compute_metrics(y, logits, TASK_MULTICLASS, class_names=["a", "b", "c"], n_bootstrap=0)
    pred = logits.argmax(1)
    assert m.per_class_recall == {n: float(np.mean(pred[y == i] == i)) for i, n in enumerate("abc")}
    assert m.sensitivity is None and m.positive_class is None


def test_qsal_evaluate_is_callable_after_fit_imported_the_metrics():
    """Finding 6: `qsal.evaluate` was shadowed by the module `qsal.evaluate` once `qsal.fit` imported it."""
    import qsal

    assert callable(qsal.fit) and callable(qsal.evaluate) and callable(qsal.compute_metrics)
    import qsal.train  # noqa: F401  (imports the metrics package)

    assert callable(qsal.evaluate) and qsal.evaluate.__module__ == "qsal.metrics.classification"


def test_rank_auc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 500)
    logits = np.round(rng.normal(size=(500, 2)) + np.stack([np.zeros(500), y], axis=1), 1)  # many ties
    m = compute_metrics(y, logits, TASK_BINARY, n_bootstrap=0)
    assert np.isclose(m.auc, roc_auc_score(y, scores_from_logits(logits, TASK_BINARY)[:, 1]), rtol=0, atol=1e-12)


def test_compute_metrics_refuses_what_it_would_misread():
    """Found by a new-user audit: temperature -1 inverted every prediction (AUC .09 for .91), task 'binary' was scored
    as multi-class with no sensitivity, three logit columns passed for a binary task, and a bad positive_label or an
    operating point without a threshold raised IndexError / KeyError."""
    import pytest

    from qsal.errors import QsalError

    y, logits = np.array([0, 1, 0, 1]), np.array([[2., 0], [0, 2], [1, 0], [0, 1]])
    assert compute_metrics(y, logits, TASK_BINARY, n_bootstrap=0).auc == 1.0
    for kwargs, message in ((dict(temperature=-1), "temperature must be a number > 0"),
                            (dict(temperature=0), "temperature must be a number > 0"),
                            (dict(task="binary"), "task 'binary' is not one of binary-class"),
                            (dict(logits=np.zeros((4, 3))), "K = 2 for a binary task, got shape \\(4, 3\\)"),
                            (dict(positive_label=2), "positive_label must be a class id 0-1, got 2"),
                            (dict(class_names=["a"]), "class_names names 1 classes but the logits score 2"),
                            (dict(operating_point={"rule": "youden"}), "operating_point needs a 'threshold'")):
        args = {"task": TASK_BINARY, "logits": logits, "n_bootstrap": 0, **kwargs}
        with pytest.raises(QsalError, match=message):
            compute_metrics(y, args.pop("logits"), args.pop("task"), **args)


def test_a_training_summary_is_json_with_an_undefined_figure_as_null_and_its_reason():
    """`qsal train --json` printed `"ppv_at_op": NaN` (not JSON) where no test image was decided positive at the
    operating point, and its table `nan`; `qsal evaluate` of the same model said null and why."""
    import json

    from qsal.metrics.classification import compute_metrics
    from qsal.pipeline import _summary

    y = np.array([0, 1] * 20)
    logits = np.stack([np.zeros(40), np.linspace(-3, -1, 40)], axis=1)  # label 1 always below 0.5: none positive
    m = compute_metrics(y, logits, "binary-class", positive_label=1, class_names=["a", "b"], n_bootstrap=0,
                        operating_point={"rule": "fixed", "threshold": 0.9, "chosen_on": "fixed"})
    assert np.isnan(m.ppv_at_op)
    s = json.loads(json.dumps(_summary("x.safetensors", m), allow_nan=False))
    assert s["ppv_at_op"] is None
    assert s["undefined"]["ppv_at_op"] == "no image was decided positive at the operating point"
    assert s["sensitivity_at_op"] == 0.0 and "ppv_at_op" not in {k for k, v in s.items() if isinstance(v, float)}
