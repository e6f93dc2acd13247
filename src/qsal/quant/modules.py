"""Quantizer modules: activation fake-quantizers (min-max/EMA and PACT) and drop-in quantized layers.

``QuantConv2d`` / ``QuantLinear`` subclass the float layers and keep their constructor; weights are
fake-quantized on every forward (symmetric, per-channel or per-tensor; DoReFa for PACT), so gradients
flow through the straight-through estimator for QAT, PACT and saliency maps alike. BatchNorm is folded
in as a per-channel ``bn_scale`` on the quantized weights, which keeps the integer weights unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qsal.precision import float32_forward
from qsal.quant.observers import ValueSampler, compute_range
from qsal.quant.ste import fake_quant_affine, levels, round_ste

__all__ = ["ActQuantizer", "PACTQuantizer", "QuantConv2d", "QuantLinear", "quantize_weight", "QUANT_LAYERS"]


class ActQuantizer(nn.Module):
    """Asymmetric per-tensor activation fake-quantizer (uint8 codes, or ``bits`` < 8 of them).

    Modes: ``observe`` (pass through, record values for calibration), ``quant`` (fake-quantize),
    ``off`` (identity). With ``ema`` set, training-mode batches move the range by an exponential moving
    average (QAT) until ``frozen``.
    """

    def __init__(self, bits: int = 8, observer: str = "minmax", ema: float | None = None):
        super().__init__()
        self.bits, self.observer, self.ema = bits, observer, ema
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1))
        self.register_buffer("range", torch.zeros(2))
        self.mode = "off"
        self.frozen = False
        self.sampler: ValueSampler | None = None

    @property
    def qrange(self) -> tuple[int, int]:
        return 0, 2 ** self.bits - 1

    def start_observing(self) -> None:
        self.mode, self.sampler = "observe", ValueSampler()

    def finish_observing(self) -> None:
        if self.sampler is None or self.sampler.count == 0:
            raise RuntimeError("quantizer saw no data during calibration")
        lo, hi = compute_range(self.observer, self.sampler, self.bits)
        self.set_range(lo, hi)
        self.sampler, self.mode = None, "quant"

    def set_range(self, lo: float, hi: float) -> None:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if hi - lo < 1e-8:
            hi = lo + 1e-8
        scale = (hi - lo) / (2 ** self.bits - 1)
        self.range.copy_(torch.tensor([lo, hi]))
        self.scale.fill_(scale)
        self.zero_point.fill_(float(np.clip(np.round(-lo / scale), *self.qrange)))

    @float32_forward  # exact grid values under mixed precision
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "observe":
            self.sampler.update(x)
            return x
        if self.training and self.ema is not None and not self.frozen:
            with torch.no_grad():
                lo = (1 - self.ema) * self.range[0] + self.ema * min(float(x.min()), 0.0)
                hi = (1 - self.ema) * self.range[1] + self.ema * max(float(x.max()), 0.0)
                self.set_range(float(lo), float(hi))
        return fake_quant_affine(x, self.scale, self.zero_point, *self.qrange)

    def export_params(self) -> dict:
        """uint8 QuantizeLinear parameters, plus the float clip that keeps < 8-bit codes in range."""
        s, zp = float(self.scale), int(self.zero_point)
        qmin, qmax = self.qrange
        clip = None if self.bits == 8 else ((qmin - zp) * s, (qmax - zp) * s)
        return {"scale": s, "zero_point": zp, "clip": clip, "bits": self.bits}

    def extra_repr(self) -> str:
        return f"bits={self.bits}, observer={self.observer}, mode={self.mode}"


class PACTQuantizer(nn.Module):
    """PACT (Choi et al. 2018): ``y = quant_k(clip(x, 0, alpha))`` with a learned clip ``alpha``.

    The gradient w.r.t. ``alpha`` is 1 where ``x >= alpha`` and 0 elsewhere, as in the paper; an L2
    penalty ``alpha_decay * alpha^2`` is returned by ``regularization()`` and added by the training
    step. Tensors that take negative values (the normalised input image, pre-residual sums) use the
    symmetric variant ``clip(x, -alpha, alpha)`` with ``2^k - 1`` levels.
    """

    def __init__(self, bits: int = 4, alpha: float = 10.0, alpha_decay: float = 1e-4, calibrate_alpha: bool = True):
        super().__init__()
        self.bits, self.alpha_decay, self.calibrate_alpha = bits, alpha_decay, calibrate_alpha
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))
        self.mode = "off"
        self.sampler: ValueSampler | None = None

    @property
    def n_steps(self) -> int:
        return 2 ** (self.bits - 1) - 1 if bool(self.signed) else 2 ** self.bits - 1

    def start_observing(self) -> None:
        self.mode, self.sampler = "observe", ValueSampler()

    def finish_observing(self) -> None:
        # Fine-tuning a trained network: alpha starts at the 99.9th percentile of |x|, a far better start
        # than the paper's 10. Training from scratch keeps the given alpha (the paper's 10): calibrated
        # on an untrained net it would be tiny and cap the logits while the weights grow.
        v = self.sampler.values()
        self.signed.fill_(bool(self.sampler.lo < 0))
        if self.calibrate_alpha:
            init = float(np.percentile(np.abs(v), 99.9)) if v.size else 1.0
            with torch.no_grad():
                self.alpha.fill_(max(init, 1e-3))
        self.sampler, self.mode = None, "quant"

    @float32_forward  # exact grid values under mixed precision
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "observe":
            self.sampler.update(x)
            return x
        alpha = self.alpha.abs() + 1e-6
        if bool(self.signed):
            y = torch.maximum(torch.minimum(x, alpha), -alpha)
        else:
            y = torch.minimum(F.relu(x), alpha)
        scale = alpha / self.n_steps
        # Forward: exactly the grid value. Backward: d(out) = d(clip), which w.r.t. alpha is 1 where
        # x >= alpha and 0 elsewhere: PACT's gradient (the step size gets no gradient of its own).
        return (torch.round(y / scale) * scale).detach() + (y - y.detach())

    def regularization(self) -> torch.Tensor:
        return self.alpha_decay * self.alpha ** 2

    def export_params(self) -> dict:
        alpha = float(self.alpha.detach().abs()) + 1e-6
        s = alpha / self.n_steps
        zp = 2 ** (self.bits - 1) if bool(self.signed) else 0
        clip = (-alpha, alpha) if bool(self.signed) else (0.0, alpha)
        return {"scale": s, "zero_point": zp, "clip": None if (self.bits == 8 and not bool(self.signed)) else clip,
                "bits": self.bits}

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha):.4g}, signed={bool(self.signed)}"


def quantize_weight(w: torch.Tensor, bits: int, per_channel: bool, scheme: str = "minmax"):
    """Symmetric k-bit fake quantization of a weight ``(C_out, ...)``.

    Returns ``(w_q, q, scale)``: the fake-quantized float weight (differentiable through the STE), the
    integer codes, and the scale (``(C_out,)`` or ``()``). ``scheme="dorefa"`` first maps the weight
    through ``tanh(w) / max|tanh(w)|`` (DoReFa) and rescales by ``max|w|`` so a pretrained layer keeps
    its magnitude; levels are the symmetric grid ``{-n..n}``, ``n = 2^(k-1) - 1``, so zero is exact
    and the codes are plain signed integers (exportable with zero point 0).
    """
    _, n = levels(bits, signed=True)
    dims = tuple(range(1, w.dim()))
    if scheme == "dorefa":
        t = torch.tanh(w)
        t = t / t.abs().max().detach().clamp_min(1e-8)
        m = w.detach().abs().max().clamp_min(1e-8)
        q = torch.clamp(round_ste(t * n), -n, n)
        return q * (m / n), q.detach(), (m / n)
    m = w.detach().abs().amax(dim=dims) if per_channel else w.detach().abs().max()
    scale = m.clamp_min(1e-8) / n
    s = scale.view(-1, *([1] * len(dims))) if per_channel else scale
    q = torch.clamp(round_ste(w / s), -n, n)
    return q * s, q.detach(), scale


class _QuantWeightLayer:
    """Shared state of the quantized layers (a plain helper, not a mixin hierarchy)."""

    def _init_quant(self, weight_bits: int, per_channel: bool, scheme: str) -> None:
        self.weight_bits, self.per_channel, self.scheme = weight_bits, per_channel, scheme
        self.quant_weights = True
        self.register_buffer("bn_scale", torch.ones(self.weight.shape[0]))

    def _quant_repr(self) -> str:
        return f", weight_bits={self.weight_bits}, per_channel={self.per_channel}, scheme={self.scheme}"

    def quantized_weight(self) -> torch.Tensor:
        w = quantize_weight(self.weight, self.weight_bits, self.per_channel, self.scheme)[0] \
            if self.quant_weights else self.weight
        return w * self.bn_scale.view(-1, *([1] * (self.weight.dim() - 1)))

    def integer_weight(self) -> tuple[np.ndarray, np.ndarray]:
        """``(codes int8 (C_out, ...), per-channel scale float32 (C_out,))`` with BatchNorm folded in."""
        _, q, scale = quantize_weight(self.weight.detach(), self.weight_bits, self.per_channel, self.scheme)
        scale = scale.expand(self.weight.shape[0]) * self.bn_scale if scale.dim() == 0 or scale.numel() == 1 \
            else scale * self.bn_scale
        sign = torch.sign(scale)
        sign[sign == 0] = 1
        q = q * sign.view(-1, *([1] * (q.dim() - 1)))
        return q.numpy().astype(np.int8), scale.abs().clamp_min(1e-12).numpy().astype(np.float32)


class QuantConv2d(nn.Conv2d, _QuantWeightLayer):
    """``nn.Conv2d`` with k-bit fake-quantized weights (``weight_bits``, ``per_channel``, ``scheme``)."""

    def __init__(self, *args, weight_bits: int = 8, per_channel: bool = True, scheme: str = "minmax", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(weight_bits, per_channel, scheme)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **qkw) -> "QuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, conv.padding_mode, **qkw)
        q.load_state_dict(conv.state_dict(), strict=False)
        return q

    def forward(self, x):
        return self._conv_forward(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()


class QuantLinear(nn.Linear, _QuantWeightLayer):
    """``nn.Linear`` with k-bit fake-quantized weights."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_bits: int = 8,
                 per_channel: bool = True, scheme: str = "minmax"):
        super().__init__(in_features, out_features, bias)
        self._init_quant(weight_bits, per_channel, scheme)

    @classmethod
    def from_float(cls, lin: nn.Linear, **qkw) -> "QuantLinear":
        q = cls(lin.in_features, lin.out_features, lin.bias is not None, **qkw)
        q.load_state_dict(lin.state_dict(), strict=False)
        return q

    def forward(self, x):
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()


QUANT_LAYERS = (QuantConv2d, QuantLinear)
