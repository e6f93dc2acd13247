"""Saliency-guided training (Ismail, Corrada Bravo, Feizi, NeurIPS 2021) as a step for ``qsal.train.fit``.

Per batch, as the authors' code (github.com/ayaabdelsalam91/saliency_guided_training,
``Scripts/interpretable.py``) does it:

1. in eval mode, the input gradient of the label's **log-softmax** output (their MNIST net ends in
   ``log_softmax``; Captum ``Saliency(abs=False)``), averaged over channels; ``abs`` optional, taken
   after the channel mean;
2. mask the ``int(k * H * W)`` pixels with the lowest saliency (``torch.topk(largest=False)``) in every
   channel, each filled with a uniform random value from that image's own range in that channel;
3. in train mode, ``loss = CE(f(x), y) + lambda * KL(softmax f(x) || softmax f(x_masked))``, batch-mean,
   the gradient flowing through both outputs (their ``KLDivLoss(log_target=True)(masked, clean)``).

What qsal adds or changes, each named in ``describe()`` and the docs:

- ``target="logit"`` ranks pixels by the raw logit's gradient instead (qsal's former behaviour).
- The masked pass never changes module state: BatchNorm normalises it with the masked batch's own
  statistics but does not update its running statistics, and quantizer ranges (QAT's moving average)
  are held; the clean pass is exactly plain training. (The authors' MNIST net has no BatchNorm; a
  masked pass that updates BN leaves statistics that match neither clean nor masked data.)
- Multi-label tasks: the score is the log-probability ``log sigmoid(z_l)`` (``logit``: ``z_l``) summed
  over the image's positive labels, or its most probable label when it has none
  (``qsal.saliency.targets``); the KL is that of the independent per-label Bernoulli outputs, summed
  over labels, batch-mean. The authors' code has no multi-label case.
- ``fill="mean"`` (the authors' non-random ``meanMask``: each image's channel mean) and ``"min"``
  (each image's channel minimum, the background of these scans; a qsal option) besides ``"random"``.
- The random fill comes from the step's own generator (seeded, saved in ``fit``'s resume state), not
  numpy's global one.

Used on a PACT-quantized model it trains saliency guidance and quantization together (SGT + PACT).
Written by hand: this step is the research being reproduced.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qsal.data.registry import TASK_MULTILABEL, TASKS
from qsal.errors import QsalError, is_integer
from qsal.models.modes import evaluating
from qsal.saliency.targets import multilabel_target_weights
from qsal.train import regularization, task_loss

__all__ = ["SaliencyGuidedStep", "input_saliency", "mask_lowest", "masked_count", "frozen_module_state",
           "SALIENCY_TARGETS", "FILLS"]

SALIENCY_TARGETS = ("log_softmax", "logit")
FILLS = ("random", "mean", "min")


def _target_score(logits: torch.Tensor, y: torch.Tensor, task: str, target: str) -> torch.Tensor:
    """Per-image score ``(N,)`` whose input gradient is the saliency."""
    if task == TASK_MULTILABEL:
        w = torch.from_numpy(multilabel_target_weights(y.detach().cpu().numpy(), logits.detach().cpu().numpy()))
        per_label = F.logsigmoid(logits) if target == "log_softmax" else logits
        return (per_label * w.to(logits.device, logits.dtype)).sum(dim=1)
    per_class = F.log_softmax(logits, dim=1) if target == "log_softmax" else logits
    return per_class.gather(1, y.view(-1, 1)).squeeze(1)


@contextmanager
def frozen_module_state(model: nn.Module):
    """Run forward passes that leave every buffer of ``model`` as it was.

    BatchNorm layers in train mode normalise with the batch's own statistics but do not update their
    running statistics (nor ``num_batches_tracked``); quantizers with a ``frozen`` switch (QAT's
    moving-average ranges) are frozen. Any other buffer that still changes is an error: a module that
    updates state in ``forward`` needs such a switch before it can take a masked pass.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    switches = [m for m in model.modules() if getattr(m, "frozen", None) is False]
    before = [(name, b.detach().clone()) for name, b in model.named_buffers()]
    for m in bns:
        m.track_running_stats = False
    for m in switches:
        m.frozen = True
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True
        for m in switches:
            m.frozen = False
    changed = _changed_buffers(model, before)
    if changed:
        raise RuntimeError(f"a forward pass that must not change module state changed buffers {changed}; "
                           "give those modules a `frozen` switch")


