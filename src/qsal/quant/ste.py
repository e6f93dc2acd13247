"""Straight-through estimators: forward does the discrete thing, backward passes the gradient on.

Written by hand: these few lines *are* the quantization-aware-training research (Bengio et al. 2013;
PACT, Choi et al. 2018; DoReFa, Zhou et al. 2016).
"""

from __future__ import annotations

import torch

__all__ = ["round_ste", "fake_quant_affine", "levels"]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient backward."""
    return x + (torch.round(x) - x).detach()


def fake_quant_affine(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize to integers in ``[qmin, qmax]`` and back: ``(clamp(round(x/s) + zp) - zp) * s``.

    The gradient w.r.t. ``x`` is 1 inside the representable range and 0 outside (clamp), and flows
    to ``scale`` through the STE, which for PACT gives exactly the paper's d/d(alpha).
    """
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def levels(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-bit code: symmetric signed ``[-(2^(b-1)-1), 2^(b-1)-1]`` or ``[0, 2^b-1]``."""
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1
