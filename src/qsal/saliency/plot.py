"""Saliency grids as PNG: one row per image; per model a map and an overlay (matplotlib, headless)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qsal._atomic import save_figure_atomic  # noqa: E402

__all__ = ["save_saliency_grid", "to_display"]


def to_display(x: np.ndarray, mean, std) -> np.ndarray:
    """Normalised ``(N, C, H, W)`` -> displayable ``(N, H, W)`` or ``(N, H, W, 3)`` in [0, 1]."""
    img = x * np.asarray(std).reshape(1, -1, 1, 1) + np.asarray(mean).reshape(1, -1, 1, 1)
    img = np.clip(img, 0, 1).transpose(0, 2, 3, 1)
    return img[..., 0] if img.shape[-1] == 1 else img


def save_saliency_grid(images: np.ndarray, maps: dict[str, np.ndarray], path: str | os.PathLike,
                       captions: list[str] | None = None, title: str = "") -> Path:
    """Write a PNG grid: column 0 the image, then per model its |map| (heat) and an overlay.

    Args:
        images: displayable ``(N, H, W)`` or ``(N, H, W, 3)`` in [0, 1] (see ``to_display``).
        maps: model name -> maps ``(N, C, H, W)``.
    """
    n = images.shape[0]
    cols = 1 + 2 * len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n + (0.4 if title else 0)), squeeze=False)
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(images[i], cmap="gray" if images.ndim == 3 else None, vmin=0, vmax=1)
        ax.set_ylabel(captions[i] if captions else f"#{i}", fontsize=7)
        for j, (name, m) in enumerate(maps.items()):
            heat = np.abs(m[i]).mean(axis=0)
            heat = heat / max(heat.max(), 1e-12)
            axes[i, 1 + 2 * j].imshow(heat, cmap="inferno", vmin=0, vmax=1)
            axes[i, 2 + 2 * j].imshow(images[i], cmap="gray" if images.ndim == 3 else None, vmin=0, vmax=1)
            axes[i, 2 + 2 * j].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if i == 0:
                axes[i, 1 + 2 * j].set_title(f"{name}\nmap", fontsize=7)
                axes[i, 2 + 2 * j].set_title("overlay", fontsize=7)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure_atomic(fig, path)
