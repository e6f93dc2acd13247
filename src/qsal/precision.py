"""Mixed-precision training: which precision a machine can train in, and the float32 islands inside it.

Training forwards may run under bfloat16 autocast (``TrainConfig.precision``): convolutions and
matrix products in bf16, everything else as autocast decides. What must stay exact runs in float32:

- the quantizers (``float32_forward`` on their ``forward``): a fake-quantized activation is a grid
  value ``k * scale`` computed in float32, whatever the dtype of the layer before;
- the loss (``fit`` hands the step float32 logits and computes no loss under autocast);
- every eval-mode forward: validation, test metrics, calibration, exported models and the saliency
  map that saliency-guided training masks with (``TrainingForward`` autocasts only in training mode).

``"auto"`` picks bf16 where the hardware computes it natively (a CUDA GPU of compute capability 8.0 or later, or a
CPU with AVX512-BF16 or AMX), float32 elsewhere: without them bf16 is emulated and slower.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
from torch import nn

from qsal.errors import QsalError

__all__ = ["PRECISIONS", "cpu_has_native_bf16", "cuda_has_native_bf16", "resolve_precision", "resolve_channels_last",
           "autocast", "float32_forward", "TrainingForward"]

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(callable(p) for p in probes):
        return any(bool(p()) for p in probes if callable(p))
    try:  # older torch: read the flags the kernel reports
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` names computes bf16 natively: compute capability 8.0 (Ampere) or later.
    ``torch.cuda.is_bf16_supported()`` also says yes where bf16 is only emulated (a T4 or V100: no bf16 tensor
    cores, no cuDNN bf16 convolutions, slower than float32), and asks about the current device, not this one."""
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision`` (``auto`` | ``fp32`` | ``bf16``) on ``device``."""
    if precision not in PRECISIONS:
        raise QsalError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def resolve_channels_last(channels_last: str | bool, precision: str, device: torch.device) -> bool:
    """``auto``: channels-last memory format with bf16 on a CPU (oneDNN's bf16 convolutions run on NHWC;
    measured in benchmarks/results/train_throughput.md), the default layout otherwise."""
    if channels_last == "auto":
        return precision == "bf16" and device.type == "cpu"
    if not isinstance(channels_last, bool):
        raise QsalError(f"channels_last {channels_last!r} is not one of auto, true, false")
    return channels_last


def autocast(precision: str, device: torch.device):
    """bf16 autocast on ``device`` for ``precision == "bf16"``, a no-op context for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def float32_forward(forward):
    """Decorate a module's ``forward(self, x)``: autocast off, floating ``x`` cast to float32.

    Keeps quantizers exact under mixed precision: their rounding, clipping and scale arithmetic
    see float32 inputs and return float32 (a no-op when training in float32).
    """
    @functools.wraps(forward)
    def wrapped(self, x, *args, **kwargs):
        if x.is_floating_point() and x.dtype != torch.float32:
            x = x.float()
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return forward(self, x, *args, **kwargs)
        return forward(self, x, *args, **kwargs)

    return wrapped


class TrainingForward(nn.Module):
    """The model as a training step sees it: training-mode forwards under autocast, float32 logits out.

    Eval-mode forwards (the saliency a saliency-guided step masks with, anything a step evaluates)
    run in float32. The wrapper owns no parameters of its own: it is ``model`` with a different call.
    """

    def __init__(self, model: nn.Module, precision: str, device: torch.device):
        super().__init__()
        self.model, self.precision, self.device = model, precision, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.precision == "fp32":
            return self.model(x)
        with autocast(self.precision, self.device):
            out = self.model(x)
        return out.float()
