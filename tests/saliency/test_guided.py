import torch

from qsal.data import TASK_BINARY
from qsal.models import create_model
from qsal.quant import PACTConfig, quantize
from qsal.saliency import SaliencyGuidedStep, input_saliency, mask_lowest
from qsal.train import TrainConfig, fit


def test_mask_replaces_exactly_the_k_lowest_pixels_in_every_channel():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    sal = torch.arange(16.0).view(1, 4, 4).expand(2, 4, 4)
    out = mask_lowest(x, sal, 0.25, fill="constant")
    changed = (out != x).any(dim=1)  # (N, H, W)
    assert changed.sum(dim=(1, 2)).tolist() == [4, 4]
    assert changed[:, 0, :4].all()  # the 4 lowest-saliency pixels are the first row
    rnd = mask_lowest(x, sal, 0.5, fill="random", generator=torch.Generator().manual_seed(0))
    for i in range(2):
        assert rnd[i].min() >= x[i].min() and rnd[i].max() <= x[i].max()  # values from the sample's range


def test_input_saliency_is_the_label_logit_gradient_channel_mean():
    model = create_model("small_cnn", 2, 1).eval()
    x, y = torch.randn(3, 1, 28, 28), torch.tensor([0, 1, 1])
    sal = input_saliency(model, x, y, TASK_BINARY)
    xr = x.clone().requires_grad_(True)
    model(xr).gather(1, y.view(-1, 1)).sum().backward()
    assert torch.allclose(sal, xr.grad.mean(dim=1))


def test_sgt_step_adds_a_kl_term_and_trains_with_pact(tiny_splits, tmp_path):
    train, val, _ = tiny_splits
    torch.manual_seed(0)
    step = SaliencyGuidedStep(TASK_BINARY, k=0.5, lam=1.0)
    model = create_model("small_cnn", 2, 1)
    fit(model, train, val, TrainConfig(epochs=1, batch_size=32, progress=False), step=step)  # FP32 warm-up
    model = quantize(model, PACTConfig(bits=4, num_calibration=32), train)
    x, y = train.tensors()
    out = step(model, x[:16], y[:16])
    assert out["kl"] >= 0 and torch.isfinite(out["loss"])
    result = fit(model, train, val, TrainConfig(epochs=3, batch_size=32, progress=False), tmp_path, step=step)
    assert result.best_score > 0.8
