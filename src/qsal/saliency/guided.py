"""Saliency-guided training (Ismail, Corrada Bravo, Feizi, NeurIPS 2021) as a step for ``qsal.train.fit``.

Per batch: take the input gradient of the label's logit in eval mode (signed, averaged over channels,
as the authors' code; absolute as an option), mask the ``k`` fraction of features with the lowest
saliency by replacing them with random values from each sample's own value range (or a constant),
and train on ``CE(f(x), y) + lambda * KL(f(x) || f(x_masked))`` with ``x_masked`` detached. Used on a
PACT-quantized model it trains saliency guidance and quantization together (SGT + PACT).
Written by hand: this step is the research being reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qsal.data.registry import TASK_MULTILABEL
from qsal.errors import QsalError
from qsal.train import regularization, task_loss

__all__ = ["SaliencyGuidedStep", "input_saliency", "mask_lowest"]


def input_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, absolute: bool = False) -> torch.Tensor:
    """Per-pixel saliency ``(N, H, W)``: gradient of the label's logit w.r.t. the input, channel mean."""
    was_training = model.training
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    if task == TASK_MULTILABEL:
        score = (logits * y.float()).sum()
    else:
        score = logits.gather(1, y.view(-1, 1)).sum()
    (grad,) = torch.autograd.grad(score, x)
    model.train(was_training)
    grad = grad.abs() if absolute else grad
    return grad.mean(dim=1)


def mask_lowest(x: torch.Tensor, saliency: torch.Tensor, k: float, fill: str = "random",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace the ``k`` fraction of pixels with the lowest ``saliency`` ``(N, H, W)`` in every channel.

    ``fill="random"``: uniform values within each sample's [min, max]; ``"constant"``: each sample's min.
    """
    n, c, h, w = x.shape
    count = int(round(k * h * w))
    if count == 0:
        return x.detach().clone()
    idx = saliency.reshape(n, -1).argsort(dim=1)[:, :count]
    mask = torch.zeros(n, h * w, dtype=torch.bool, device=x.device)
    mask.scatter_(1, idx, True)
    mask = mask.view(n, 1, h, w).expand(n, c, h, w)
    lo = x.detach().amin(dim=(1, 2, 3), keepdim=True)
    hi = x.detach().amax(dim=(1, 2, 3), keepdim=True)
    if fill == "random":
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
        filler = lo + (hi - lo) * noise
    else:
        filler = lo.expand_as(x)
    return torch.where(mask, filler, x.detach())


@dataclass
class SaliencyGuidedStep:
    """The training step: ``step(model, x, y) -> {"loss", "logits"}``.

    Args:
        task: dataset task (decides the loss and the KL form).
        k: fraction of features masked (authors: 0.5 in their MNIST example).
        lam: weight of the KL term (authors: 1).
        absolute: rank by |gradient| instead of the signed gradient.
        fill: ``random`` (authors) or ``constant``.
    """

    task: str
    k: float = 0.5
    lam: float = 1.0
    absolute: bool = False
    fill: str = "random"
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.k < 1:
            raise QsalError(f"saliency-guided k={self.k} must be a fraction in [0, 1)")
        if self.lam < 0:
            raise QsalError(f"saliency-guided lambda={self.lam} must be >= 0")
        if self.fill not in ("random", "constant"):
            raise QsalError(f"fill {self.fill!r} is not one of random, constant")
        self._gen = torch.Generator().manual_seed(self.seed)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        sal = input_saliency(model, x, y, self.task, self.absolute)
        x_masked = mask_lowest(x, sal, self.k, self.fill, self._gen).detach()
        logits = model(x)
        logits_masked = model(x_masked)
        if self.task == TASK_MULTILABEL:
            p, q = torch.sigmoid(logits), torch.sigmoid(logits_masked).clamp(1e-6, 1 - 1e-6)
            kl = (p * torch.log(p.clamp_min(1e-6) / q) + (1 - p) * torch.log((1 - p).clamp_min(1e-6) / (1 - q))).mean()
        else:
            kl = F.kl_div(F.log_softmax(logits_masked, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        loss = task_loss(logits, y, self.task) + self.lam * kl + regularization(model)
        return {"loss": loss, "logits": logits, "kl": kl.detach()}

    def describe(self) -> dict:
        return {"step": "saliency_guided", "k": self.k, "lambda": self.lam, "absolute": self.absolute, "fill": self.fill}
