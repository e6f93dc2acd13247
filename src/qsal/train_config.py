"""``TrainConfig``, the typed training schedule every run records, and the augmentation it switches on.

``qsal.train.fit`` runs it; studies layer their per-dataset and per-model schedules into it (``study/schedule.py``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

import torch

from qsal.data.transforms import random_hflip, random_rotate_zoom, random_shift, shift_too_large
from qsal.errors import QsalError, is_finite_number
from qsal.precision import PRECISIONS

__all__ = ["TrainConfig", "augment", "check_augmentation_fits"]


@dataclass
class TrainConfig:
    """Training hyper-parameters. The defaults are the MedMNIST v2 recipe (Adam 1e-3, x0.1 at 50 % and
    75 % of the epochs, batch 128, best validation AUC selected); only ``epochs`` is shortened."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | sgd (momentum 0.9)
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of `epochs` where lr is multiplied by gamma
    gamma: float = 0.1
    shift_px: int = 0  # random translation augmentation, pixels
    hflip: bool = False
    # Random rotation (uniform in +-rotate_deg degrees) and zoom (factor uniform in [1 - zoom, 1 + zoom]) about the
    # image centre, after the shift and flip (qsal.data.transforms.random_rotate_zoom). None = off (0 reads as None),
    # so configs written before these fields keep their fingerprints and random streams.
    rotate_deg: float | None = None
    zoom: float | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    select_on: str = "auc"  # auc | acc | loss (validation metric that picks the saved model; a tie keeps the earlier epoch)
    progress: bool = True
    precision: str = "auto"  # auto | fp32 | bf16: training forwards (qsal.precision); evaluation is always fp32
    channels_last: str | bool = "auto"  # auto | true | false: NHWC memory format while training
    # Exponential moving average of the weights and BN statistics, updated after every optimizer step
    # (qsal.ema.WeightEMA: timm's ModelEmaV3, TensorFlow's ExponentialMovingAverage warm-up); the average is
    # what is validated, selected and saved. None = off (the MedMNIST recipe). The decay warms up,
    # min(ema_decay, (1 + t) / (10 + t)) at step t, so on a short run the average covers about the last tenth of
    # the steps; 0.99 caps it at about the last 100.
    ema_decay: float | None = None

    def __post_init__(self):
        from qsal.errors import is_integer

        for name in ("epochs", "batch_size"):
            if not (is_integer(getattr(self, name)) and getattr(self, name) >= 1):
                raise QsalError(f"{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if not (is_integer(self.shift_px) and self.shift_px >= 0):
            raise QsalError(f"shift_px must be a whole number of pixels >= 0, got {self.shift_px!r}")
        if not (is_finite_number(self.lr) and self.lr > 0):
            raise QsalError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (is_finite_number(self.weight_decay) and self.weight_decay >= 0):
            raise QsalError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not (is_finite_number(self.gamma) and 0 < self.gamma <= 1):  # above 1 the lr would grow at each milestone
            raise QsalError(f"gamma (the lr factor at each milestone) must be a decay factor in (0, 1], got {self.gamma!r}")
        if not isinstance(self.milestones, (tuple, list)):  # milestones=0.5 raised a TypeError
            raise QsalError(f"milestones must be a list of fractions of the epochs (e.g. [0.5, 0.75]), got "
                            f"{self.milestones!r}")
        if not all(is_finite_number(f) and 0 < f <= 1 for f in self.milestones):
            raise QsalError(f"milestones {list(self.milestones)!r}: every milestone is a fraction of the epochs, in "
                            "(0, 1] (0.5 = halfway)")
        if self.optimizer not in ("adam", "sgd"):
            raise QsalError(f"optimizer {self.optimizer!r} is not one of adam, sgd")
        if self.select_on not in ("auc", "acc", "loss"):
            raise QsalError(f"select_on {self.select_on!r} is not one of auc, acc, loss")
        if self.precision not in PRECISIONS:
            raise QsalError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.channels_last != "auto" and not isinstance(self.channels_last, bool):
            raise QsalError(f"channels_last {self.channels_last!r} must be 'auto' or a boolean (True/False; YAML "
                            "true/false)")
        if not (is_integer(self.seed) and 0 <= self.seed < 2**32):  # numpy and torch refuse others deep inside fit
            raise QsalError(f"seed must be a whole number in 0 .. 2**32-1, got {self.seed!r}")
        if not (isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda")
                                                  or re.fullmatch(r"cuda:\d+", self.device))):
            raise QsalError(f"device {self.device!r} is not one of auto, cpu, cuda (or cuda:N)")
        for name in ("hflip", "progress"):  # 'no' is truthy: flipping ran while the checkpoint recorded 'no'
            if not isinstance(getattr(self, name), bool):
                raise QsalError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.ema_decay is not None and not (is_finite_number(self.ema_decay) and 0.0 < self.ema_decay < 1.0):
            raise QsalError(f"ema_decay {self.ema_decay!r} must be a number between 0 and 1 (such as 0.99), or null "
                            "for no averaging")
        for name, high in (("rotate_deg", 180.0), ("zoom", 0.5)):
            value = getattr(self, name)
            if value is not None and not (is_finite_number(value) and 0.0 <= value <= high):
                raise QsalError(f"{name} {value!r} must be a number from 0 to {high:g}, or null for none")
            setattr(self, name, float(value) if value else None)
        self.milestones = tuple(self.milestones)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The schedule in words, every setting that shapes the weights: ``30 epochs (sgd, lr 0.01 x0.1 at 50/75 %,
        weight decay 0.0005, batch 128; shift 4 px, h-flip; EMA 0.99; best validation auc)``."""
        steps = "/".join(f"{f * 100:g}" for f in self.milestones)
        opt = [self.optimizer, f"lr {self.lr:g}" + (f" x{self.gamma:g} at {steps} %" if steps and self.gamma < 1 else ""),
               f"weight decay {self.weight_decay:g}" if self.weight_decay else "", f"batch {self.batch_size}"]
        aug = [f"shift {self.shift_px} px" if self.shift_px else "", "h-flip" if self.hflip else "",
               f"rotate {self.rotate_deg:g} deg" if self.rotate_deg else "", f"zoom {self.zoom:g}" if self.zoom else ""]
        parts = [", ".join(w for w in opt if w), ", ".join(w for w in aug if w) or "no augmentation",
                 f"EMA {self.ema_decay:g}" if self.ema_decay else "", f"best validation {self.select_on}"]
        return f"{self.epochs} epoch{'s' if self.epochs != 1 else ''} ({'; '.join(w for w in parts if w)})"

    @classmethod
    def describe_record(cls, record: dict) -> str:
        """``describe`` of a recorded ``to_dict()`` (a checkpoint's ``train``); its main figures where this qsal cannot
        read it back."""
        try:
            return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record}).describe()
        except (QsalError, TypeError, ValueError):
            return (f"{record.get('epochs')} epochs, {record.get('optimizer')} lr {record.get('lr')}, batch "
                    f"{record.get('batch_size')}")

    @classmethod
    def medmnist(cls, **overrides) -> "TrainConfig":
        """The MedMNIST v2 benchmark recipe in full: 100 epochs (the defaults shorten only ``epochs``)."""
        return cls(**{"epochs": 100, **overrides})


def augment(x: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """A training batch ``(N, C, H, W)`` under ``config``'s augmentation: shift, flip, then rotation/zoom; each
    step that is off draws no random numbers."""
    if config.shift_px:
        x = random_shift(x, config.shift_px, generator)
    if config.hflip:
        x = random_hflip(x, generator)
    if config.rotate_deg or config.zoom:
        x = random_rotate_zoom(x, config.rotate_deg, config.zoom, generator)
    return x


def check_augmentation_fits(config: TrainConfig, split) -> None:
    """Refuse a shift augmentation as large as the images (``split.images``: ``(N, H, W[, C])``) before a run folder
    is made: reflect padding cannot draw it, and every epoch would fail on its first batch."""
    if (problem := shift_too_large(config.shift_px, *split.images.shape[1:3])) is not None:
        raise QsalError(problem)
