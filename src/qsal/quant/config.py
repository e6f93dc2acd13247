"""Typed quantization configs, one per method. Each validates itself and round-trips through a dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from qsal.errors import QsalError
from qsal.quant.observers import OBSERVERS

__all__ = ["PTQConfig", "QATConfig", "PACTConfig", "WeightOnlyConfig", "QuantConfig", "config_from_dict"]


def _check_bits(name: str, bits: int, allowed: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)) -> None:
    if bits not in allowed:
        raise QsalError(f"{name}={bits} is not supported; use one of {allowed}")


@dataclass(frozen=True)
class QuantConfig:
    method: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def to_dict(self) -> dict:
        return {"method": self.method, "version": self.version, **asdict(self)}

    @property
    def label(self) -> str:
        return self.method


@dataclass(frozen=True)
class PTQConfig(QuantConfig):
    """Static post-training quantization: symmetric per-channel INT8 weights, asymmetric per-tensor
    activations calibrated on ``num_calibration`` training images with ``observer``; BatchNorm folded.

    Example:
        >>> qmodel = qsal.quantize(model, PTQConfig(observer="percentile"), calibration=train_split)
    """

    method: ClassVar[str] = "ptq"
    observer: str = "minmax"  # minmax | percentile | mse | entropy
    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    num_calibration: int = 512
    skip: tuple[str, ...] = ()  # layer names kept FP32

    def __post_init__(self):
        if self.observer not in OBSERVERS:
            raise QsalError(f"observer {self.observer!r} is not one of {', '.join(OBSERVERS)}")
        _check_bits("weight_bits", self.weight_bits)
        _check_bits("act_bits", self.act_bits)
        object.__setattr__(self, "skip", tuple(self.skip))

    @property
    def label(self) -> str:
        return f"ptq-int{self.weight_bits}-{self.observer}"


@dataclass(frozen=True)
class QATConfig(QuantConfig):
    """Quantization-aware training: fake-quantized ``bits``-bit weights and activations fine-tuned with
    the normal training loop; activation ranges follow an EMA (``ema``) until ``freeze_observers_at``
    of the epochs. BatchNorm that follows a conv is folded into it before the fine-tune (so the trained
    codes are the exported ones); ``freeze_bn_at`` applies to any BatchNorm left unfolded."""

    method: ClassVar[str] = "qat"
    bits: int = 8
    per_channel: bool = True
    ema: float = 0.01
    freeze_observers_at: float = 0.5
    freeze_bn_at: float = 0.75
    num_calibration: int = 512
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        _check_bits("bits", self.bits)
        if not (0 < self.ema <= 1 and 0 <= self.freeze_observers_at <= 1 and 0 <= self.freeze_bn_at <= 1):
            raise QsalError("QATConfig: ema must be in (0, 1], freeze_* fractions in [0, 1]")
        object.__setattr__(self, "skip", tuple(self.skip))

    @property
    def label(self) -> str:
        return f"qat-int{self.bits}"


@dataclass(frozen=True)
class PACTConfig(QuantConfig):
    """PACT (Choi et al. 2018): learned activation clip alpha per layer and k-bit activations, DoReFa
    k-bit weights; the first and last layers stay at ``first_last_bits``."""

    method: ClassVar[str] = "pact"
    bits: int = 4
    first_last_bits: int = 8
    alpha_decay: float = 1e-4
    alpha_init: float | None = None  # None: 99.9th percentile of calibration |x| (fine-tuning); paper: 10 (from scratch)
    weight_scheme: str = "dorefa"  # dorefa | minmax
    num_calibration: int = 256
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        _check_bits("bits", self.bits)
        _check_bits("first_last_bits", self.first_last_bits)
        if self.weight_scheme not in ("dorefa", "minmax"):
            raise QsalError(f"weight_scheme {self.weight_scheme!r} is not one of dorefa, minmax")
        object.__setattr__(self, "skip", tuple(self.skip))

    @property
    def label(self) -> str:
        return f"pact-{self.bits}bit"


@dataclass(frozen=True)
class WeightOnlyConfig(QuantConfig):
    """Weight-only quantization (INT8 or INT4 weights, FP32 activations): smaller files, float compute."""

    method: ClassVar[str] = "weight_only"
    bits: int = 8
    per_channel: bool = True
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        _check_bits("bits", self.bits, (4, 8))
        object.__setattr__(self, "skip", tuple(self.skip))

    @property
    def label(self) -> str:
        return f"weight-only-int{self.bits}"


_BY_METHOD = {c.method: c for c in (PTQConfig, QATConfig, PACTConfig, WeightOnlyConfig)}


def config_from_dict(d: dict) -> QuantConfig:
    """Inverse of ``to_dict``; unknown keys are an error, not ignored."""
    d = dict(d)
    method = d.pop("method", None)
    d.pop("version", None)
    if method not in _BY_METHOD:
        raise QsalError(f"unknown quantization method {method!r}; one of {', '.join(_BY_METHOD)}")
    cls = _BY_METHOD[method]
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise QsalError(f"{cls.__name__} has no field(s) {sorted(unknown)}; known: {sorted(names)}")
    if "skip" in d:
        d["skip"] = tuple(d["skip"])
    return cls(**d)
