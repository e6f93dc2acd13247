"""Occlusion saliency for a deployed ONNX model: numpy and onnxruntime only, no gradients needed."""

from __future__ import annotations

import numpy as np

from qsal.errors import QsalError

__all__ = ["occlusion_numpy", "occlusion_patch"]

# The patch is a seventh of the image's shorter side, moved by half a patch: 4 x 4 px moved by 2 px at MedMNIST's
# 28 px (13 x 13 positions, Zeiler & Fergus-sized for such images). A fixed 4 px would cost (size / 2)^2 forward passes,
# 12,321 per batch at 224 px (minutes per image for a ResNet), and map texture rather than structure there.
PATCH_FRACTION = 7


def occlusion_patch(height: int, width: int) -> tuple[int, int]:
    """``(window, stride)`` in pixels of the default occlusion patch for ``height`` x ``width`` images: ``window`` =
    max(4, min(height, width) // 7) (4 px up to 34 px: MedMNIST's 28 and CIFAR's 32 keep it), capped at the shorter
    side; ``stride`` = max(1, window // 2)."""
    side = min(int(height), int(width))
    window = min(side, max(4, side // PATCH_FRACTION))
    return window, max(1, window // 2)


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Patch offsets as Captum's Occlusion places them: ``ceil((size - window) / stride) + 1`` patches, the last one
    cut at the border when the stride does not land on it (so every pixel is occluded at least once)."""
    return [i * stride for i in range(int(np.ceil(max(size - window, 0) / stride)) + 1)]


def occlusion_numpy(model_fn, x: np.ndarray, target: np.ndarray, window: int | None = None, stride: int | None = None,
                    baseline: float | tuple[float, ...] = 0.0) -> np.ndarray:
    """Drop of the target logit when each ``window`` x ``window`` patch is set to ``baseline`` (normalised units,
    a number or one per channel); ``window`` / ``stride`` None: ``occlusion_patch`` of the images' size (4 / 2 px at
    28 px).

    Args:
        model_fn: float ``(N, C, H, W)`` -> logits ``(N, K)`` (e.g. ``Runtime.run_normalized``).
        x: normalised images ``(N, C, H, W)``; target: class per image ``(N,)``.
    Returns:
        ``(N, C, H, W)`` maps (each pixel: mean drop over the patches covering it), like Captum's Occlusion.
    """
    n, c, h, w = x.shape
    default_window, default_stride = occlusion_patch(h, w)
    window = default_window if window is None else window
    stride = default_stride if stride is None else stride
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
