"""Calibration observers: choose an activation's clipping range ``[lo, hi]`` from sample values.

``ValueSampler`` keeps the exact min/max and a bounded random sample of the values seen; each
observer turns that into a range:

- ``minmax``: the full observed range.
- ``percentile``: the 0.01 % / 99.99 % percentiles (robust to outliers).
- ``mse``: the range (a fraction of min-max) minimising the mean squared quantization error.
- ``entropy``: TensorRT-style KL calibration: the upper threshold whose quantized histogram is
  closest (KL divergence) to the observed one.
The MSE and KL searches are written by hand (they are short, and no maintained CPU library exposes
them for arbitrary tensors).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ValueSampler", "OBSERVERS", "compute_range"]

OBSERVERS = ("minmax", "percentile", "mse", "entropy")


class ValueSampler:
    """Exact running min/max plus a uniform random sample of at most ``capacity`` values."""

    def __init__(self, capacity: int = 1 << 18, seed: int = 0):
        self.capacity = capacity
        self.lo = float("inf")
        self.hi = float("-inf")
        self.samples: list[np.ndarray] = []
        self.count = 0
        self._rng = np.random.default_rng(seed)

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1).float().cpu().numpy()
        if flat.size == 0:
            return
        self.lo = min(self.lo, float(flat.min()))
        self.hi = max(self.hi, float(flat.max()))
        take = min(flat.size, self.capacity // 8)
        self.samples.append(flat[self._rng.integers(0, flat.size, take)] if take < flat.size else flat.copy())
        self.count += flat.size

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


def _kl_threshold(v: np.ndarray, n_levels: int, n_bins: int = 2048) -> float:
    """Smallest-KL threshold over ``|v|`` with ``n_levels`` target bins (TensorRT's entropy calibration)."""
    a = np.abs(v)
    top = float(a.max())
    if top <= 0:
        return 0.0
    hist, edges = np.histogram(a, bins=n_bins, range=(0, top))
    hist = hist.astype(np.float64)
    best_t, best_kl = top, np.inf
    for i in range(n_levels, n_bins + 1, max(1, (n_bins - n_levels) // 256)):
        raw = hist[:i]
        p = raw.copy()
        p[i - 1] += hist[i:].sum()  # the reference folds the clipped tail into the last bin ...
        nonzero = raw > 0
        q = np.zeros(i)
        for c in np.array_split(np.arange(i), n_levels):  # ... the candidate is built without it, so
            nz = nonzero[c]                                  # clipping away mass costs KL
            if nz.any():
                q[c[nz]] = raw[c].sum() / nz.sum()
        p_n, q_n = p / p.sum(), q / max(q.sum(), 1e-12)
        mask = p_n > 0
        kl = float(np.sum(p_n[mask] * np.log(p_n[mask] / np.maximum(q_n[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_t = kl, float(edges[i])
    return best_t


def compute_range(observer: str, sampler: ValueSampler, bits: int = 8) -> tuple[float, float]:
    """The ``[lo, hi]`` clipping range ``observer`` picks from what ``sampler`` saw (always contains 0)."""
    lo, hi = min(sampler.lo, 0.0), max(sampler.hi, 0.0)
    if observer == "minmax":
        return lo, hi
    v = sampler.values()
    if observer == "percentile":
        return min(float(np.percentile(v, 0.01)), 0.0), max(float(np.percentile(v, 99.99)), 0.0)
    if observer == "mse":
        return _mse_range(v, lo, hi, bits)
    if observer == "entropy":
        # a one-sided (post-ReLU) tensor gets all 2^b levels on [0, t]; a signed one half per side
        # exact zeros (half of a post-ReLU tensor) are always representable; left in, their spike
        # dominates the histogram and drags the threshold down
        t = _kl_threshold(v[v != 0] if lo >= 0 else v, 2 ** bits if lo >= 0 else 2 ** (bits - 1))
        return (max(lo, -t), min(hi, t)) if lo < 0 else (0.0, min(hi, t))
    raise ValueError(f"unknown observer {observer!r}; choose one of {OBSERVERS}")
