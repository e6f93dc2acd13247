"""Occlusion saliency for a deployed ONNX model: numpy and onnxruntime only, no gradients needed."""

from __future__ import annotations

import numpy as np

from qsal.errors import QsalError

__all__ = ["occlusion_numpy"]


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Patch offsets as Captum's Occlusion places them: ``ceil((size - window) / stride) + 1`` patches, the last one
    cut at the border when the stride does not land on it (so every pixel is occluded at least once)."""
    return [i * stride for i in range(int(np.ceil(max(size - window, 0) / stride)) + 1)]


def occlusion_numpy(model_fn, x: np.ndarray, target: np.ndarray, window: int = 4, stride: int = 2,
                    baseline: float | tuple[float, ...] = 0.0) -> np.ndarray:
    """Drop of the target logit when each ``window`` x ``window`` patch is set to ``baseline`` (normalised units,
    a number or one per channel).

    Args:
        model_fn: float ``(N, C, H, W)`` -> logits ``(N, K)`` (e.g. ``Runtime.run_normalized``).
        x: normalised images ``(N, C, H, W)``; target: class per image ``(N,)``.
    Returns:
        ``(N, C, H, W)`` maps (each pixel: mean drop over the patches covering it), like Captum's Occlusion.
    """
    n, c, h, w = x.shape
    target = np.asarray(target).reshape(-1)
    if target.shape[0] != n:
        raise QsalError(f"{target.shape[0]} targets for {n} images")
    fill = np.asarray(baseline, dtype=x.dtype).reshape(1, -1, 1, 1)
    base = model_fn(x)[np.arange(n), target]
    total = np.zeros((n, h, w))
    count = np.zeros((h, w))
    for top in _starts(h, window, stride):
        for left in _starts(w, window, stride):
            occluded = x.copy()
            occluded[:, :, top:top + window, left:left + window] = fill
            drop = base - model_fn(occluded)[np.arange(n), target]
            total[:, top:top + window, left:left + window] += drop[:, None, None]
            count[top:top + window, left:left + window] += 1
    maps = total / np.maximum(count, 1)
    return np.repeat(maps[:, None], c, axis=1).astype(np.float32)
