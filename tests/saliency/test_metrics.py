import numpy as np
import pytest
import torch

from qsal.saliency.metrics import agreement, deletion_insertion, faithfulness_curve, gini, spearman_per_image, topk_iou


def _corner_model(a):
    """Class 1 iff the top-left 4x4 corner is bright: only those 16 pixels matter."""
    s = a[:, 0, :4, :4].mean(axis=(1, 2))
    return np.stack([np.zeros_like(s), (s - 0.5) * 10], axis=1)


def _images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.2, (n, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 2, n)
    x[y == 1, :, :4, :4] = 1.0
    return x, y


def test_faithful_maps_remove_accuracy_faster_than_random():
    x, y = _images()
    good = np.zeros_like(x)
    good[:, :, :4, :4] = 1.0  # points at the pixels the model uses
    res = faithfulness_curve(_corner_model, x, y, good, fill="constant")
    assert res["acc_top"][0] == 1.0 and res["acc_top"][1] < 0.8  # removing 10 % kills the signal
    assert res["gap"] > 0.2
    bad = np.random.default_rng(1).random(x.shape)
    assert faithfulness_curve(_corner_model, x, y, bad)["gap"] < res["gap"]
    # the images with the corner lit (class 1) lose it to removal; class-0 images stay class 0 whatever is removed
    assert res["changed"] == float(np.mean(y == 1))


def test_a_model_whose_decisions_no_removal_moves_has_a_gap_of_zero_and_says_so():
    x, y = _images()
    one_class = lambda a: np.tile([2.0, -1.0], (len(a), 1))  # noqa: E731 - class 0 for any input
    good = np.zeros_like(x)
    good[:, :, :4, :4] = 1.0
    res = faithfulness_curve(one_class, x, y, good)
    assert res["gap"] == 0.0 and res["changed"] == 0.0
    assert res["acc_top"] == res["acc_random"] == [float(np.mean(y == 0))] * len(res["fractions"])


def test_deletion_low_insertion_high_for_the_right_map():
    x, y = _images()
    x, y = x[y == 1], y[y == 1]
    good = np.zeros_like(x)
    good[:, :, :4, :4] = 1.0
    res = deletion_insertion(_corner_model, x, y, good, steps=10)
    rev = deletion_insertion(_corner_model, x, y, -good + 1, steps=10)
    assert res["deletion_auc"] < rev["deletion_auc"] and res["insertion_auc"] > rev["insertion_auc"]


def test_agreement_metrics_identity_and_opposites():
    rng = np.random.default_rng(0)
    a = rng.random((5, 1, 28, 28))
    assert np.allclose(spearman_per_image(a, a), 1.0)
    assert np.allclose(spearman_per_image(a, -a.max() - a + 2 * a.max()), -1.0)  # reversed ranks
    assert np.allclose(topk_iou(a, a), 1.0)
    res = agreement(a, rng.random((5, 1, 28, 28)))
    assert abs(res["spearman"]) < 0.1 and res["topk_iou"] < 0.2
    assert len(res["most_changed"]) == 5


def test_gini_uniform_is_zero_and_one_hot_is_near_one():
    uniform = np.ones((1, 1, 28, 28))
    one_hot = np.zeros((1, 1, 28, 28))
    one_hot[0, 0, 3, 3] = 1
    assert gini(uniform)[0] == pytest.approx(0.0, abs=1e-9)
    assert gini(one_hot)[0] == pytest.approx(1 - 1 / 784, abs=1e-9)


def test_model_randomisation_sanity_check(tiny_splits):
    from qsal.models import create_model
    from qsal.saliency.methods import randomization_check
    from qsal.train import TrainConfig, fit

    train, val, test = tiny_splits
    torch.manual_seed(0)
    model = create_model("small_cnn", 2, 1)
    fit(model, train, val, TrainConfig(epochs=3, batch_size=32, progress=False))
    result = randomization_check(model, test.tensors()[0][:16], "gradient_abs")
    assert result["passed"] and abs(result["spearman_mean"]) < 0.5


def test_gini_matches_quantus_sparseness():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(0)
    a = rng.random((4, 1, 28, 28)) ** 4
    x = rng.random((4, 1, 28, 28))
    theirs = quantus.Sparseness(disable_warnings=True)(model=None, x_batch=x, y_batch=np.zeros(4, int), a_batch=a)
    np.testing.assert_allclose(gini(a), theirs, atol=1e-6)


def test_maps_without_information_get_no_agreement_and_no_ranking():
    """A constant map (a zeroed gradient) ranks nothing: it must not score a perfect agreement, nor remove pixels in
    raster order, which would read as a map that points somewhere."""
    from scipy.stats import spearmanr

    from qsal.errors import QsalError
    from qsal.saliency.metrics import agreement, faithfulness_curve, salient_first, spearman_per_image

    zeros = np.zeros((2, 1, 28, 28))
    a = agreement(zeros, zeros)
    assert np.isnan(a["spearman"]) and np.isnan(a["topk_iou"]) and np.isnan(a["ssim"]) and a["most_changed"] == []
    rng = np.random.default_rng(0)
    u, v = rng.random((1, 1, 5, 6)), rng.random((1, 1, 5, 6))
    u[0, 0, :2] = 0  # a third of the pixels tied
    assert spearman_per_image(u, v)[0] == pytest.approx(spearmanr(u.ravel(), v.ravel())[0])
    order = salient_first(np.zeros((1, 100)))
    assert sorted(order[0]) == list(range(100)) and not (order[0] == np.arange(100)).all()
    assert (salient_first(np.array([[0.0, 3, 1, 2]]))[0][:3] == [1, 3, 2]).all()
    with pytest.raises(QsalError, match="fill 'mean' is not a removal qsal knows"):
        faithfulness_curve(lambda x: np.zeros((len(x), 2)), zeros, np.zeros(2, int), zeros, fill="mean")


