"""Multi-label (ChestMNIST-style, 14 labels) saliency: one target definition through SGT, explain, the
faithfulness metrics and the study runner's saliency step, on synthetic data."""

import numpy as np
import pytest
import torch
from torch import nn

from qsal.data import TASK_MULTILABEL, get_info
from qsal.data.arrays import ImageSplit
from qsal.errors import QsalError
from qsal.models import create_model
from qsal.saliency import METHODS, SaliencyGuidedStep, explain, input_saliency, mask_lowest
from qsal.saliency.metrics import deletion_insertion, faithfulness_curve
from qsal.saliency.targets import multilabel_target_weights
from qsal.study.cell import explanation_measures
from qsal.train import TrainConfig, fit

L = 14


def _linear(seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(36, L)
    return nn.Sequential(nn.Flatten(), lin), lin.weight.detach()


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = (torch.rand(n, L, generator=g) < 0.2).float()
    y[:2] = 0  # two "normal" images: no positive label
    y[2, :3] = 1
    return x, y


def test_target_is_the_positive_labels_or_the_most_probable_one():
    y = np.array([[0, 1, 1], [0, 0, 0]])
    z = np.array([[5.0, -1, 0], [-3.0, 2, -1]])
    assert multilabel_target_weights(y, z).tolist() == [[0, 1, 1], [0, 1, 0]]


def test_sgt_masks_the_least_salient_pixels_of_each_image():
    model, W = _linear()
    x, y = _batch()
    z = model(x).detach()
    w = torch.from_numpy(multilabel_target_weights(y.numpy(), z.numpy()))
    # d/dx sum_l w_l log sigmoid(z_l) = sum_l w_l (1 - sigmoid(z_l)) W_l, by hand
    by_hand = ((w * (1 - torch.sigmoid(z))) @ W).view(-1, 6, 6)
    sal = input_saliency(model, x, y, TASK_MULTILABEL)
    assert torch.allclose(sal, by_hand, atol=1e-6)
    assert (sal.abs().sum(dim=(1, 2)) > 0).all()  # no all-zero map, also for the images with no positive label
    masked = mask_lowest(x, sal, 0.5, fill="random", generator=torch.Generator().manual_seed(0))
    changed = (masked != x).view(len(x), -1)
    for i in range(len(x)):
        want = set(by_hand[i].flatten().argsort()[:18].tolist())
        assert set(changed[i].nonzero().flatten().tolist()) == want
    positional = set(range(18))
    assert all(set(changed[i].nonzero().flatten().tolist()) != positional for i in range(len(x)))
    assert len({tuple(changed[i].nonzero().flatten().tolist()) for i in range(len(x))}) == len(x)
    logit_sal = input_saliency(model, x, y, TASK_MULTILABEL, target="logit")
    assert torch.allclose(logit_sal, (w @ W).view(-1, 6, 6), atol=1e-6)


def _chest_split(n, seed, split):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, L)) < 0.15).astype(np.int64)
    images = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
    images[labels[:, 0] == 1, 2:8, 2:8] = 230  # label 0 is learnable
    return ImageSplit(get_info("chestmnist"), split, images, labels, "synthetic")


def test_sgt_trains_a_14_label_model(tmp_path):
    train, val = _chest_split(64, 0, "train"), _chest_split(32, 1, "val")
    model = create_model("small_cnn", L, 1, seed=0)
    step = SaliencyGuidedStep(TASK_MULTILABEL, k=0.5)
    x, y = train.tensors()
    out = step(model, x[:16], y[:16])
    assert out["kl"] >= 0 and torch.isfinite(out["loss"])
    result = fit(model, train, val, TrainConfig(epochs=1, batch_size=32, progress=False), tmp_path, step=step)
    assert np.isfinite(result.history[0]["train_loss"])


def test_explain_takes_label_vectors():
    model, W = _linear()
    x, y = _batch()
    w = torch.from_numpy(multilabel_target_weights(y.numpy(), model(x).detach().numpy()))
    assert torch.allclose(explain(model, x, "gradient", target=y), (w @ W).view(-1, 1, 6, 6), atol=1e-6)
    cnn = create_model("small_cnn", L, 1, seed=0).eval()
    xc = torch.randn(3, 1, 28, 28)
    yc = torch.zeros(3, L)
    yc[0, [1, 4]] = 1
    for method in METHODS:
        maps = explain(cnn, xc, method, target=yc, ig_steps=4, n_samples=2, window=7, stride=7)
        assert maps.shape == (3, 1, 28, 28) and torch.isfinite(maps).all(), method
    with pytest.raises(QsalError, match="multi-label target"):
        explain(cnn, xc, "gradient", target=torch.zeros(3, 5))


def test_faithfulness_and_deletion_run_on_label_vectors():
    model, W = _linear()
    x, y = _batch(16)
    fn = lambda a: model(torch.from_numpy(a)).detach().numpy()  # noqa: E731
    maps = explain(model, x, "gradient_abs", target=y).numpy()
    res = faithfulness_curve(fn, x.numpy(), y.numpy(), maps, fill="constant")
    assert res["acc_top"][0] == pytest.approx(float(((fn(x.numpy()) > 0) == (y.numpy() == 1)).mean()))
    assert len(res["acc_top"]) == len(res["fractions"]) and np.isfinite(res["gap"])
    di = deletion_insertion(fn, x.numpy(), y.numpy(), maps, steps=4)
    assert 0 <= di["deletion_auc"] <= 1 and 0 <= di["insertion_auc"] <= 1


def test_the_runner_saliency_step_runs_on_label_vectors():
    split = _chest_split(8, 2, "test")
    x, y = split.tensors()
    maps, measures = explanation_measures(create_model("small_cnn", L, 1, seed=0), x, y, seed=0)
    assert maps.shape == (8, 1, 28, 28) and np.isfinite(measures["faithfulness_gap"]) and 0 <= measures["gini"] <= 1
