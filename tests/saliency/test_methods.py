import numpy as np
import pytest
import torch
from torch import nn

from qsal.errors import QsalError
from qsal.models import create_model
from qsal.quant import PACTConfig, quantize
from qsal.saliency import METHODS, explain
from qsal.saliency.onnx_occlusion import occlusion_numpy


class LinearPixel(nn.Module):
    """logit_1 = sum(w * x), logit_0 = 0: the gradient of class 1 is w everywhere (checkable by hand)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.arange(16.0).view(1, 1, 4, 4) - 8)

    def forward(self, x):
        s = (x * self.w).sum(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_gradient_methods_by_hand():
    m, x = LinearPixel(), torch.rand(2, 1, 4, 4)
    assert torch.allclose(explain(m, x, "gradient", target=1), m.w.detach().expand(2, 1, 4, 4))
    assert torch.allclose(explain(m, x, "gradient_abs", target=1), m.w.detach().abs().expand(2, 1, 4, 4))
    assert torch.allclose(explain(m, x, "input_x_gradient", target=1), x * m.w.detach())
    # integrated gradients with a zero baseline is exact for a linear model: x * w
    assert torch.allclose(explain(m, x, "integrated_gradients", target=1), x * m.w.detach(), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_float_and_pact_models_returns_input_shaped_maps(method):
    torch.manual_seed(0)
    model = create_model("small_cnn", 3, 1).eval()
    x = torch.randn(4, 1, 28, 28)
    qmodel = quantize(model, PACTConfig(bits=4, num_calibration=16), torch.randn(16, 1, 28, 28))
    for m in (model, qmodel):
        maps = explain(m, x, method)
        assert maps.shape == x.shape and torch.isfinite(maps).all()
        assert maps.abs().sum() > 0  # the STE lets gradients through the quantizers


def test_occlusion_numpy_matches_captum():
    torch.manual_seed(0)
    model = create_model("small_cnn", 2, 1).eval()
    x = torch.randn(3, 1, 28, 28)
    target = torch.tensor([0, 1, 1])
    ours = occlusion_numpy(lambda a: model(torch.from_numpy(a)).detach().numpy(), x.numpy(), target.numpy())
    ref = explain(model, x, "occlusion", target=target).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_bad_target_and_shape_are_one_line_errors():
    model = create_model("small_cnn", 2, 1)
    with pytest.raises(QsalError, match=r"target \[5\] is out of range: the model has classes 0..1"):
        explain(model, torch.randn(1, 1, 28, 28), "gradient", target=[5])
    with pytest.raises(QsalError, match="3 channel\\(s\\) but the model takes 1"):
        explain(model, torch.randn(1, 3, 28, 28), "gradient")
    with pytest.raises(QsalError, match="unknown saliency method"):
        explain(model, torch.randn(1, 1, 28, 28), "lime")
