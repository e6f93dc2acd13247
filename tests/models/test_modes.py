"""qsal.models.modes.evaluating: eval mode for a moment, each module's own mode back after (not the root's)."""

import pytest
import torch
from torch import nn

from qsal.metrics import predict_logits
from qsal.models import create_model
from qsal.models.modes import evaluating


def _frozen_bn_model():
    model = create_model("resnet20", 2, 1, seed=0).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bns[0].eval()  # as QAT's BatchNorm freeze leaves it
    return model, bns


def test_each_module_gets_its_own_mode_back_also_after_an_error():
    model, bns = _frozen_bn_model()
    with pytest.raises(RuntimeError), evaluating(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError("stop")
    assert model.training and not bns[0].training and all(b.training for b in bns[1:])


def test_validation_during_training_leaves_a_frozen_batchnorm_frozen():
    model, bns = _frozen_bn_model()
    predict_logits(model, torch.zeros(2, 1, 28, 28))
    assert model.training and not bns[0].training
