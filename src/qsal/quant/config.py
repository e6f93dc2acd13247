"""Typed quantization configs, one per method. Each validates itself and round-trips through a dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from qsal.errors import QsalError, is_finite_number, is_integer
from qsal.quant.weights import WEIGHT_SCHEMES
from qsal.quant.observers import OBSERVERS

__all__ = ["PTQConfig", "QATConfig", "PACTConfig", "WeightOnlyConfig", "QuantConfig", "config_from_dict",
           "canonical_config"]


def _check_bits(name: str, bits: int, allowed: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8), method: str = "") -> None:
    if not is_integer(bits):  # 4.0 (== 4) ran and labelled the model "int4.0"
        raise QsalError(f"{name}={bits!r} is not a whole number; use one of {', '.join(map(str, allowed))}")
    if bits not in allowed:
        raise QsalError(f"{name}={bits!r} is not supported{f' by {method}' if method else ''}; use one of "
                        f"{', '.join(map(str, allowed))}" + (" (--bits)" if name == "bits" else ""))


def _check_common(cfg) -> None:
    """What every config holds: ``skip`` a tuple of layer names (a lone string is one name, not its letters),
    ``num_calibration`` a positive count, PACT's ``alpha_init`` a clip above zero or ``None``."""
    skip = (cfg.skip,) if isinstance(cfg.skip, str) else tuple(cfg.skip)
    if not all(isinstance(name, str) for name in skip):
        raise QsalError(f"skip must name layers (strings), got {list(skip)!r}")
    object.__setattr__(cfg, "skip", skip)
    # a switch must be one: per_channel='no' is truthy, and ran per-channel while the record said 'no'
    for f in fields(cfg):
        if isinstance(f.default, bool) and not isinstance(getattr(cfg, f.name), bool):
            raise QsalError(f"{f.name} must be True or False, got {getattr(cfg, f.name)!r}")
    n = getattr(cfg, "num_calibration", None)
    if n is not None and not (is_integer(n) and n >= 1):
        raise QsalError(f"num_calibration must be a whole number of images >= 1, got {n!r}")
    alpha = getattr(cfg, "alpha_init", None)
    if alpha is not None and not (is_finite_number(alpha) and alpha > 0):
        raise QsalError(f"alpha_init is PACT's starting clip, a finite number > 0 (or None to calibrate it), got "
                        f"{alpha!r}")


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
    observer: str = "minmax"  # minmax | percentile | mse | entropy (definitions: qsal.quant.observers)
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
        _check_common(self)

    @property
    def label(self) -> str:
        bits = f"int{self.weight_bits}" if self.weight_bits == self.act_bits else f"w{self.weight_bits}a{self.act_bits}"
        return f"ptq-{bits}-{self.observer}"


