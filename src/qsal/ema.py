"""An exponential moving average (EMA) of a model's weights, kept beside the model while it trains.

Semantics of timm's ``ModelEmaV3`` (and of ``torch.optim.swa_utils.AveragedModel`` with
``get_ema_multi_avg_fn`` and ``use_buffers=True``), except that integer and boolean state is copied rather than
averaged: after each optimizer step every floating-point parameter *and buffer* (BatchNorm running statistics,
PACT clipping levels, observer ranges) moves toward the live model's,

    ema <- decay * ema + (1 - decay) * live,

and the first update copies the live model. ``AveragedModel`` would average integer buffers through floats
(``num_batches_tracked``) and boolean ones (a quantizer's "calibrated" flag), so the update is written here.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightEMA"]


class WeightEMA:
    """``WeightEMA(model, decay)``: ``update(model)`` after each optimizer step; ``module`` is the averaged copy
    (always in eval mode, no gradients), validated and saved in the live model's place."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = model.state_dict()
        for name, avg in self.module.state_dict().items():
            now = live[name].detach()
            if self.updates == 0 or not avg.is_floating_point():
                avg.copy_(now)
            else:
                avg.lerp_(now.to(avg.dtype), 1.0 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict:
        """For the resume state (``last.pt``): the averaged tensors and the update count."""
        return {"module": self.module.state_dict(), "updates": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
