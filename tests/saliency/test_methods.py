import numpy as np
import pytest
import torch
from torch import nn

from qsal.errors import QsalError
from qsal.models import create_model
from qsal.quant import PACTConfig, quantize
from qsal.saliency import METHODS, explain
from qsal.saliency.onnx_occlusion import occlusion_numpy, occlusion_patch


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
    run = lambda a: model(torch.from_numpy(a)).detach().numpy()  # noqa: E731
    for window, stride, baseline in ((4, 2, 0.0), (5, 2, -1.0)):  # 5/2: the last patch is cut at the border
        ours = occlusion_numpy(run, x.numpy(), target.numpy(), window=window, stride=stride, baseline=baseline)
        ref = explain(model, x, "occlusion", target=target, window=window, stride=stride, baseline=baseline).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-4)
        assert (np.abs(ours[:, :, -1, :]).sum() > 0)  # the last row is occluded too


def test_the_occlusion_patch_scales_with_the_image_and_stays_4_px_at_28_and_32():
    assert occlusion_patch(28, 28) == (4, 2) and occlusion_patch(32, 32) == (4, 2)  # MedMNIST, CIFAR-10: as before
    assert occlusion_patch(224, 224) == (32, 16) and occlusion_patch(64, 128) == (9, 4)  # a seventh of the short side
    assert occlusion_patch(3, 3) == (3, 1)  # never larger than the image
    torch.manual_seed(0)
    model = create_model("small_cnn", 2, 1, image_size=56).eval()
    x, target = torch.randn(2, 1, 56, 56), torch.tensor([0, 1])
    run = lambda a: model(torch.from_numpy(a)).detach().numpy()  # noqa: E731
    # both occlusions default to it: 56 px images get 8 px patches moved by 4 px, not 4 / 2 (729 vs 169 passes)
    default = occlusion_numpy(run, x.numpy(), target.numpy())
    np.testing.assert_array_equal(default, occlusion_numpy(run, x.numpy(), target.numpy(), window=8, stride=4))
    assert not np.allclose(default, occlusion_numpy(run, x.numpy(), target.numpy(), window=4, stride=2))
    np.testing.assert_allclose(explain(model, x, "occlusion", target=target).numpy(), default, atol=1e-4)


def test_bad_target_and_shape_are_one_line_errors():
    model = create_model("small_cnn", 2, 1)
    with pytest.raises(QsalError, match=r"target \[5\] is out of range: the model has classes 0..1"):
        explain(model, torch.randn(1, 1, 28, 28), "gradient", target=[5])
    with pytest.raises(QsalError, match="3 channel\\(s\\) but the model takes 1"):
        explain(model, torch.randn(1, 3, 28, 28), "gradient")
    with pytest.raises(QsalError, match="unknown saliency method"):
        explain(model, torch.randn(1, 1, 28, 28), "lime")


def test_gradcam_keeps_each_feature_over_the_centre_of_its_receptive_field():
    from qsal.saliency.methods import cam_to_input

    cam = torch.zeros(1, 1, 24, 24)
    cam[0, 0, 5, 7] = 1.0  # small_cnn: two unpadded 3x3 convs, feature (5, 7) is centred on input pixel (7, 9)
    placed = cam_to_input(cam, (28, 28))
    assert placed.shape[-2:] == (28, 28) and placed[0, 0, 7, 9] == 1.0 and placed.sum() == 1.0
    tiled = cam_to_input(torch.ones(1, 1, 8, 8), (32, 32))  # ResNet-20: 8x8 tiles of 4 px, upsampled
    assert tiled.shape[-2:] == (32, 32) and torch.allclose(tiled, torch.ones_like(tiled))


def test_smoothgrad_noise_is_each_images_own_range_and_seeded():
    from qsal.saliency.methods import _smoothgrad

    x = torch.stack([torch.linspace(0, 0.2, 784).view(1, 28, 28), torch.linspace(-2, 2, 784).view(1, 28, 28)])
    seen = []

    def forward(inp):
        seen.append((inp - x).detach())
        return inp.sum(dim=(1, 2, 3))[:, None].repeat(1, 2)

    _smoothgrad(forward, x.clone(), {"target": 0}, n_samples=40, noise_std=0.1, seed=0)
    noise = torch.cat(seen)
    assert abs(noise[0::2].std().item() - 0.02) < 0.002 and abs(noise[1::2].std().item() - 0.4) < 0.04
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 2), torch.nn.Tanh())
    a, b = (explain(model, x, "smoothgrad", target=0, n_samples=3) for _ in range(2))
    assert torch.equal(a, b)


