"""Straight-through estimators: forward does the discrete thing, backward passes the gradient on.

Written by hand: these few lines *are* the quantization-aware-training research (Bengio et al. 2013;
PACT, Choi et al. 2018; DoReFa, Zhou et al. 2016).
"""

from __future__ import annotations

import torch

__all__ = ["round_ste", "fake_quant_affine", "pact_quantize", "levels"]


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


class _PACTQuantize(torch.autograd.Function):
    """PACT's quantizer in one autograd node (its masks replace the minimum/maximum/relu/STE graph, which cost
    about as much as the convolutions in a small net's training step on a CPU)."""

    @staticmethod
    def forward(ctx, x, alpha, n_steps: int, signed: bool):
        lo = -alpha if signed else torch.zeros_like(alpha)
        y = torch.minimum(torch.maximum(x, lo), alpha)
        above, below = x >= alpha, x <= lo
        # bool masks (1 byte an element, not x's 4); multiplying by them beat masked_fill 3x on this CPU
        ctx.save_for_backward(~(above | below), above, below if signed else None)
        scale = alpha / n_steps
        return torch.round(y / scale) * scale  # the grid value; exactly what the composite graph returned

    @staticmethod
    def backward(ctx, grad):
        inside, above, below = ctx.saved_tensors
        grad_alpha = (grad * above).sum()
        if below is not None:
            grad_alpha = grad_alpha - (grad * below).sum()
        return grad * inside, grad_alpha.reshape(()), None, None


def pact_quantize(x: torch.Tensor, alpha: torch.Tensor, n_steps: int, signed: bool) -> torch.Tensor:
    """PACT (Choi et al. 2018): ``round(clip(x, lo, alpha) / s) * s`` with ``s = alpha / n_steps``, ``lo = 0``
    (or ``-alpha`` when ``signed``). Gradients: w.r.t. ``x``, 1 strictly inside ``(lo, alpha)`` and 0 outside
    (the straight-through estimator across the rounding); w.r.t. ``alpha``, 1 where ``x >= alpha`` and (signed)
    -1 where ``x <= -alpha``, the paper's. The step size ``s`` gets no gradient of its own."""
    return _PACTQuantize.apply(x, alpha, n_steps, signed)


def levels(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-bit code: symmetric signed ``[-(2^(b-1)-1), 2^(b-1)-1]`` or ``[0, 2^b-1]``."""
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1
