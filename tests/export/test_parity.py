"""Export parity over the model registry: every registered model x {PTQ-8, QAT-8, PACT-8, PACT-4, PACT-2},
on real BreastMNIST test images, in bare onnxruntime with default session options.

Each model is trained briefly on the real training images (so its logits are not near ties), then
quantized, and QAT/PACT are fine-tuned for a few steps in train mode: BatchNorm is folded before that
fine-tune, so the codes trained are the codes deployed.

Stated tolerance (logit scale = max |logit| of the PyTorch model on the split):
- argmax agreement >= 99 % of the test images;
- |logit difference| / logit scale: median <= 0.5 %, at least 90 % of logits within 1 %, and at most 5 % of the
  images with any logit off by more than 5 %.
  The artifact adds the same INT32 bias and multiplies the same integer codes as the PyTorch model;
  what remains is the integer kernel's requantization (a fixed-point multiply instead of a float one),
  which can move a value sitting on a rounding boundary by one step. At 8 bits that spreads small
  errors (median <= 1e-3); at 4/2 bits almost every logit is exact (median ~1e-7) but a flipped code
  deep in a net moves a few images by up to one coarse step (worst cell, ResNet-18 PACT-4: 95.2 % of
  logits within 1 %, max 4.2 %). Argmax agreement was 100 % in all 20 cells.
  Which value sits on a boundary depends on the CPU's kernels: on an AMD EPYC (Zen 4) machine, ResNet-20 PACT-2 with
  MSE clipping moved 4 of 156 images by one 2-bit step (up to 21 % of the logit scale; 97.1 % of logits within
  1 %, argmax agreement 100 %), where the first machine's max had been under 5 %. So the bound is on how many
  images move; how far stays capped at 35 % of the scale (one 2-bit step and a margin), so a grossly wrong logit
  still fails.
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from qsal.data import load_split
from qsal.export import export_onnx
from qsal.models import create_model, list_models
from qsal.quant import PACTConfig, PTQConfig, QATConfig, quantize

CONFIGS = {"ptq8": PTQConfig(num_calibration=128), "qat8": QATConfig(bits=8, num_calibration=128),
           "pact8": PACTConfig(bits=8, num_calibration=128), "pact4": PACTConfig(bits=4, num_calibration=128),
           "pact2": PACTConfig(bits=2, num_calibration=128),
           "pact2mse": PACTConfig(bits=2, num_calibration=128, weight_clip="mse", alpha_calibration="mse")}
FAST = {"small_cnn"}  # the rest of the registry runs with -m slow
_TRAINED: dict[str, tuple] = {}


def _steps(model, x, y, n, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(n):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _trained(name, data_dir):
    if name not in _TRAINED:
        torch.set_num_threads(1)
        train, test = (load_split("breastmnist", s, data_dir) for s in ("train", "test"))
        (x, y), (xt, _) = train.tensors(), test.tensors()
        torch.manual_seed(0)
        _TRAINED[name] = (_steps(create_model(name, 2, 1), x, y.long().view(-1), 25, 1e-3), x, y.long().view(-1), xt)
    return _TRAINED[name]


def _ort_logits(path, x):
    """As qsal runs the file (``runtime.session_options``): the fast integer kernels, or where they saturate (x86-64
    without VNNI) onnxruntime's exact u8 x u8 ones; tests/export/test_integer_kernels.py shows why."""
    from qsal.runtime import session_options

    sess = ort.InferenceSession(str(path), session_options()[0], providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"pixel_values": x})[0]


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in list_models()])
def test_artifact_matches_pytorch_model_on_real_test_images(name, method, shared_data, tmp_path):
    model, x, y, xt = _trained(name, shared_data)
    q = quantize(model, CONFIGS[method], x)
    if method != "ptq8":
        _steps(q, x, y, 4, 1e-4)  # a short fake-quant fine-tune: folded BN, moving ranges / alphas
    path = export_onnx(q, tmp_path / "m.onnx", input_shape=(1, 28, 28), check_untrained=False)
    with torch.no_grad():
        ref = q(xt).numpy()
    got = _ort_logits(path, xt.numpy())
    err = np.abs(got - ref) / np.abs(ref).max()
    agreement = float(np.mean(got.argmax(1) == ref.argmax(1)))
    assert agreement >= 0.99, f"{name} {method}: argmax agreement {agreement:.3f}"
    within = float(np.mean(err <= 1e-2))
    moved = float(np.mean(err.max(axis=1) > 5e-2))  # images with a logit moved by more than 5 % of the scale
    summary = (f"{name} {method}: median {np.median(err):.2e}, {within:.1%} within 1 %, {moved:.1%} of images moved "
               f"> 5 %, max {err.max():.2e}")
    # the dequantized graph (a CPU whose integer kernels saturate) accumulates in float in another order than PyTorch:
    # a code at a rounding boundary flips, and in ResNet-18's 18 layers 12 % of logits moved 1-2.5 %, none past 5 %
    from qsal.runtime import session_options

    least_within = 0.85 if session_options()[1] else 0.90
    assert np.median(err) <= 5e-3 and within >= least_within and moved <= 0.05 and err.max() <= 0.35, summary
