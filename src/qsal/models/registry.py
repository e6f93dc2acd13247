"""Model registry: ``@register_model`` builders, ``create_model``, ``list_models`` and model cost."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from qsal.data.registry import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from qsal.errors import QsalError
from qsal.models.modes import evaluating

__all__ = ["register_model", "create_model", "list_models", "count_parameters", "count_macs"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: register ``fn(num_classes, in_channels, image_size) -> nn.Module`` under ``name``."""

    def wrap(fn):
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, in_channels: int = 1, image_size: int = 28,
                 seed: int | None = None) -> nn.Module:
    """Build a registered model with freshly initialised weights.

    Args:
        name: one of ``list_models()``.
        num_classes: outputs of the classifier (labels, for multi-label tasks).
        in_channels: 1 for grayscale, 3 for RGB.
        image_size: input height = width in pixels.
        seed: initialise the weights from ``torch.manual_seed(seed)`` (the global random state is left
            as it was), so the same seed gives the same model; ``None`` draws from the global state.
    """
    if name not in _REGISTRY:
        raise QsalError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    if num_classes < 1 or in_channels not in (1, 3):
        raise QsalError(f"bad model shape: num_classes={num_classes}, in_channels={in_channels} (1 or 3)")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise QsalError(f"image size {image_size} px is outside {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE} px, the range every "
                        "model runs at; pass a size in that range")
    if seed is None:
        model = _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    else:
        with torch.random.fork_rng(devices=[]):  # models are built on the CPU: only its generator is seeded
            torch.default_generator.manual_seed(seed)
            model = _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    model.qsal_arch = {"name": name, "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    model.qsal_untrained = True  # cleared by fit() and load_checkpoint(); export refuses an untrained model
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, in_channels: int, image_size: int) -> int:
    """Multiply-accumulates of one forward pass on a single image (conv and linear layers)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    with torch.no_grad(), evaluating(model):
        model(torch.zeros(1, in_channels, image_size, image_size))
    for h in handles:
        h.remove()
    return int(total)
