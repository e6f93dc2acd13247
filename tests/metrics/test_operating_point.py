import numpy as np
import pytest

from qsal.data import get_info
from qsal.errors import QsalError
from qsal.metrics import choose_decision, choose_threshold, parse_rule


def _data(seed=0, n=400):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.2, n), 0, 1)
    return y, score


def test_youden_threshold_maximises_j_over_every_cut():
    y, p = _data()
    op = choose_threshold(y, p, positive_label=1, rule="youden")
    assert op["rule"] == "youden" and op["chosen_on"] == "validation"
    j = lambda t: np.mean(p[y == 1] >= t) + np.mean(p[y == 0] < t) - 1  # noqa: E731
    assert np.isclose(j(op["threshold"]), max(j(t) for t in np.unique(p)))


def test_sensitivity_target_is_met_with_the_highest_threshold():
    y, p = _data(1)
    op = choose_threshold(y, p, positive_label=1, rule="sensitivity:0.95")
    sens = lambda t: np.mean(p[y == 1] >= t)  # noqa: E731
    assert sens(op["threshold"]) >= 0.95
    assert all(sens(t) < 0.95 for t in np.unique(p) if t > op["threshold"])


def test_sensitivity_target_is_met_with_the_highest_threshold_inside_a_straight_run_of_the_roc():
    """Positives scored above every negative but one: the ROC climbs straight up from (0.1, 0), and roc_curve's
    default drops the points inside that run, the highest threshold reaching 90 % sensitivity (0.641) among them."""
    y = np.r_[np.ones(20), np.zeros(10)].astype(int)
    p = np.r_[np.linspace(0.99, 0.60, 20), np.linspace(0.5, 0.05, 10)]
    p[20] = 0.995
    op = choose_threshold(y, p, positive_label=1, rule="sensitivity:0.9")
    assert op["threshold"] == pytest.approx(p[17]) and np.mean(p[y == 1] >= op["threshold"]) == 0.9


def test_positive_label_zero_uses_that_class_scores():
    y, p = _data(2)
    op = choose_threshold(1 - y, 1 - p, positive_label=0, rule="sensitivity:0.9")
    assert np.mean((1 - p)[y == 0] >= op["threshold"]) >= 0.9


@pytest.mark.parametrize("rule", ["youden", "sensitivity:0.95", "0.5", "0.3"])
def test_rules_parse(rule):
    parse_rule(rule)


@pytest.mark.parametrize("rule", ["yuden", "sensitivity:1.5", "1.2", "sensitivity:x"])
def test_bad_rules_are_one_line_errors(rule):
    with pytest.raises(QsalError, match="operating point"):
        parse_rule(rule)


def test_decision_for_breastmnist_defaults_to_malignant_and_takes_an_override():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    logits = np.stack([np.zeros(200), 2.0 * y + rng.normal(size=200)], axis=1)
    info = get_info("breastmnist")
    d = choose_decision(logits, y, info)
    assert d["positive_label"] == 0 and d["positive_class"] == "malignant" and d["temperature"] == 1.0
    d1 = choose_decision(logits, y, info, positive_class="normal, benign", rule="0.5", temperature_scaling=True)
    assert d1["positive_label"] == 1 and d1["operating_point"]["threshold"] == 0.5 and d1["temperature"] != 1.0
    with pytest.raises(QsalError, match="not a class of breastmnist"):
        choose_decision(logits, y, info, positive_class="benign")


def test_a_fixed_threshold_is_recorded_as_fixed_not_as_chosen_on_validation():
    op = choose_threshold(np.array([0, 1, 1, 0]), np.array([0.2, 0.7, 0.4, 0.9]), positive_label=1, rule="0.3")
    assert op == {"rule": "0.3", "threshold": 0.3, "chosen_on": "fixed"}


@pytest.mark.parametrize("op,positive,words", [
    ({"rule": "youden", "threshold": 0.047213, "chosen_on": "validation"}, "malignant",
     "p(malignant) >= 0.047213 (youden, chosen on the validation split)"),
    ({"rule": "sensitivity:0.95", "threshold": 0.2, "chosen_on": "validation", "scores": "PyTorch model"}, "malignant",
     "p(malignant) >= 0.2 (sensitivity:0.95, chosen on the validation split with the PyTorch model's scores)"),
    ({"rule": "0.3", "threshold": 0.3, "chosen_on": "fixed"}, "pneumonia", "p(pneumonia) >= 0.3 (0.3, fixed, not chosen)"),
    ({"rule": "youden", "threshold": 0.5, "chosen_on": "fixed default"}, None, "threshold 0.5 (youden, fixed, not chosen)"),
    ({"threshold": 0.4}, "1", "p(1) >= 0.4 (unrecorded rule, chosen on an unrecorded split)"),
])
def test_one_wording_of_an_operating_point(op, positive, words):
    """predict's decided_by, evaluate's table, the model card and the study report all print this one phrase: a
    fixed threshold must never read as chosen on a split."""
    from qsal.metrics.operating_point import describe_operating_point

    assert describe_operating_point(op, positive) == words


def test_a_stored_threshold_needs_its_positive_class_and_a_null_temperature_means_none_fitted():
    from qsal.metrics.operating_point import validate_decision

    op = {"rule": "youden", "threshold": 0.3, "chosen_on": "validation"}
    with pytest.raises(QsalError, match="operating_point is set but decision.positive_label is null"):
        validate_decision({"positive_label": None, "operating_point": op}, 2, "m.onnx", "re-export it")
    validate_decision({"positive_label": 0, "operating_point": op, "temperature": None}, 2, "m.onnx", "re-export it")
    validate_decision({"positive_label": None, "operating_point": None}, 3, "m.onnx", "re-export it")  # argmax


def test_diverged_scores_are_refused_in_one_line():
    import numpy as np
    import pytest

    from qsal.errors import QsalError
    from qsal.metrics.operating_point import choose_threshold

    with pytest.raises(QsalError, match=r"validation scores are not finite numbers \(training diverged\)"):
        choose_threshold(np.array([0, 1, 0, 1]), np.array([0.1, np.nan, 0.3, 0.9]), 1, "youden")
