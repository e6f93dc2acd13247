"""qsal.metrics.bootstrap: the weighted-resample CI equals scoring each resampled split, and a row's CI of the mean
over seeds resamples a shared test set image for image."""

import numpy as np
import pytest

from qsal.data.registry import TASK_BINARY, TASK_MULTICLASS, TASK_MULTILABEL, TASK_ORDINAL
from qsal.metrics.bootstrap import bootstrap_ci, percentile_ci
from qsal.metrics.classification import acc_score, auc_score


def _predictions(task: str, n: int, k: int, rng):
    if task == TASK_MULTILABEL:
        y = (rng.random((n, k)) < 0.3).astype(int)
        s = np.clip(y * 0.2 + rng.random((n, k)) * 0.8, 0, 1)
    else:
        y = rng.integers(0, k, n)
        s = rng.dirichlet(np.ones(k), n) + np.eye(k)[y] * 0.3
        s /= s.sum(axis=1, keepdims=True)
    return y, np.round(s, 2)  # rounded: ties, which the rank identity shares half-and-half


def _resampled_split_ci(y, s, task, n_bootstrap, seed):
    """The definition: score every resampled split with the MedMNIST metrics themselves."""
    rng = np.random.default_rng(seed)
    aucs, accs = [], []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(y), len(y))
        aucs.append(auc_score(y[idx], s[idx], task))
        accs.append(acc_score(y[idx], s[idx], task))
    return {"auc": percentile_ci(aucs), "acc": percentile_ci(accs)}


@pytest.mark.parametrize("task,k,n", [(TASK_BINARY, 2, 60), (TASK_MULTICLASS, 10, 300), (TASK_ORDINAL, 5, 120),
                                      (TASK_MULTILABEL, 4, 90)])
def test_one_models_ci_is_that_of_scoring_each_resampled_split(task, k, n):
    rng = np.random.default_rng(k)
    y, s = _predictions(task, n, k, rng)
    fast = bootstrap_ci([(y, s)], task, 200, seed=5)
    exact = _resampled_split_ci(y, s, task, 200, seed=5)
    for metric in ("auc", "acc"):
        assert fast[metric] == pytest.approx(exact[metric], abs=1e-12)
    assert 0.5 < fast["auc"][0] < fast["auc"][1] < 1


def test_a_resample_with_one_class_leaves_auc_out_not_the_ci():
    y, s = np.array([0] * 9 + [1]), np.linspace(0.05, 0.95, 10)[:, None] * np.array([-1, 1]) + np.array([1, 0])
    ci = bootstrap_ci([(y, s)], TASK_BINARY, 300, seed=0)
    assert ci["auc"] == pytest.approx(_resampled_split_ci(y, s, TASK_BINARY, 300, 0)["auc"])  # NaN resamples dropped


def test_the_mean_over_seeds_resamples_a_shared_test_set_together_and_separate_ones_apart():
    rng = np.random.default_rng(0)
    y, s = _predictions(TASK_BINARY, 400, 2, rng)
    one = bootstrap_ci([(y, s)], TASK_BINARY, 400, seed=1)
    # the same predictions of the same images twice: each resample scores both alike, so the mean's CI is the model's
    assert bootstrap_ci([(y, s), (y, s)], TASK_BINARY, 400, seed=1) == one
    # two test sets of their own (a folder split by each seed): independent draws average out, the CI narrows ~1/sqrt 2
    order = rng.permutation(len(y))
    apart = bootstrap_ci([(y, s), (y[order], s[order])], TASK_BINARY, 400, seed=1)
    width = {m: (apart[m][1] - apart[m][0]) / (one[m][1] - one[m][0]) for m in ("auc", "acc")}
    assert all(0.55 < w < 0.85 for w in width.values()), width
    # seeds of one test set that disagree: the mean's CI holds the mean of their scores on the whole split
    s2 = np.clip(s + rng.normal(0, 0.2, s.shape), 0, 1)
    both = bootstrap_ci([(y, s), (y, s2)], TASK_BINARY, 400, seed=1)
    for m, score in (("auc", auc_score), ("acc", acc_score)):
        assert both[m][0] < (score(y, s, TASK_BINARY) + score(y, s2, TASK_BINARY)) / 2 < both[m][1]