def test_bad_options_are_one_line_errors():
    from qsal.models import create_model

    model = create_model("small_cnn", 2, 1)
    model.qsal_arch = {"in_channels": 1, "num_classes": 2, "image_size": 28}
    x = torch.randn(2, 1, 28, 28)
    for kwargs, message in (({"target": torch.tensor([0.0, 1.0])}, "integer class ids"),
                            ({"target": "1"}, "not class ids"), ({"window": 0}, "window must be"),
                            ({"window": 40}, "window must be"), ({"stride": 0}, "stride must be"),
                            ({"ig_steps": 0}, "ig_steps must be"), ({"n_samples": 0}, "n_samples must be"),
                            ({"noise_std": -1.0}, "noise_std must be"), ({"baseline": float("nan")}, "baseline must be")):
        with pytest.raises(QsalError, match=message):
            explain(model, x, "integrated_gradients", **kwargs)
    with pytest.raises(QsalError, match="NaN or infinite"):
        explain(model, torch.full((1, 1, 28, 28), float("nan")), "gradient")
    with pytest.raises(QsalError, match="trained on 28x28"):
        explain(model, torch.randn(1, 1, 64, 64), "gradient")


def test_randomization_check_leaves_the_model_and_the_rng_as_they_were():
    from qsal.models import create_model
    from qsal.saliency.methods import randomization_check

    model = create_model("small_cnn", 2, 1).train()
    images = torch.randn(2, 1, 28, 28)
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    randomization_check(model, images)
    assert model.training and torch.equal(torch.rand(1), expected)


_GRADCAM_CASES = ([(name, False) for name in ("small_cnn", "resnet20", "resnet18", "edge_mbv2")]
                  + [(name, True) for name in ("small_cnn", "resnet20", "edge_mbv2")])  # resnet18: resnet20's blocks


@pytest.mark.parametrize("name, quantized", _GRADCAM_CASES)
def test_gradcam_weighs_the_rectified_maps_the_classifier_pools(name, quantized):
    """Grad-CAM by hand (Selvaraju et al. 2017, eq. 1-2) on the maps entering the last pooling layer: the ReLU
    output for ``small_cnn`` (VGG's ``features.29``), the last residual block's output for ResNets (``layer4``)."""
    from qsal.saliency.methods import cam_to_input, gradcam_layer

    torch.manual_seed(0)
    side, channels = (32, 3) if name == "resnet20" else (28, 1)
    model = create_model(name, 3, channels, image_size=side).eval()
    if quantized:
        model = quantize(model, PACTConfig(bits=4, num_calibration=16), torch.randn(16, channels, side, side)).eval()
    layer, reads_input = gradcam_layer(model)
    assert reads_input and isinstance(layer, (torch.nn.AdaptiveAvgPool2d, torch.nn.MaxPool2d))
    seen = {}
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.update(maps=args[0]))
    x = torch.randn(2, channels, side, side)
    logits = model(x)
    handle.remove()
    maps = seen["maps"]
    assert (maps >= 0).all(), "the maps Grad-CAM weighs are rectified"
    predicted = logits.argmax(dim=1)  # a random net's other classes may score below zero everywhere: an empty CAM
    grads = torch.autograd.grad(logits.gather(1, predicted[:, None]).sum(), maps)[0]
    by_hand = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * maps).sum(dim=1, keepdim=True))
    expected = cam_to_input(by_hand.detach(), (side, side)).expand(-1, channels, -1, -1)
    got = explain(model, x, "gradcam")
    assert got.abs().sum() > 0 and torch.allclose(got, expected, atol=1e-6)


def test_gradcam_falls_back_to_the_last_conv_without_a_pooling_layer():
    from qsal.saliency.methods import gradcam_layer

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3),
                                torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.randn(1, 1, 12, 12))
    assert gradcam_layer(model) == (model[2], False)
    with pytest.raises(QsalError, match="needs a convolutional layer"):
        gradcam_layer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))
