"""Weight grids of the quantized layers: integer codes and scales of k-bit weights (symmetric, DoReFa), with the
scale from ``max|w|`` or the least-squared-error clip. ``w_q = codes * scale`` exactly, in training and at export."""

from __future__ import annotations

import torch

from qsal.quant.ste import levels, round_ste

__all__ = ["WEIGHT_CLIPS", "WEIGHT_SCHEMES", "quantize_weight", "weight_codes"]


WEIGHT_SCHEMES = ("symmetric", "dorefa", "tanh_symmetric")
WEIGHT_CLIPS = ("max", "mse")
_MSE_FRACTIONS = torch.linspace(0.05, 1.0, 39)  # candidate clips, as fractions of max|w|
# candidates tried together: at most this many errors at once (1 MiB of float32), so a small layer's 39 candidates
# take a few ops, and a large one's stay one at a time (measured here: no slower on this CPU than one per op)
_MSE_CHUNK_ELEMENTS = 1 << 18


def _mse_clip(w: torch.Tensor, m: torch.Tensor, n: int, dims: tuple) -> torch.Tensor:
    """The clip ``c`` (shaped like ``m``) among ``_MSE_FRACTIONS * m`` with the least squared error of
    ``clamp(round(w / s), -n, n) * s``, ``s = c / n``: at 2 bits, max-scaled ternary codes are almost all zero.
    Largest first, so a tie (an all-zero channel: every clip exact) keeps ``max|w|``'s scale, not a 20x smaller one.
    The candidates are tried in chunks of ``(K, *w.shape)`` (a few ops per chunk, not per candidate: on a GPU a
    loop over 39 candidates would be hundreds of kernel launches per layer and step)."""
    fractions = _MSE_FRACTIONS.flip(0).to(device=w.device, dtype=w.dtype)  # largest first
    lead = (1,) * m.dim()
    bcast = (1,) * (w.dim() - m.dim())  # a per-tensor m (shape ()) broadcasts over all of w's dims
    per_chunk = max(1, _MSE_CHUNK_ELEMENTS // max(1, w.numel()))
    sum_dims = tuple(d + 1 for d in dims) if dims else tuple(range(1, w.dim() + 1))
    clips = fractions.view(-1, *lead) * m  # (39, *m.shape)
    errs = []  # (K, *m.shape) per chunk: the chunk bounds only the (K, *w.shape) temporaries
    for c in clips.split(per_chunk):
        s = (c / n).view(*c.shape, *bcast)
        sq = (torch.clamp(torch.round(w / s), -n, n) * s - w) ** 2  # (K, *w.shape)
        errs.append(sq.sum(dim=sum_dims, keepdim=bool(dims)))
    i = torch.cat(errs).argmin(dim=0, keepdim=True)  # the first of equal errors: the largest clip among them
    return clips.gather(0, i)[0]


def weight_codes(w: torch.Tensor, bits: int, per_channel: bool, scheme: str = "symmetric", clip: str = "max"):
    """Integer codes and scale of a k-bit weight ``(C_out, ...)``: ``w_q = codes * scale`` exactly.

    Returns ``(codes, scale)``: float-valued integer codes shaped like ``w`` (differentiable through the
    straight-through estimator) and the scale, ``(C_out, 1, ...)`` per channel or ``()`` per tensor.
    ``m`` below is ``max|w|`` over the channel (or tensor), so a pretrained layer keeps its magnitude;
    with ``clip="mse"`` (symmetric scheme only) ``m`` is instead the clip among 5-100 % of ``max|w|`` with the
    least squared quantization error, recomputed from the current weights on every call (no gradient).

    - ``symmetric``: ``codes = clamp(round(w / s), -n, n)``, ``n = 2^(k-1) - 1``, ``s = m / n``:
      ``2^k - 1`` levels including zero (ternary at 2 bits); codes fit a signed k-bit integer.
    - ``dorefa`` (Zhou et al. 2016): ``u = tanh(w) / (2 max|tanh w|) + 0.5`` quantized to ``2^k``
      levels, mapped back by ``2u - 1`` and scaled by ``m``: ``codes = 2 round(u (2^k-1)) - (2^k-1)``,
      odd integers in ``[-(2^k-1), 2^k-1]``, ``s = m / (2^k-1)``: 4 levels at 2 bits, none zero; the
      codes need k+1 signed bits. (The paper's output is in [-1, 1]; the scale ``m`` is qsal's, and a
      following BatchNorm makes the two equivalent.)
    - ``tanh_symmetric``: qsal's pre-0.2 "dorefa": ``tanh(w) / max|tanh w|`` on the symmetric grid;
      kept only to reproduce old results and checkpoints.
    """
    dims = tuple(range(1, w.dim()))

    def absmax(t: torch.Tensor) -> torch.Tensor:
        return (t.abs().amax(dim=dims, keepdim=True) if per_channel else t.abs().max()).clamp_min(1e-8)

    m = absmax(w.detach())
    if clip not in WEIGHT_CLIPS:
        raise ValueError(f"unknown weight clip {clip!r}; one of {WEIGHT_CLIPS}")
    if clip == "mse" and scheme != "symmetric":
        raise ValueError(f"weight clip 'mse' is defined for the symmetric scheme, not {scheme!r}")
    if clip == "mse":
        with torch.no_grad():
            m = _mse_clip(w.detach(), m, levels(bits, signed=True)[1], dims if per_channel else ())
    if scheme == "dorefa":
        top = 2 ** bits - 1
        t = torch.tanh(w)
        u = t / (2 * absmax(t)) + 0.5  # the max stays in the graph, as in the paper's and Distiller's code
        return 2 * round_ste(u * top) - top, m / top
    _, n = levels(bits, signed=True)
    if scheme == "symmetric":
        scale = m / n
        return torch.clamp(round_ste(w / scale), -n, n), scale
    if scheme == "tanh_symmetric":
        t = torch.tanh(w)
        t = t / absmax(t).detach()
        return torch.clamp(round_ste(t * n), -n, n), m / n
    raise ValueError(f"unknown weight scheme {scheme!r}; one of {WEIGHT_SCHEMES}")


def quantize_weight(w: torch.Tensor, bits: int, per_channel: bool, scheme: str = "symmetric", clip: str = "max"):
    """``(w_q, codes, scale)``: the fake-quantized weight ``codes * scale`` (differentiable), the
    detached integer codes and the scale (``(C_out,)`` per channel, ``()`` per tensor); see ``weight_codes``."""
    codes, scale = weight_codes(w, bits, per_channel, scheme, clip)
    return codes * scale, codes.detach(), scale.reshape(-1) if per_channel else scale
