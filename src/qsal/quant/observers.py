"""Calibration observers: choose an activation's clipping range ``[lo, hi]`` from the values seen.

``ValueSampler`` keeps the exact min/max, a histogram of ``|x|`` over *every* value seen (2048 bins
on ``[0, max|x|]`` of the first batch, widened with the same bin width when a later batch exceeds it:
onnxruntime's ``HistogramCalibrater`` and TensorRT's ``HistogramCalibrator``), and a bounded
random sample of the values (for the MSE search only). The definitions:

- ``minmax``: the full observed range ``[min(x, 0), max(x, 0)]``.
- ``percentile``: onnxruntime's (``CalibrationMethod.Percentile``, symmetric, its defaults): the
  threshold ``t`` is the histogram edge where the cumulative share of ``|x|`` reaches 99.999 %; the
  range is ``[max(lo, -t), min(hi, t)]``.
- ``mse``: the range ``f * [lo, hi]``, ``f`` in ``0.2, 0.22, ..., 1.0``, with the least mean squared
  quantization error on the sampled values (qsal's own definition; no reference to match).
- ``entropy``: TensorRT's KL-divergence calibration as written in pytorch-quantization
  (``_compute_amax_entropy``): on the ``|x|`` histogram with its first (zero) bin set to the second
  bin's count, every threshold bin ``i`` from 128 to the last, step 1: the reference ``P`` is bins
  ``[0, i)`` with the clipped tail added to bin ``i-1``; the candidate ``Q`` merges bins ``[0, i)`` into
  ``2^(b-1+u)`` quantized bins (``u = 1`` for a one-sided tensor) and spreads each one's count evenly
  over its non-empty bins; the largest ``i`` with the least ``KL(P||Q)`` gives ``t = edge[i]``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ValueSampler", "OBSERVERS", "compute_range", "percentile_threshold", "entropy_threshold", "HISTOGRAM_BINS",
           "OBSERVER_DEFINITIONS"]

OBSERVERS = ("minmax", "percentile", "mse", "entropy")


HISTOGRAM_BINS = 2048
MAX_HISTOGRAM_BINS = 64 * HISTOGRAM_BINS  # a later batch 64x wider than the first coarsens the bins instead
OBSERVER_DEFINITIONS = {
    "minmax": "range [min(x,0), max(x,0)] over all calibration values (QAT: then an EMA of batch min/max)",
    "percentile": "onnxruntime Percentile (symmetric): t = edge where the CDF of a 2048-bin |x| histogram reaches "
                  "99.999 %; range [max(min x,-t), min(max x,t)]",
    "mse": "qsal: f*[min,max], f in 0.20..1.00 step 0.02, least mean squared quantization error on <=2^18 "
           "sampled values",
    "entropy": "TensorRT / pytorch-quantization entropy: 2048-bin |x| histogram, bin 0 set to bin 1, "
               "thresholds bin 128.."
               "last step 1, 2^(b-1+unsigned) quantized bins, largest threshold of least KL(P||Q); range "
               "[max(min x,-t), min(max x,t)]",
}


class ValueSampler:
    """Exact running min/max, the running ``|x|`` histogram and a uniform sample of <= ``capacity`` values."""

    def __init__(self, capacity: int = 1 << 18, seed: int = 0, bins: int = HISTOGRAM_BINS):
        self.capacity, self.bins = capacity, bins
        self.lo = float("inf")
        self.hi = float("-inf")
        self.samples: list[np.ndarray] = []
        self.count = 0
        self.hist: np.ndarray | None = None  # counts of |x| per bin
        self.edges: np.ndarray | None = None  # bin edges, len(hist) + 1
        self._rng = np.random.default_rng(seed)

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1).float().cpu().numpy()
        if flat.size == 0:
            return
        self.lo = min(self.lo, float(flat.min()))
        self.hi = max(self.hi, float(flat.max()))
        self._update_histogram(np.abs(flat))
        take = min(flat.size, self.capacity // 8)
        self.samples.append(flat[self._rng.integers(0, flat.size, take)] if take < flat.size else flat.copy())
        self.count += flat.size

    def _update_histogram(self, a: np.ndarray) -> None:
        top = float(a.max())
        if self.hist is None:
            self.hist, self.edges = np.histogram(a, bins=self.bins, range=(0.0, top if top > 0 else 1.0))
            return
        if top > self.edges[-1]:  # widen with the same bin width, as the references do
            width = self.edges[1] - self.edges[0]
            while top / width > MAX_HISTOGRAM_BINS:  # ... unless absurdly many bins: merge pairs (qsal's guard)
                if len(self.hist) % 2:
                    self.hist, self.edges = np.append(self.hist, 0), np.append(self.edges, self.edges[-1] + width)
                self.hist, self.edges, width = self.hist.reshape(-1, 2).sum(1), self.edges[::2], 2 * width
            extra = int(np.ceil((top - self.edges[-1]) / width))
            self.edges = np.concatenate([self.edges, self.edges[-1] + width * np.arange(1, extra + 1)])
        hist, _ = np.histogram(a, bins=self.edges)
        hist[:len(self.hist)] += self.hist
        self.hist = hist

    def values(self) -> np.ndarray:
        v = np.concatenate(self.samples) if self.samples else np.zeros(1, np.float32)
        if v.size > self.capacity:
            v = v[self._rng.integers(0, v.size, self.capacity)]
        return v


def _qparams(lo: float, hi: float, bits: int) -> tuple[float, float]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (2 ** bits - 1), 1e-8)
    return scale, float(np.round(-lo / scale))


def _quant_mse(v: np.ndarray, lo: float, hi: float, bits: int) -> float:
    scale, zp = _qparams(lo, hi, bits)
    q = np.clip(np.round(v / scale) + zp, 0, 2 ** bits - 1)
    return float(np.mean(((q - zp) * scale - v) ** 2))


def _mse_range(v: np.ndarray, lo: float, hi: float, bits: int) -> tuple[float, float]:
    best, best_err = (lo, hi), _quant_mse(v, lo, hi, bits)
    for frac in np.linspace(0.2, 1.0, 41):
        err = _quant_mse(v, lo * frac, hi * frac, bits)
        if err < best_err:
            best, best_err = (lo * frac, hi * frac), err
    return best


def percentile_threshold(hist: np.ndarray, edges: np.ndarray, percentile: float = 99.999) -> float:
    """onnxruntime's percentile on an ``|x|`` histogram: the edge where the CDF reaches ``percentile``."""
    cdf = np.cumsum(hist / hist.sum())
    return float(edges[min(int(np.searchsorted(cdf, percentile / 100.0)), len(edges) - 1)])


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, num_bits: int, unsigned: bool,
                      start_bin: int = 128, stride: int = 1) -> float:
    """TensorRT's KL calibration on an ``|x|`` histogram (pytorch-quantization's ``_compute_amax_entropy``)."""
    bins = hist.astype(np.float64).copy()
    if len(bins) > 1:
        bins[0] = bins[1]  # the reference's treatment of the zero spike
    n_quant = 1 << (num_bits - 1 + int(unsigned))
    best_i, best_kl = len(bins), np.inf
    for i in range(min(start_bin, len(bins)), len(bins) + 1, stride):
        raw = bins[:i]
        chunk = np.digitize(np.arange(i), np.linspace(0, i, n_quant + 1)) - 1
        nonzero = raw != 0
        mass = np.bincount(chunk[nonzero], weights=raw[nonzero], minlength=n_quant)
        filled = np.bincount(chunk[nonzero], minlength=n_quant)
        q = np.zeros(i)
        q[nonzero] = mass[chunk[nonzero]] / filled[chunk[nonzero]]
        p = raw.copy()
        p[-1] += bins[i:].sum()
        if p.sum() <= 0 or q.sum() <= 0:
            continue
        p, q = p / p.sum(), q / q.sum()
        on = p > 0
        kl = np.inf if np.any(q[on] == 0) else float(np.sum(p[on] * np.log(p[on] / q[on])))
        if kl <= best_kl:  # ties go to the larger threshold (the reference's last argmin)
            best_i, best_kl = i, kl
    return float(edges[best_i])


def compute_range(observer: str, sampler: ValueSampler, bits: int = 8) -> tuple[float, float]:
    """The ``[lo, hi]`` clipping range ``observer`` picks from what ``sampler`` saw (always contains 0)."""
    lo, hi = min(sampler.lo, 0.0), max(sampler.hi, 0.0)
    if observer == "minmax":
        return lo, hi
    if observer == "mse":
        return _mse_range(sampler.values(), lo, hi, bits)
    if observer in ("percentile", "entropy"):
        if sampler.hist is None or hi - lo <= 0:
            return lo, hi
        t = (percentile_threshold(sampler.hist, sampler.edges) if observer == "percentile" else
             entropy_threshold(sampler.hist, sampler.edges, bits, unsigned=lo >= 0))
        return max(lo, -t), min(hi, t)
    raise ValueError(f"unknown observer {observer!r}; choose one of {OBSERVERS}")