def _changed_buffers(model: nn.Module, before: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the buffers that differ from ``before`` (as ``torch.equal`` decides: shape and values, a NaN
    never equal), read back from the device once: a read per buffer waited for the GPU some 120 times a
    saliency-guided step."""
    after = dict(model.named_buffers())
    if not before:
        return []
    home = before[0][1].device
    differs = torch.stack([(after[name] != old).any().to(home) if after[name].shape == old.shape
                           else torch.ones((), dtype=torch.bool, device=home) for name, old in before])
    return [name for (name, _), d in zip(before, differs.tolist()) if d]


def input_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, absolute: bool = False,
                   target: str = "log_softmax") -> torch.Tensor:
    """Per-pixel saliency ``(N, H, W)``: input gradient of the label's score, in eval mode, channel mean.

    ``target``: ``log_softmax`` (the authors': ``log softmax(z)[y]``; multi-label ``log sigmoid(z_l)``)
    or ``logit`` (``z[y]``). ``y``: ``(N,)`` class indices or ``(N, L)`` label vectors (multi-label).
    ``absolute`` takes ``|.|`` after the channel mean, as the authors' ``--abs``.
    """
    if target not in SALIENCY_TARGETS:
        raise QsalError(f"saliency target {target!r} is not one of {', '.join(SALIENCY_TARGETS)}")
    with evaluating(model), frozen_module_state(model):  # each module's own mode comes back (a frozen BatchNorm too)
        xg = x.detach().clone().requires_grad_(True)
        score = _target_score(model(xg), y, task, target)
        (grad,) = torch.autograd.grad(score.sum(), xg)
    sal = grad.mean(dim=1)
    return sal.abs() if absolute else sal


def masked_count(k: float, h: int, w: int) -> int:
    """Pixels masked per image: the authors' ``int(k * H * W)`` (floor), at least 1 when ``k > 0``."""
    return 0 if k <= 0 else max(1, int(k * h * w))


def mask_lowest(x: torch.Tensor, saliency: torch.Tensor, k: float, fill: str = "random",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each image's ``masked_count(k)`` lowest-``saliency`` pixels ``(N, H, W)`` in every channel.

    ``fill``: ``random``: uniform in the image's [min, max] per channel (authors' ``randomMask``);
    ``mean``: the image's per-channel mean (authors' ``meanMask``); ``min``: its per-channel minimum.
    Returns a detached tensor like ``x``.
    """
    if fill not in FILLS:
        raise QsalError(f"fill {fill!r} is not one of {', '.join(FILLS)}")
    n, c, h, w = x.shape
    x = x.detach()
    count = masked_count(k, h, w)
    if count == 0:
        return x.clone()
    idx = torch.topk(saliency.reshape(n, -1), count, dim=1, largest=False).indices
    mask = torch.zeros(n, h * w, dtype=torch.bool, device=x.device)
    mask.scatter_(1, idx, True)
    mask = mask.view(n, 1, h, w).expand(n, c, h, w)
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    if fill == "random":
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
        filler = lo + (hi - lo) * noise
    elif fill == "mean":
        filler = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    else:
        filler = lo.expand_as(x)
    return torch.where(mask, filler, x)


def _output_kl(logits: torch.Tensor, logits_masked: torch.Tensor, task: str) -> torch.Tensor:
    """``KL(p(.|x) || p(.|x_masked))`` summed over outputs, averaged over the batch."""
    if task == TASK_MULTILABEL:  # independent Bernoulli labels: log p = logsigmoid(z), log(1-p) = logsigmoid(-z)
        lp, lq = F.logsigmoid(logits), F.logsigmoid(logits_masked)
        lp1, lq1 = F.logsigmoid(-logits), F.logsigmoid(-logits_masked)
        return (lp.exp() * (lp - lq) + lp1.exp() * (lp1 - lq1)).sum(dim=1).mean()
    return F.kl_div(F.log_softmax(logits_masked, dim=1), F.log_softmax(logits, dim=1), reduction="batchmean",
                    log_target=True)


@dataclass
class SaliencyGuidedStep:
    """The training step: ``step(model, x, y) -> {"loss", "logits", "kl"}``.

    Args:
        task: dataset task (decides the loss, the KL form and the multi-label target).
        k: fraction of pixels masked per image (authors: 0.5 in their MNIST example); 0 is plain training.
        lam: weight of the KL term (authors: 1).
        absolute: rank by |gradient| instead of the signed gradient (authors' ``--abs``; default off).
        fill: ``random`` (authors' ``--RandomMasking``), ``mean`` or ``min``; see ``mask_lowest``.
        seed: seeds the step's generator (random fill); its state is saved in ``fit``'s resume state.
        target: ``log_softmax`` (authors) or ``logit``; see ``input_saliency``.
    """

    task: str
    k: float = 0.5
    lam: float = 1.0
    absolute: bool = False
    fill: str = "random"
    seed: int = 0
    target: str = "log_softmax"

    def __post_init__(self):
        if self.task not in TASKS:  # 'binary' trained as multi-class without a word
            raise QsalError(f"task {self.task!r} is not one of {', '.join(TASKS)} (the dataset's info.task)")
        if not (is_integer(self.seed) and self.seed >= 0):
            raise QsalError(f"seed must be a whole number >= 0, got {self.seed!r}")
        if not 0 <= self.k < 1:
            raise QsalError(f"saliency-guided k={self.k} must be a fraction in [0, 1)")
        if self.lam < 0:
            raise QsalError(f"saliency-guided lambda={self.lam} must be >= 0")
        if self.fill not in FILLS:
            raise QsalError(f"fill {self.fill!r} is not one of {', '.join(FILLS)}")
        if self.target not in SALIENCY_TARGETS:
            raise QsalError(f"saliency target {self.target!r} is not one of {', '.join(SALIENCY_TARGETS)}")
        self._gen = torch.Generator().manual_seed(self.seed)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        if masked_count(self.k, x.shape[-2], x.shape[-1]) == 0:  # the authors skip masking and KL at k = 0
            logits = model(x)
            kl = torch.zeros((), device=logits.device)
        else:
            sal = input_saliency(model, x, y, self.task, self.absolute, self.target)
            x_masked = mask_lowest(x, sal, self.k, self.fill, self._gen)
            logits = model(x)  # the clean pass: exactly plain training, BN statistics included
            with frozen_module_state(model):
                logits_masked = model(x_masked)
            kl = _output_kl(logits, logits_masked, self.task)
        loss = task_loss(logits, y, self.task) + self.lam * kl + regularization(model)
        return {"loss": loss, "logits": logits, "kl": kl.detach()}

    def state_dict(self) -> dict:
        """Resume state (tensors only, so ``fit`` can read it back with ``weights_only=True``)."""
        return {"generator": self._gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._gen.set_state(state["generator"])

    def describe(self) -> dict:
        return {"step": "saliency_guided", "k": self.k, "lambda": self.lam, "target": self.target,
                "absolute": self.absolute, "fill": self.fill, "seed": self.seed,
                "masked_pass": "module state frozen (BN batch statistics, running statistics not updated)",
                "reference": "Ismail et al. 2021, github.com/ayaabdelsalam91/saliency_guided_training"}
