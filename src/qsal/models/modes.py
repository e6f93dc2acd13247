"""Running a model in eval mode for a moment and giving it back in the modes it had, module by module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["evaluating"]


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; afterwards every module has its own earlier mode back.

    ``model.train(was_training)`` would not do: it sets every submodule to the root's mode, so the BatchNorm layers a
    QAT freeze had put in eval mode (``quant.qat_callbacks``) would go back to updating their statistics.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