def test_ssim_of_a_map_that_is_not_square():
    from qsal.saliency.metrics import ssim_per_image

    m = np.random.default_rng(0).random((2, 1, 28, 32))
    assert np.allclose(ssim_per_image(m, m), 1.0)


def test_top_k_iou_breaks_each_maps_ties_on_its_own():
    """Two sparse maps on disjoint pixels share nothing: the zeros filling their top 10 % must not be the same
    pixels in both (shared tie keys gave IoU .79)."""
    from qsal.saliency.metrics import topk_iou

    a, b = np.zeros((1, 1, 28, 28)), np.zeros((1, 1, 28, 28))
    a[0, 0, 0, :10], b[0, 0, 27, :10] = 1.0, 1.0
    assert topk_iou(a, b)[0] < 0.2


def test_maps_of_another_shape_are_refused_and_tensors_are_read():
    """(N, H, W) maps were ranked as N x H "pixels" without a word (deletion AUC .4927 vs .492); torch tensors raised
    AttributeError: 'Tensor' object has no attribute 'copy'."""
    from qsal.errors import QsalError

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 1, 8, 8)).astype(np.float32)
    maps, y = rng.random((6, 1, 8, 8)), np.array([0, 1, 0, 1, 0, 1])

    def model_fn(batch):
        return np.stack([batch.mean(axis=(1, 2, 3)), -batch.mean(axis=(1, 2, 3))], 1)

    with pytest.raises(QsalError, match="maps must be \\(N, C, H, W\\) arrays, as qsal.explain returns them; got shape "
                                        "\\(6, 8, 8\\)"):
        deletion_insertion(model_fn, x, y, maps[:, 0])
    expected = faithfulness_curve(model_fn, x, y, maps)
    got = faithfulness_curve(model_fn, torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(maps).requires_grad_())
    assert got["gap"] == expected["gap"] and list(got["acc_top"]) == list(expected["acc_top"])


def test_a_medmnist_label_column_is_one_class_per_image_and_bad_targets_or_maps_are_refused():
    """Labels (N, 1), as MedMNIST's .npz stores them, were scored as one multi-label vector (accuracy .500 for .688);
    targets -1 or 7 scored the last class or 0 accuracy, 14 px maps of 28 px images gave numbers, steps=0 divided by 0:
    all silently or as tracebacks."""
    from qsal.errors import QsalError

    x, y = _images()
    good = np.zeros_like(x)
    good[:, :, :4, :4] = 1.0
    column = faithfulness_curve(_corner_model, x, y[:, None], good)
    assert column["acc_top"] == faithfulness_curve(_corner_model, x, y, good)["acc_top"]
    assert deletion_insertion(_corner_model, x, y[:, None], good, steps=4)["deletion_auc"] == \
        deletion_insertion(_corner_model, x, y, good, steps=4)["deletion_auc"]
    for call, message in [
        (lambda: deletion_insertion(_corner_model, x, np.full(len(x), -1), good), r"targets must be class ids 0-1"),
        (lambda: faithfulness_curve(_corner_model, x, np.full(len(x), 7), good), r"labels must be class ids 0-1 \(the "
                                                                                  r"model scores 2 classes\)"),
        (lambda: deletion_insertion(_corner_model, x, y.astype(float), good), r"targets must be class ids"),
        (lambda: faithfulness_curve(_corner_model, x, y[:5], good), r"labels must be \(N,\) class ids or \(N, L\)"),
        (lambda: deletion_insertion(_corner_model, x, y, good[:, :, ::2, ::2]), r"maps \(40, 1, 14, 14\) do not match "
                                                                                r"images \(40, 1, 28, 28\)"),
        (lambda: faithfulness_curve(_corner_model, x, y, good[:5]), r"do not match images"),
        (lambda: deletion_insertion(_corner_model, x, y, good, steps=0), r"steps must be a whole number >= 1"),
        (lambda: faithfulness_curve(_corner_model, x, y, good, fractions=(0, 1.5)), r"fractions must be"),
    ]:
        with pytest.raises(QsalError, match=message):
            call()


def test_an_empty_map_has_no_gini_and_is_left_out_of_the_mean():
    """An all-zero Grad-CAM map (the class the evidence is against) scored Gini 0, 'uniform', averaged into means."""
    from qsal.saliency.metrics import mean_gini

    maps = np.zeros((3, 1, 28, 28))
    maps[1, 0, 3, 3] = 1.0
    maps[2] = 1.0
    g = gini(maps)
    assert np.isnan(g[0]) and g[1] == pytest.approx(1 - 1 / 784) and g[2] == pytest.approx(0.0, abs=1e-9)
    assert mean_gini(maps) == pytest.approx((1 - 1 / 784) / 2) and mean_gini(np.zeros((2, 1, 4, 4))) is None
