"""Batch augmentation with plain tensor ops (no torchvision: it has no CPU build here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["random_shift", "random_hflip"]


def random_shift(x: torch.Tensor, max_px: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of ``x`` ``(N, C, H, W)`` by up to ``max_px`` pixels (reflect padding)."""
    if max_px <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_px,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * max_px + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_px + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # (N, H)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # (N, W)
    idx_n = torch.arange(n).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left-right."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    out = x.clone()
    out[flip] = x[flip].flip(-1)
    return out
