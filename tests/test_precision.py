"""Mixed-precision training: bf16 autocast where the CPU has it, float32 quantizers, loss and evaluation."""

import json

import pytest
import torch

from qsal.data import load_split
from qsal.errors import QsalError
from qsal.models import create_model
from qsal.precision import TrainingForward, cpu_has_native_bf16, resolve_channels_last, resolve_precision
from qsal.quant import ActQuantizer, PACTConfig, PACTQuantizer, PTQConfig, quantize
from qsal.quant.modules import QUANT_LAYERS
from qsal.train import TrainConfig, fit

needs_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
CPU = torch.device("cpu")


def test_auto_precision_follows_the_hardware_and_bad_values_are_one_line():
    assert resolve_precision("auto", CPU) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    assert resolve_channels_last("auto", "bf16", CPU) is True and resolve_channels_last("auto", "fp32", CPU) is False
    with pytest.raises(QsalError, match="precision 'fp16' is not one of auto, fp32, bf16"):
        TrainConfig(precision="fp16")
    with pytest.raises(QsalError, match="channels_last 'yes'"):
        TrainConfig(channels_last="yes")


def test_auto_precision_on_a_gpu_is_bf16_from_ampere_on_and_asks_about_the_device_named(monkeypatch):
    """torch.cuda.is_bf16_supported() says yes on a T4/V100 (emulated bf16, slower than float32) and asks about the
    current device; auto must pick float32 there, and ask about the device it trains on."""
    asked = []
    capability = {0: (7, 5), 1: (9, 0)}  # a T4, an H200
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda d=None: asked.append(d) or capability[torch.device(d).index or 0])
    assert resolve_precision("auto", torch.device("cuda", 0)) == "fp32"
    assert resolve_precision("auto", torch.device("cuda", 1)) == "bf16"
    assert [torch.device(d).index for d in asked] == [0, 1]


def _quantized(config, tiny_splits):
    torch.manual_seed(0)
    model = create_model("small_cnn", 2, 1, 28)
    return quantize(model, config, calibration=tiny_splits[0])


@pytest.mark.parametrize("config", [PTQConfig(), PACTConfig(bits=4), PACTConfig(bits=2)], ids=["int8", "pact4", "pact2"])
def test_quantizers_are_float32_exact_under_autocast(config, tiny_splits):
    """A fake-quantizer returns the same float32 grid values with or without autocast, from bf16 or fp32 input."""
    qmodel = _quantized(config, tiny_splits).train()
    quantizers = [m for m in qmodel.modules() if isinstance(m, (ActQuantizer, PACTQuantizer))]
    layers = [m for m in qmodel.modules() if isinstance(m, QUANT_LAYERS)]
    assert quantizers and layers
    x = torch.randn(64, 32, 12, 12) * 3
    x_bf16 = x.bfloat16()
    for q in quantizers:
        reference = q(x_bf16.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            from_bf16, from_fp32 = q(x_bf16), q(x_bf16.float())
        assert from_bf16.dtype == from_fp32.dtype == torch.float32
        assert torch.equal(from_bf16, reference) and torch.equal(from_fp32, reference)
    for layer in layers:  # weight fake-quant: float32 and identical under autocast
        reference = layer.quantized_weight()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            w = layer.quantized_weight()
        assert w.dtype == torch.float32 and torch.equal(w, reference)


def test_training_forward_autocasts_only_training_mode_and_returns_float32_logits():
    model = create_model("small_cnn", 2, 1, 28)
    forward = TrainingForward(model, "bf16", CPU)
    x = torch.randn(4, 1, 28, 28)
    forward.train()
    seen = []
    handle = model.fc2.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = forward(x)
    assert seen[-1] == torch.bfloat16 and out.dtype == torch.float32
    forward.eval()  # eval-mode forwards (saliency of a guided step, validation) stay float32
    forward(x)
    handle.remove()
    assert seen[-1] == torch.float32


@needs_bf16
@pytest.mark.slow
def test_bf16_training_and_its_fake_quant_fine_tune_match_float32(shared_data, tmp_path):
    """Same seed, small_cnn on PneumoniaMNIST: 2 epochs FP32 then 1 epoch PACT-4 fine-tune, in fp32 and in
    bf16 + channels-last. Tolerance: validation AUC within 0.01 at both stages (measured: 0.0002 and 0.001).
    PneumoniaMNIST's 524 validation images, not BreastMNIST's 78: there one image moves the AUC by ~0.01."""
    train, val = (load_split("pneumoniamnist", s, shared_data) for s in ("train", "val"))
    runs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = create_model("small_cnn", 2, 1, 28)
        cfg = TrainConfig(epochs=2, seed=0, progress=False, precision=precision, channels_last="auto")
        fp32_fit = fit(model, train, val, cfg, tmp_path / precision / "fp32")
        qmodel = quantize(model, PACTConfig(bits=4), calibration=train)
        ft_cfg = TrainConfig(epochs=1, lr=5e-4, seed=0, progress=False, precision=precision)
        ft_fit = fit(qmodel, train, val, ft_cfg, tmp_path / precision / "pact4")
        runs[precision] = (fp32_fit.history[-1]["val_auc"], ft_fit.history[-1]["val_auc"])
        meta = json.loads((tmp_path / precision / "pact4" / "best.json").read_text())
        assert meta["precision"] == {"training": precision, "channels_last": precision == "bf16", "evaluation": "fp32"}
        assert meta["train"]["precision"] == precision
        assert next(qmodel.parameters()).is_contiguous()  # handed back in the default layout
    (fp32_auc, fp32_ft_auc), (bf16_auc, bf16_ft_auc) = runs["fp32"], runs["bf16"]
    assert fp32_auc > 0.9 and fp32_ft_auc > 0.9, runs  # both learned, so the comparison means something
    assert abs(bf16_auc - fp32_auc) <= 0.01, runs
    assert abs(bf16_ft_auc - fp32_ft_auc) <= 0.01, runs
