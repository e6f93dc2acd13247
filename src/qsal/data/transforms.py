"""Batch augmentation with plain tensor ops (no torchvision: it has no CPU build here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["shift_too_large", "random_shift", "random_hflip", "random_rotate_zoom", "rotate_zoom"]


def shift_too_large(shift_px: int, h: int, w: int, setting: str = "shift_px") -> str | None:
    """Why a shift of up to ``shift_px`` pixels cannot be drawn on ``h`` x ``w`` images (``None``: it can): reflect
    padding takes less than the image, and a larger shift moves it out of view. One wording for the config check, the
    check before training and the augmentation itself; ``setting`` names the option as the user wrote it."""
    if shift_px < min(h, w):
        return None
    return f"{setting} {shift_px} is as large as the images ({h}x{w} px); use a shift below {min(h, w)} px"


def random_shift(x: torch.Tensor, max_px: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of ``x`` ``(N, C, H, W)`` by up to ``max_px`` pixels (reflect padding)."""
    if max_px <= 0:
        return x
    n, _, h, w = x.shape
    if (problem := shift_too_large(max_px, h, w)) is not None:
        from qsal.errors import QsalError

        raise QsalError(problem)
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


def rotate_zoom(x: torch.Tensor, degrees: torch.Tensor, zoom: torch.Tensor) -> torch.Tensor:
    """Rotate image ``i`` of ``x`` ``(N, C, H, W)`` about its centre by ``degrees[i]`` (counter-clockwise as
    displayed, rows downward) and scale it by ``zoom[i]`` (> 1 magnifies); bilinear, reflecting at the borders."""
    n, _, h, w = x.shape
    angle = torch.deg2rad(degrees.to(torch.float64))
    cos, sin = torch.cos(angle) / zoom.to(torch.float64), torch.sin(angle) / zoom.to(torch.float64)
    zero = torch.zeros_like(cos)
    # affine_grid maps each output pixel to where it samples the input, in coordinates normalised to [-1, 1] per
    # axis; a rotation of the pixel grid is R conjugated by diag(w, h), hence h / w and w / h off the diagonal.
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_rotate_zoom(x: torch.Tensor, max_deg: float | None, max_zoom: float | None,
                       generator: torch.Generator) -> torch.Tensor:
    """``rotate_zoom`` each image of ``x`` ``(N, C, H, W)`` by an angle uniform in ``±max_deg`` degrees and a
    factor uniform in ``[1 - max_zoom, 1 + max_zoom]``. ``None`` or 0 turns either off; both off returns ``x`` and
    draws nothing, so recipes without it keep their random streams."""
    max_deg, max_zoom = max_deg or 0.0, max_zoom or 0.0
    if max_deg <= 0 and max_zoom <= 0:
        return x
    n = x.shape[0]
    degrees = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * max_deg
    zoom = 1 + (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * max_zoom
    return rotate_zoom(x, degrees, zoom)
