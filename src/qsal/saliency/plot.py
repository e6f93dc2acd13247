"""Saliency grids as PNG: one row per image; per model a map and an overlay (matplotlib, headless)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qsal._atomic import save_figure_atomic  # noqa: E402

__all__ = ["save_saliency_grid", "saliency_grid_figure", "to_display"]


def to_display(x: np.ndarray, mean, std) -> np.ndarray:
    """Normalised ``(N, C, H, W)`` -> displayable ``(N, H, W)`` or ``(N, H, W, 3)`` in [0, 1]."""
    img = x * np.asarray(std).reshape(1, -1, 1, 1) + np.asarray(mean).reshape(1, -1, 1, 1)
    img = np.clip(img, 0, 1).transpose(0, 2, 3, 1)
    return img[..., 0] if img.shape[-1] == 1 else img


def save_saliency_grid(images: np.ndarray, maps: dict[str, np.ndarray], path: str | os.PathLike,
                       captions: list[str] | None = None, title: str = "", **layout) -> Path:
    """Write ``saliency_grid_figure(images, maps, captions, title, **layout)`` as a PNG at ``path``."""
    return save_figure_atomic(saliency_grid_figure(images, maps, captions, title, **layout), path)


def saliency_grid_figure(images: np.ndarray, maps: dict[str, np.ndarray], captions: list[str] | None = None,
                         title: str = "", *, cell_captions: dict[str, list[str]] | None = None,
                         overlay_only: bool = False, cell_inches: float = 1.6):
    """A matplotlib figure: column 0 the image, then per model its |map| (heat) and an overlay.

    Args:
        images: displayable ``(N, H, W)`` or ``(N, H, W, 3)`` in [0, 1] (see ``to_display``).
        maps: model name -> maps ``(N, C, H, W)``.
        captions: one row label per image (e.g. true label), left of the image.
        cell_captions: model name -> one caption per image under its overlay (e.g. prediction and probability).
        overlay_only: one column per model (the overlay) instead of map + overlay.
    Each map is scaled to its own maximum; the colour bar gives that scale. Constrained layout keeps
    the title, column headers and row labels apart at any ``N``.
    """
    n = images.shape[0]
    per_model = 1 if overlay_only else 2
    cols = 1 + per_model * len(maps)
    label_w = 1.1 if captions else 0.3
    width = cell_inches * cols + label_w + 0.9
    # a title longer than the figure (explain's decision rule) wraps, about 11 characters an inch at 10 pt
    title_lines = textwrap.wrap(title, width=max(30, int(width * 11))) if title else []
    fig, axes = plt.subplots(n, cols, figsize=(width, cell_inches * n + (0.53 + 0.17 * len(title_lines) if title else 0.4)),
                             squeeze=False, layout="constrained")
    gray = "gray" if images.ndim == 3 else None
    heat_im = None
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(images[i], cmap=gray, vmin=0, vmax=1)
        ax.set_ylabel(captions[i] if captions else f"#{i}", fontsize=8, rotation=0, ha="right", va="center",
                      labelpad=6)
        for j, (name, m) in enumerate(maps.items()):
            heat = np.abs(m[i]).mean(axis=0)
            heat = heat / max(heat.max(), 1e-12)
            over = axes[i, 1 + per_model * j + (0 if overlay_only else 1)]
            if not overlay_only:
                heat_im = axes[i, 1 + per_model * j].imshow(heat, cmap="inferno", vmin=0, vmax=1)
            over.imshow(images[i], cmap=gray, vmin=0, vmax=1)
            im = over.imshow(heat, cmap="inferno", alpha=0.5, vmin=0, vmax=1)  # one colour scale for the bar
            heat_im = heat_im or im
            if cell_captions and name in cell_captions:
                over.set_xlabel(cell_captions[name][i], fontsize=7.5)
            if i == 0:
                # a long model name ("fp32/best.safetensors (PyTorch checkpoint)") wraps to its column, about
                # 13 characters an inch at 8 pt, instead of running into the next column's header
                header = "\n".join(textwrap.wrap(name, width=max(12, int(cell_inches * 13)),
                                                  break_long_words=False))
                if overlay_only:
                    over.set_title(header, fontsize=8.5)
                else:
                    axes[i, 1 + per_model * j].set_title(f"{header}\nmap", fontsize=8)
                    over.set_title(f"{header}\noverlay", fontsize=8)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=8.5)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if heat_im is not None:  # the colour scale itself (an overlay's alpha would wash the bar out)
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        scale = ScalarMappable(Normalize(0, 1), cmap="inferno")
        fig.colorbar(scale, ax=axes, shrink=min(1.0, 3.0 / max(n, 1)), aspect=25, pad=0.01,
                     label="|attribution| / its maximum")
    if title:
        fig.suptitle("\n".join(title_lines), fontsize=10)
    # constrained layout settles over passes (right-aligned row labels move the axes); one pass here, so the
    # pass that saves the figure is the second
    fig.draw_without_rendering()
    return fig
