"""Quantizer modules: activation fake-quantizers (min-max/EMA and PACT) and drop-in quantized layers.

``QuantConv2d`` / ``QuantLinear`` subclass the float layers and keep their constructor; weights are
fake-quantized on every forward (``qsal.quant.weights.weight_codes``: symmetric, DoReFa; per channel or per tensor), so gradients
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
from qsal.quant.ste import fake_quant_affine, pact_quantize, round_ste
from qsal.quant.weights import WEIGHT_CLIPS, WEIGHT_SCHEMES, weight_codes

__all__ = ["ActQuantizer", "PACTQuantizer", "QuantConv2d", "QuantLinear", "is_depthwise", "QUANT_LAYERS"]


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

    def scale_tensor(self) -> torch.Tensor:
        """``export_params()["scale"]`` as a float32 0-dim tensor on the quantizer's device, read without a host
        copy (each host read waits for the GPU; a quantized bias asks for it in every forward)."""
        return self.scale.detach().reshape(()).float()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, observer={self.observer}, mode={self.mode}"


ALPHA_CALIBRATIONS = ("percentile", "mse")


def mse_clip(values: np.ndarray, top: float, n_steps: int, signed: bool) -> float:
    """The PACT clip among 2-100 % of ``top`` (the 99.9th percentile of ``|values|``) with the least squared error of
    ``round(clip(values, lo, alpha) / s) * s``, ``s = alpha / n_steps``, ``lo = 0`` (``-alpha`` when ``signed``): at 2
    bits the percentile clip rounds almost every ReLU output to zero."""
    v = np.asarray(values, dtype=np.float64)
    if not top > 0:  # a dead tensor (all zero): nothing to fit
        return top
    best, best_err = top, None
    for alpha in top * np.geomspace(0.02, 1.0, 48):
        s = alpha / n_steps
        q = np.round(np.clip(v, -alpha if signed else 0.0, alpha) / s) * s
        err = float(np.mean((q - v) ** 2))
        if best_err is None or err < best_err:
            best, best_err = float(alpha), err
    return best


class PACTQuantizer(nn.Module):
    """PACT (Choi et al. 2018): ``y = quant_k(clip(x, 0, alpha))`` with a learned clip ``alpha``.

    The gradient w.r.t. ``alpha`` is 1 where ``x >= alpha`` and 0 elsewhere, as in the paper; an L2
    penalty ``alpha_decay * alpha^2`` is returned by ``regularization()`` and added by the training
    step. ``alpha`` trains in its own optimizer parameter group (``param_group()``, learning rate
    ``alpha_lr * alpha_start``, read by ``qsal.train.fit``): with one shared Adam learning rate its summed gradient
    is normalised away and it barely moves. ``alpha_start`` keeps the clip the fine-tune started from.
    Tensors that take negative values (the normalised input image, a linear bottleneck's output) use
    the symmetric variant ``clip(x, -alpha, alpha)`` with ``2^k - 1`` levels.
    """

    def __init__(self, bits: int = 4, alpha: float = 10.0, alpha_decay: float = 1e-4, calibrate_alpha: bool = True,
                 alpha_lr: float | None = None, alpha_calibration: str = "percentile"):
        super().__init__()
        self.bits, self.alpha_decay, self.calibrate_alpha, self.alpha_lr = bits, alpha_decay, calibrate_alpha, alpha_lr
        if alpha_calibration not in ALPHA_CALIBRATIONS:
            raise ValueError(f"unknown alpha calibration {alpha_calibration!r}; one of {ALPHA_CALIBRATIONS}")
        self.alpha_calibration = alpha_calibration
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.register_buffer("alpha_start", torch.tensor(float(alpha)))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))
        self.mode = "off"
        self.sampler: ValueSampler | None = None
        self._signed_host: bool | None = None  # is_signed's copy of the buffer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before alpha_start existed: their start is unknown, record the clip they hold
        if prefix + "alpha" in state_dict and prefix + "alpha_start" not in state_dict:
            state_dict[prefix + "alpha_start"] = state_dict[prefix + "alpha"].detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._signed_host = None

    @property
    def is_signed(self) -> bool:
        """The ``signed`` buffer as a Python bool, read once: on a GPU every read waits for the device, and the
        forward needs it about three times per quantizer (it changes only in ``finish_observing`` and loads)."""
        if self._signed_host is None:
            self._signed_host = bool(self.signed)
        return self._signed_host

    def param_group(self) -> dict | None:
        """Optimizer options for ``alpha`` (its own group), or None to train it with the model's options.

        The learning rate is ``alpha_lr`` *relative to the starting clip* (``alpha_lr * alpha_start``):
        Adam moves a parameter by about its lr per step whatever the gradient's size, so a relative lr
        moves every clip at the same relative rate, whether it starts at 0.5 or at 20.
        """
        if self.alpha_lr is None:
            return None
        return {"lr": self.alpha_lr * float(self.alpha_start.abs().clamp_min(1e-3)), "weight_decay": 0.0,
                "name": "pact_alpha"}  # its L2 penalty is in regularization()

    @property
    def n_steps(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.is_signed else 2 ** self.bits - 1

    def start_observing(self) -> None:
        self.mode, self.sampler = "observe", ValueSampler()

    def finish_observing(self) -> None:
        # Fine-tuning a trained network: alpha starts at the 99.9th percentile of |x|, a far better start
        # than the paper's 10. Training from scratch keeps the given alpha (the paper's 10): calibrated
        # on an untrained net it would be tiny and cap the logits while the weights grow.
        v = self.sampler.values()
        self.signed.fill_(bool(self.sampler.lo < 0))
        self._signed_host = None
        if self.calibrate_alpha:
            init = float(np.percentile(np.abs(v), 99.9)) if v.size else 1.0
            if self.alpha_calibration == "mse" and v.size:
                init = mse_clip(v, init, self.n_steps, self.is_signed)
            with torch.no_grad():
                self.alpha.fill_(max(init, 1e-3))
        self.alpha_start.copy_(self.alpha.detach())
        self.sampler, self.mode = None, "quant"

    @float32_forward  # exact grid values under mixed precision
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "observe":
            self.sampler.update(x)
            return x
        # Forward: exactly the grid value. Backward: d(out) = d(clip), which w.r.t. alpha is 1 where
        # x >= alpha and 0 elsewhere: PACT's gradient (the step size gets no gradient of its own).
        return pact_quantize(x, self.alpha.abs() + 1e-6, self.n_steps, self.is_signed)

    def regularization(self) -> torch.Tensor:
        return self.alpha_decay * self.alpha ** 2

    def export_params(self) -> dict:
        alpha = float(self.alpha.detach().abs()) + 1e-6
        s = alpha / self.n_steps
        zp = 2 ** (self.bits - 1) if self.is_signed else 0
        clip = (-alpha, alpha) if self.is_signed else (0.0, alpha)
        return {"scale": s, "zero_point": zp, "clip": None if (self.bits == 8 and not self.is_signed) else clip,
                "bits": self.bits}

    def scale_tensor(self) -> torch.Tensor:
        """``export_params()["scale"]`` as a float32 0-dim tensor on alpha's device, without a host read: the same
        float64 arithmetic (``float32 |alpha|`` widened, ``+ 1e-6``, ``/ n_steps``) rounded once to float32, so the
        bias grid a forward uses is bit for bit the exported one."""
        alpha = self.alpha.detach().abs().double() + 1e-6
        # a tensor divisor: CUDA divides by a Python number as a multiply by its reciprocal (1 ulp off at times)
        return (alpha / torch.full((), self.n_steps, dtype=torch.float64, device=alpha.device)).float()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha):.4g}, signed={self.is_signed}"


def is_depthwise(conv: nn.Module) -> bool:
    """A conv whose every output channel reads one input channel (``groups == in_channels > 1``)."""
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels


def _export_scale(scale: torch.Tensor) -> torch.Tensor:
    """The exported per-channel weight scale: positive float32 (a negative BN gamma's sign goes into the codes)."""
    return scale.abs().clamp_min(1e-12).float()


class _QuantWeightLayer:
    """Shared state of the quantized layers (a plain helper, not a mixin hierarchy)."""

    def _init_quant(self, weight_bits: int, per_channel: bool, scheme: str, clip: str = "max") -> None:
        if scheme not in WEIGHT_SCHEMES:
            raise ValueError(f"unknown weight scheme {scheme!r}; one of {WEIGHT_SCHEMES}")
        if clip not in WEIGHT_CLIPS or (clip == "mse" and scheme != "symmetric"):
            raise ValueError(f"weight clip {clip!r} with scheme {scheme!r}: one of {WEIGHT_CLIPS}, 'mse' for the "
                             "symmetric scheme only")
        self.weight_bits, self.per_channel, self.scheme, self.weight_clip = weight_bits, per_channel, scheme, clip
        self.quant_weights = True
        self.register_buffer("bn_scale", torch.ones(self.weight.shape[0]))

    def _quant_repr(self) -> str:
        clip = "" if self.weight_clip == "max" else f", weight_clip={self.weight_clip}"
        return f", weight_bits={self.weight_bits}, per_channel={self.per_channel}, scheme={self.scheme}{clip}"

    def _codes_and_scale(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes shaped like the weight and the per-output-channel scale ``(C_out,)``, BatchNorm folded in."""
        codes, scale = weight_codes(weight, self.weight_bits, self.per_channel, self.scheme, self.weight_clip)
        return codes, scale.reshape(-1).expand(weight.shape[0]) * self.bn_scale

    def quantized_weight(self) -> torch.Tensor:
        return self._quantized_weight_and_bias()[0]

    def _quantized_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fake-quantized weight and bias ``forward`` uses, from one evaluation of the weight grid (the
        bias step needs the weight scale; computing the grid twice per step cost a second pass over the weight)."""
        view = (-1,) + (1,) * (self.weight.dim() - 1)
        if not self.quant_weights:
            return self.weight * self.bn_scale.view(view), self.bias
        codes, scale = self._codes_and_scale(self.weight)
        w_q = codes * scale.view(view)  # the same product integer_weight's codes * scale gives
        step = self._bias_step(lambda: _export_scale(scale.detach()))
        if step is None:
            return w_q, self.bias
        step = step.to(self.bias.device)
        return w_q, round_ste(self.bias / step) * step

    def _bias_step(self, weight_scale) -> torch.Tensor | None:
        """``s_in * s_w`` for ``weight_scale()`` (the exported ``(C_out,)`` float32 scale), or None when the bias
        is not quantized: no bias, float weights, or an input that is not quantized."""
        q = self.__dict__.get("input_quantizer")
        if self.bias is None or not self.quant_weights or q is None or q.mode != "quant":
            return None
        scale = weight_scale()
        return q.scale_tensor().to(scale.device) * scale  # float32 x float32: the product integer_weight's export computes

    def bias_scale(self) -> torch.Tensor | None:
        """Per-channel step ``s_in * s_w`` (float32, ``(C_out,)``) of the INT32 bias an integer kernel adds,
        or None when the layer's input is not quantized (``link_bias_quantizers`` sets the input)."""
        return self._bias_step(lambda: self._integer_codes_and_scale()[1])

    def quantized_bias(self) -> torch.Tensor | None:
        """The bias on the grid the deployed INT32 bias has (straight-through gradient), so the PyTorch
        model adds exactly what the exported integer kernel adds."""
        return self._quantized_weight_and_bias()[1]

    def integer_weight(self) -> tuple[np.ndarray, np.ndarray]:
        """``(codes int8 (C_out, ...), scale float32 (C_out,))`` with BatchNorm folded in, such that
        ``codes * scale`` is exactly the fake-quantized weight used in ``forward``, whatever the scheme.

        Symmetric k-bit codes lie in ``[-(2^(k-1)-1), 2^(k-1)-1]``; DoReFa k-bit codes are odd integers
        in ``[-(2^k-1), 2^k-1]`` (k+1 bits: INT4 storage holds them up to k = 3).
        """
        codes, scale = self._integer_codes_and_scale()
        if float(codes.abs().max()) > 127:
            raise ValueError(f"{self.scheme} {self.weight_bits}-bit weight codes exceed the int8 range")
        return codes.cpu().numpy().astype(np.int8), scale.cpu().numpy()

    def _integer_codes_and_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``integer_weight`` as float32 tensors on the weight's device (no host copy: used every step)."""
        with torch.no_grad():
            codes, scale = self._codes_and_scale(self.weight.detach())
            sign = torch.sign(scale)
            sign[sign == 0] = 1
            codes = codes * sign.view(-1, *([1] * (codes.dim() - 1)))  # a negative BN gamma flips the codes, exactly
            return codes, _export_scale(scale)


class QuantConv2d(nn.Conv2d, _QuantWeightLayer):
    """``nn.Conv2d`` with k-bit fake-quantized weights (``weight_bits``, ``per_channel``, ``scheme``)."""

    def __init__(self, *args, weight_bits: int = 8, per_channel: bool = True, scheme: str = "symmetric",
                 weight_clip: str = "max", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(weight_bits, per_channel, scheme, weight_clip)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **qkw) -> "QuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, conv.padding_mode, **qkw)
        q.load_state_dict(conv.state_dict(), strict=False)
        return q

    def forward(self, x):
        return self._conv_forward(x, *self._quantized_weight_and_bias())

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()


class QuantLinear(nn.Linear, _QuantWeightLayer):
    """``nn.Linear`` with k-bit fake-quantized weights."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_bits: int = 8,
                 per_channel: bool = True, scheme: str = "symmetric", weight_clip: str = "max"):
        super().__init__(in_features, out_features, bias)
        self._init_quant(weight_bits, per_channel, scheme, weight_clip)

    @classmethod
    def from_float(cls, lin: nn.Linear, **qkw) -> "QuantLinear":
        q = cls(lin.in_features, lin.out_features, lin.bias is not None, **qkw)
        q.load_state_dict(lin.state_dict(), strict=False)
        return q

    def forward(self, x):
        return F.linear(x, *self._quantized_weight_and_bias())

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()


QUANT_LAYERS = (QuantConv2d, QuantLinear)
