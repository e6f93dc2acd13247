"""The calibration observers match their reference definitions (onnxruntime percentile, TensorRT entropy)."""

from collections import Counter

import numpy as np
import pytest
import torch

from qsal.quant.observers import ValueSampler, compute_range, entropy_threshold


def _reference_entropy(hist, edges, num_bits, unsigned, start_bin=128):
    """pytorch-quantization's ``_compute_amax_entropy`` transcribed loop for loop (stride 1)."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    nbins = 1 << (num_bits - 1 + int(unsigned))
    divergences = []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=nbins + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        counts = np.zeros(nbins)
        for idx, d in enumerate(digitized):
            if d != -1:
                counts[d] += bins[idx]
        for key, val in Counter(digitized).items():
            if key != -1:
                counts[key] /= val
        new = np.array([counts[d] if d != -1 else 0.0 for d in digitized])
        ref = bins[:i].copy()
        ref[-1] += bins[i:].sum()
        p, q = ref / ref.sum(), new / new.sum()
        on = p > 0
        divergences.append(np.inf if (q[on] == 0).any() else float(np.sum(p[on] * np.log(p[on] / q[on]))))
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - np.argmin(divergences[::-1])
    return float(edges[last_argmin + start_bin])


def test_percentile_is_onnxruntimes_99_999th_percentile_of_abs_x_on_a_2048_bin_histogram():
    rng = np.random.default_rng(0)
    bulk = rng.uniform(0, 1, 999_995) * rng.choice([-1.0, 1.0], 999_995)
    s = ValueSampler()
    s.update(torch.from_numpy(np.concatenate([bulk, [50.0, -50.0, 50.0, -50.0, 50.0]]).astype(np.float32)))
    lo, hi = compute_range("percentile", s, 8)
    # |x| bins are 50/2048 wide; the CDF first reaches 99.999 % in bin 40 (the 5 outliers are 0.0005 %),
    # and onnxruntime returns that bin's left edge, on both sides of a signed tensor
    assert hi == pytest.approx(40 * 50 / 2048, rel=1e-6) and lo == pytest.approx(-40 * 50 / 2048, rel=1e-6)


def test_histogram_widens_with_the_same_bin_width_and_counts_every_value():
    s = ValueSampler()
    s.update(torch.linspace(0, 1, 10_000))
    s.update(torch.linspace(0, 3, 10_000))
    assert len(s.hist) == 3 * 2048 and s.hist.sum() == 20_000  # not subsampled
    assert np.allclose(np.diff(s.edges), 1 / 2048)


@pytest.mark.parametrize("bits, unsigned", [(8, True), (8, False), (4, True)])
def test_entropy_threshold_is_tensorrts_kl_calibration(bits, unsigned):
    rng = np.random.default_rng(bits)
    v = rng.exponential(1.0, 200_000)
    hist, edges = np.histogram(v, bins=400, range=(0, float(v.max())))
    hist[0] += 150_000  # a post-ReLU zero spike: the reference sets bin 0 to bin 1's count
    assert entropy_threshold(hist, edges, bits, unsigned) == _reference_entropy(hist, edges, bits, unsigned)


def test_entropy_range_of_a_post_relu_tensor_uses_its_full_histogram():
    rng = np.random.default_rng(1)
    x = np.maximum(rng.normal(0, 1, 300_000), 0).astype(np.float32)  # half exact zeros, kept in the histogram
    s = ValueSampler()
    s.update(torch.from_numpy(x))
    lo, hi = compute_range("entropy", s, 8)
    assert lo == 0.0 and hi == entropy_threshold(s.hist, s.edges, 8, unsigned=True) < float(x.max())
    assert s.hist.sum() == x.size


def test_a_much_wider_later_batch_coarsens_the_histogram_instead_of_exploding_it():
    from qsal.quant.observers import MAX_HISTOGRAM_BINS

    s = ValueSampler()
    s.update(torch.rand(1000) * 1e-6)
    s.update(torch.rand(1000) * 100)
    assert len(s.hist) <= MAX_HISTOGRAM_BINS and s.hist.sum() == 2000 and s.edges[-1] >= 99.0
    assert np.allclose(np.diff(s.edges), s.edges[1] - s.edges[0])