@dataclass(frozen=True)
class QATConfig(QuantConfig):
    """Quantization-aware training: fake-quantized ``bits``-bit weights and activations fine-tuned with
    the normal training loop; activation ranges follow an EMA (``ema``) until ``freeze_observers_at``
    of the epochs (frozen from the first epoch that begins at or after that point of the schedule: a 1-epoch
    fine-tune freezes only at 0; whole epochs, as torchvision's references/classification/train_quantization.py
    counts them, where TensorFlow's quantize rewriter counts steps). With ``fold_bn`` (default) BatchNorm that
    follows a conv is folded into it before the fine-tune, so the trained codes are the exported ones;
    ``fold_bn=False`` keeps BatchNorm during the fine-tune and freezes its statistics from ``freeze_bn_at`` (Jacob
    et al. 2018), folding only at export (qsal < 0.2; its deployed codes can differ from the trained ones)."""

    method: ClassVar[str] = "qat"
    bits: int = 8
    per_channel: bool = True
    ema: float = 0.01
    freeze_observers_at: float = 0.5
    freeze_bn_at: float = 0.75
    fold_bn: bool = True
    num_calibration: int = 512
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        _check_bits("bits", self.bits)
        if not (is_finite_number(self.ema) and 0 < self.ema <= 1):
            raise QsalError(f"QATConfig: ema (the range tracker's update weight) must be a number in (0, 1], got "
                            f"{self.ema!r}")
        for name in ("freeze_observers_at", "freeze_bn_at"):
            if not (is_finite_number(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                raise QsalError(f"QATConfig: {name} is a fraction of the epochs, a number in [0, 1], got "
                                f"{getattr(self, name)!r}")
        _check_common(self)

    @property
    def label(self) -> str:
        return f"qat-int{self.bits}"


@dataclass(frozen=True)
class PACTConfig(QuantConfig):
    """PACT (Choi et al. 2018): a learned activation clip alpha per quantized tensor and k-bit
    activations and weights; the first and last layers stay at ``first_last_bits`` (symmetric,
    per-channel), as in the paper.

    What is quantized: every tensor read by a conv, linear or pooling layer. In ResNets these are the
    ReLU outputs (the paper's placement, at k bits). A tensor read only by a residual add gets a signed
    ``add_input_bits`` (default 8) quantizer, a named deviation: the paper leaves adds in float, but an
    integer runtime needs 8-bit add inputs (QLinearAdd) or the artifact falls back to float kernels;
    ``add_input_bits=None`` is the paper's float add. ``quantize_add_inputs=True`` puts signed *k-bit*
    quantizers there instead (qsal < 0.2).
    ``fold_bn`` (default) folds BatchNorm into the convs before the fine-tune, so trained codes are
    deployed codes (the paper trains with BatchNorm; ``fold_bn=False`` does, folding only at export).

    Named deviations from the paper, each a field:
      - ``weight_scheme="symmetric"`` (default): ``2^k - 1`` levels including zero, stored as signed
        k-bit integers (INT4 at 4 bits). ``"dorefa"`` is the paper's DoReFa grid (``2^k`` levels, none
        zero) whose codes need k+1 bits, so DoReFa-4 deploys as INT8 and DoReFa-8 not at all; at 2-3 bits its
        codes still fit the INT4 container, and at 2 bits it beat the ternary symmetric grid by .10-.18 AUC
        (``benchmarks/results/pact_low_bit_ablation.md``): prefer it there.
        ``"tanh_symmetric"`` reproduces qsal < 0.2's mislabelled "dorefa".
      - ``weight_per_channel="depthwise"`` (default): one scale per layer as in the paper, except
        depthwise convolutions, which get one per output channel (a per-layer scale breaks
        MobileNets); ``"none"`` is the paper's, ``"all"`` per-channel everywhere.
      - ``alpha_lr``: alpha trains in its own optimizer parameter group at learning rate
        ``alpha_lr * alpha_start`` (Adam moves a parameter ~lr per step; relative, every clip moves alike; the
        paper trains all parameters with SGD, where alpha's summed gradient is large; with Adam at a
        fine-tune lr alpha does not move). ``None`` puts alpha in the weights' group (qsal < 0.2).
      - ``alpha_init=None``: alpha starts at the 99.9th percentile of calibration |x| (fine-tuning a
        trained net); the paper starts from 10 (training from scratch).
      - ``alpha_calibration="percentile"`` (default) is the 99.9th percentile above; ``"mse"`` starts each clip
        where the calibration values' squared quantization error is least (2-100 % of that percentile), and
        ``weight_clip="mse"`` (symmetric scheme) does the same for each weight scale on every step instead of
        ``max|w|``. At 2 bits the max start rounded 98 % of a trained CIFAR ResNet-20's weights to zero and the
        fine-tune sat at chance; the MSE weight clip with BatchNorm kept left it, the MSE alpha start alone changed
        nothing (``benchmarks/results/pact2_start.md``). Neither is in the paper, which trains from scratch. The
        first and last layers keep their ``first_last_bits`` max-scaled weights.
      - ``input_clip="fixed"`` (default, as the paper: it quantizes ReLU outputs and never clips the image):
        the network input gets a *non-learned* ``first_last_bits`` quantizer over the calibration images'
        min-max range: for 8-bit images normalised by mean/std, the pixel grid when those images hold the darkest
        and the brightest value (MNIST's do), else a grid over the range they span, pixels beyond it clipped
        (BreastMNIST's 256 hold no 0: its 0-valued pixels read as 1, the step is 254/255 of a pixel's). ``"learned"`` puts
        a PACT clip there (qsal 0.2): on MNIST it learned to clip below the brightest stroke pixels, so the
        input gradient vanished on the strokes and saliency maps turned anti-faithful.
    """

    method: ClassVar[str] = "pact"
    version: ClassVar[int] = 3
    bits: int = 4
    first_last_bits: int = 8
    alpha_decay: float = 1e-4
    alpha_init: float | None = None
    alpha_lr: float | None = 5e-2  # relative: lr = alpha_lr * alpha_start (at 2e-2 the default 5-epoch fine-tune moved clips by a median 4 %)
    weight_scheme: str = "symmetric"  # symmetric | dorefa | tanh_symmetric
    weight_per_channel: str = "depthwise"  # depthwise | none | all
    quantize_add_inputs: bool = False
    add_input_bits: int | None = 8
    fold_bn: bool = True
    input_clip: str = "fixed"  # fixed | learned
    alpha_calibration: str = "percentile"  # percentile | mse
    weight_clip: str = "max"  # max | mse (symmetric scheme)
    num_calibration: int = 256
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        _check_bits("bits", self.bits)
        _check_bits("first_last_bits", self.first_last_bits)
        if self.input_clip not in ("fixed", "learned"):
            raise QsalError(f"input_clip {self.input_clip!r} is not one of fixed, learned")
        if self.weight_scheme not in WEIGHT_SCHEMES:
            raise QsalError(f"weight_scheme {self.weight_scheme!r} is not one of {', '.join(WEIGHT_SCHEMES)}")
        if self.weight_scheme == "dorefa" and self.bits == 8:
            raise QsalError("weight_scheme='dorefa' at bits=8 has 256 weight levels whose integer codes (odd, up to "
                            "+-255) do not fit INT8; use bits <= 7 or weight_scheme='symmetric'")
        if self.alpha_calibration not in ("percentile", "mse"):
            raise QsalError(f"alpha_calibration {self.alpha_calibration!r} is not one of percentile, mse")
        if self.weight_clip not in ("max", "mse"):
            raise QsalError(f"weight_clip {self.weight_clip!r} is not one of max, mse")
        if self.weight_clip == "mse" and self.weight_scheme != "symmetric":
            raise QsalError(f"weight_clip='mse' needs weight_scheme='symmetric' (DoReFa normalises by the max "
                            f"itself), got {self.weight_scheme!r}")
        if self.weight_per_channel not in ("depthwise", "none", "all"):
            raise QsalError(f"weight_per_channel {self.weight_per_channel!r} is not one of depthwise, none, all")
        if self.add_input_bits is not None:
            _check_bits("add_input_bits", self.add_input_bits)
        if self.alpha_lr is not None and not (is_finite_number(self.alpha_lr) and self.alpha_lr > 0):
            raise QsalError(f"alpha_lr must be a finite number > 0 (or None to share the weights' lr), got {self.alpha_lr!r}")
        if not (is_finite_number(self.alpha_decay) and self.alpha_decay >= 0):
            raise QsalError(f"alpha_decay (the L2 weight on each clip alpha) must be a finite number >= 0, got "
                            f"{self.alpha_decay!r}")
        _check_common(self)

    @property
    def label(self) -> str:
        return f"pact-{self.bits}bit"


# PACT before version 2: "dorefa" meant the tanh + symmetric grid, per-tensor weights everywhere
# ("minmax": per-channel symmetric), add inputs quantized, alpha sharing the weights' learning rate.
_PACT_V1 = {"weight_scheme": {"dorefa": ("tanh_symmetric", "none"), "minmax": ("symmetric", "all")}}


def _upgrade_pact_v1(d: dict) -> dict:
    scheme, per_channel = _PACT_V1["weight_scheme"][d.get("weight_scheme", "dorefa")]
    return {**d, "weight_scheme": scheme, "weight_per_channel": per_channel, "quantize_add_inputs": True,
            "alpha_lr": None, "fold_bn": False}


@dataclass(frozen=True)
class WeightOnlyConfig(QuantConfig):
    """Weight-only quantization (INT8 or INT4 weights, FP32 activations): smaller files, float compute (onnxruntime
    dequantizes the weights on every call: slower than the FP32 file)."""

    method: ClassVar[str] = "weight_only"
    bits: int = 8
    per_channel: bool = True
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        _check_bits("bits", self.bits, (4, 8), "weight-only (ONNX stores INT4 and INT8 weights)")
        _check_common(self)

    @property
    def label(self) -> str:
        return f"weight-only-int{self.bits}"


_BY_METHOD = {c.method: c for c in (PTQConfig, QATConfig, PACTConfig, WeightOnlyConfig)}


def config_from_dict(d: dict) -> QuantConfig:
    """Inverse of ``to_dict``; unknown keys are an error, not ignored."""
    d = dict(d)
    method = d.pop("method", None)
    version = d.pop("version", None)
    if method not in _BY_METHOD:
        raise QsalError(f"unknown quantization method {method!r}; one of {', '.join(_BY_METHOD)}")
    cls = _BY_METHOD[method]
    if cls is PACTConfig and version == 1:  # a checkpoint written before version 2: rebuild it as it was
        d = _upgrade_pact_v1(d)
    if cls is PACTConfig and version in (1, 2) and "input_clip" not in d:  # before version 3: a learned input clip
        d["input_clip"] = "learned"
    if cls in (QATConfig, PACTConfig) and "fold_bn" not in d:  # written before BN folding: it kept BatchNorm
        d["fold_bn"] = False
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise QsalError(f"{cls.__name__} has no field(s) {sorted(unknown)}; known: {sorted(names)}")
    if "skip" in d:
        d["skip"] = tuple(d["skip"])
    return cls(**d)


def canonical_config(recorded: dict) -> dict | None:
    """A recorded ``to_dict()`` as this qsal reads it back: fields added since at their defaults (the behaviour before
    they existed), the recorded ``version`` kept (a version is a change of method its fields need not show). ``None``
    when it cannot be read back (an unknown method or field): such records are not compared."""
    try:
        return {**config_from_dict(recorded).to_dict(), "version": recorded.get("version")}
    except (QsalError, TypeError, ValueError):
        return None
