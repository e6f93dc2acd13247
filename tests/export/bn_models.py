"""Models for export tests: a registered net with non-trivial BatchNorm statistics, so that folding BN is
exercised (fresh BN has mean 0 / var 1 and would hide folding mistakes)."""

import torch

from qsal.models import create_model


def model_with_bn_stats(name: str = "small_cnn"):
    torch.manual_seed(0)
    m = create_model(name, 2, 1).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m
