"""PACT and QAT as their papers define them, checked on real BreastMNIST images (skipped without the data)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from qsal.checkpoint import load_checkpoint, load_training_state
from qsal.data import load_split
from qsal.errors import QsalError
from qsal.models import create_model
from qsal.quant import PACTConfig, PACTQuantizer, QATConfig, QuantConv2d, qat_callbacks, quantize
from qsal.quant.config import config_from_dict
from qsal.quant.describe import describe_quantization
from qsal.quant.graph import act_quantizers, is_add
from qsal.train import TrainConfig, fit, parameter_groups


def _bn_state(model):
    return {n: (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
            for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


@pytest.mark.parametrize("freeze_bn_at, frozen", [(0.0, True), (1.0, False)])
def test_qat_frozen_batchnorm_keeps_its_running_statistics_through_an_epoch(shared_data, freeze_bn_at, frozen):
    train = load_split("breastmnist", "train", shared_data).subset(128, 0)
    val = load_split("breastmnist", "val", shared_data).subset(64, 0)
    cfg = QATConfig(bits=8, freeze_bn_at=freeze_bn_at, fold_bn=False, num_calibration=64)  # BN kept: Jacob et al.
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                        nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    q = quantize(net.eval(), cfg, calibration=train)
    before = _bn_state(q)
    fit(q, train, val, TrainConfig(epochs=1, batch_size=32, lr=1e-3, progress=False), callbacks=qat_callbacks(cfg))
    after = _bn_state(q)
    assert len(before) == 2
    unchanged = [torch.equal(before[n][0], after[n][0]) and torch.equal(before[n][1], after[n][1])
                 and before[n][2] == after[n][2] for n in before]
    assert all(unchanged) if frozen else not any(unchanged)  # 4 batches moved every BN when not frozen


def test_resnet20_pact4_quantizes_relu_outputs_at_k_bits_and_add_inputs_at_8_bits_by_default():
    x = torch.randn(32, 1, 28, 28)
    model = create_model("resnet20", 2, 1).eval()
    placed = {}
    for variant, kw in {"default": {}, "paper": {"add_input_bits": None}, "legacy": {"quantize_add_inputs": True}}.items():
        q = quantize(model, PACTConfig(bits=4, num_calibration=32, **kw), x)
        placed[variant] = [(n, q.get_submodule(n.target)) for n in q.graph.nodes if n.op == "call_module"
                           and isinstance(q.get_submodule(n.target), PACTQuantizer)]
        if variant == "default":
            default = q

    def add_only(variant):
        return [m for n, m in placed[variant] if all(is_add(u) for u in n.users)]

    # no k-bit quantizer reads an add input by default: the 11 add-only tensors get signed 8-bit ones
    # (what QLinearAdd needs); add_input_bits=None is the paper's float add; qsal < 0.2 used k bits there
    assert len(add_only("default")) == 11 and all(m.bits == 8 for m in add_only("default"))
    assert len(add_only("paper")) == 0
    assert len(add_only("legacy")) == 11 and all(m.bits == 4 for m in add_only("legacy"))
    k_bit = [n for n, m in placed["default"] if m.bits == 4]
    assert len(k_bit) == 19 and all(type(default.get_submodule(n.args[0].target)) is nn.ReLU for n in k_bit)


def test_alpha_has_its_own_optimizer_group_with_a_relative_learning_rate():
    x = torch.rand(32, 1, 28, 28)
    q = quantize(create_model("small_cnn", 2, 1).eval(), PACTConfig(bits=4, num_calibration=32), x)
    groups = parameter_groups(q)
    pacts = [m for m in act_quantizers(q) if isinstance(m, PACTQuantizer)]  # the input's quantizer is fixed
    assert len(groups) == 1 + len(pacts)  # the weights, then one group per clip (each its own lr)
    for g in groups[1:]:
        (alpha,) = g["params"]
        (owner,) = [p for p in pacts if p.alpha is alpha]
        assert g["lr"] == pytest.approx(0.05 * float(owner.alpha_start)) and g["weight_decay"] == 0.0
    shared = quantize(create_model("small_cnn", 2, 1).eval(), PACTConfig(bits=4, num_calibration=32, alpha_lr=None),
                      torch.rand(32, 1, 28, 28))
    assert len(parameter_groups(shared)) == 1


@pytest.mark.slow
def test_pact_alpha_learns_under_the_default_recipe_and_the_checkpoint_records_it(shared_data, tmp_path):
    from qsal.pipeline import quantize_checkpoint

    train, val = load_split("breastmnist", "train", shared_data), load_split("breastmnist", "val", shared_data)
    torch.manual_seed(0)
    fp32 = create_model("small_cnn", 2, 1)
    fit(fp32, train, val, TrainConfig(epochs=2, progress=False), tmp_path / "fp32")
    # the default recipe: qsal quantize's fine-tune (5 epochs, Adam lr 1e-4) and PACTConfig's alpha_lr
    quantize_checkpoint(str(tmp_path / "fp32" / "best.safetensors"), PACTConfig(bits=4), tmp_path / "pact",
                        data_dir=shared_data, progress=False)
    final = load_training_state(tmp_path / "pact" / "last.pt")["model"]  # the state after the last epoch
    alphas = [k for k in final if k.endswith(".alpha")]
    change = [abs(float(final[k]) - float(final[k + "_start"])) / float(final[k + "_start"]) for k in alphas]
    assert len(alphas) == 3 and np.median(change) >= 0.05, change  # with alpha_lr=None: 0.1 %
    # the checkpoint JSON (the epoch selected on validation AUC) records every clip at start and end
    meta = json.loads((tmp_path / "pact" / "best.json").read_text())
    acts = meta["quantization"]["activations"]
    best, _ = load_checkpoint(tmp_path / "pact" / "best.safetensors")
    assert [(a["alpha_start"], a["alpha_end"]) for a in acts if a["kind"] == "pact"] == [
        (round(float(q.alpha_start), 6), round(float(q.alpha.detach()), 6)) for q in act_quantizers(best)
        if isinstance(q, PACTQuantizer)]
    assert [a["alpha_start"] for a in acts if a["kind"] == "pact"] == [round(float(final[k + "_start"]), 6) for k in alphas]
    metrics = json.loads((tmp_path / "pact" / "metrics.json").read_text())
    assert metrics["quantization"]["activations"] == acts  # the result file records the same clips


def _input_quantizer(q):
    (node,) = [n for n in q.graph.nodes if n.op == "placeholder"]
    (user,) = node.users
    return q.get_submodule(user.target)


def test_pact_never_learns_a_clip_on_the_input_image_so_saliency_reaches_the_brightest_pixels(shared_data):
    """The paper quantizes ReLU outputs; the image keeps its range. A learned input clip (qsal 0.2) fell
    below MNIST's brightest pixels in a full-schedule fine-tune and zeroed their input gradient."""
    from qsal.quant import ActQuantizer, config_from_dict

    train = load_split("mnist", "train", shared_data).subset(256, 0)
    x, y = train.tensors()
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1).eval()
    q = quantize(model, PACTConfig(bits=4, num_calibration=256), x)
    inq = _input_quantizer(q)
    # fixed: an 8-bit min-max range over the calibration images, no parameter to learn
    assert type(inq) is ActQuantizer and inq.bits == 8 and list(inq.parameters()) == []
    assert inq.range.tolist() == pytest.approx([float(x.min()), float(x.max())], rel=1e-6)
    # MNIST normalised by mean/std is on a 256-level grid: the input quantizer keeps every grey level
    # distinct, each within half a step (the integer zero point shifts the grid by less than that)
    assert (inq(x) - x).abs().max() <= float(inq.scale) / 2 + 1e-6
    assert len(torch.unique(inq(x))) == len(torch.unique(x))
    before = inq.range.clone()
    fit(q, train, train.subset(64, 1), TrainConfig(epochs=1, batch_size=64, lr=1e-3, progress=False))
    assert torch.equal(inq.range, before)  # the fine-tune cannot move it

    # what the learned clip did: clipped at 90 % of the brightest value, those pixels get no gradient
    learned = quantize(model, PACTConfig(bits=4, num_calibration=256, input_clip="learned"), x)
    clip = _input_quantizer(learned)
    assert type(clip) is PACTQuantizer
    with torch.no_grad():
        clip.alpha.fill_(0.9 * float(x.max()))
    grads = {}
    for name, net in (("fixed", q.eval()), ("learned", learned.eval())):
        xi = x[:32].clone().requires_grad_(True)
        net(xi).gather(1, y[:32, None]).sum().backward()
        grads[name] = xi.grad[x[:32] > 0.9 * float(x.max())]
    assert (grads["learned"] == 0).all() and (grads["fixed"] != 0).float().mean() > 0.5
    # a checkpoint written before version 3 keeps the learned input clip it was trained with
    v2 = {k: v for k, v in PACTConfig().to_dict().items() if k != "input_clip"} | {"version": 2}
    assert config_from_dict(v2).input_clip == "learned" and PACTConfig().to_dict()["version"] == 3


def test_mse_weight_clip_keeps_two_bit_codes_alive_and_stays_exact():
    """At 2 bits a max-scaled ternary grid rounds nearly every weight of a trained layer to zero (a CIFAR ResNet-20
    starts at chance); the MSE clip keeps most of them, with less error, and codes * scale is still the weight used."""
    from qsal.quant.weights import weight_codes

    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    w[0, 0, 0, 0] = 6.0  # one outlier, as trained layers have
    for per_channel in (False, True):
        codes_max, scale_max = weight_codes(w, 2, per_channel, "symmetric", "max")
        codes, scale = weight_codes(w, 2, per_channel, "symmetric", "mse")
        assert float((codes_max == 0).float().mean()) > (0.99 if not per_channel else 0.8)  # measured .992 / .844
        assert float((codes == 0).float().mean()) < 0.55  # measured .506 / .479: a Gaussian's ternary optimum
        assert set(codes.unique().tolist()) <= {-1.0, 0.0, 1.0}
        err = lambda c, s: float(((c * s - w) ** 2).sum())  # noqa: E731
        assert err(codes, scale) < 0.4 * err(codes_max, scale_max)  # measured 271 vs 1156, 261 vs 705
        assert scale.shape == ((16, 1, 1, 1) if per_channel else ())
    with pytest.raises(ValueError, match="symmetric"):
        weight_codes(w, 2, False, "dorefa", "mse")
    with pytest.raises(ValueError, match="symmetric scheme only"):  # refused when the layer is made, not at forward
        QuantConv2d(4, 4, 3, weight_bits=2, scheme="dorefa", weight_clip="mse")
    # an all-zero channel keeps max|w|'s floor scale (a 20x smaller one would shrink its bias step alike)
    w[3] = 0.0
    assert float(weight_codes(w, 2, True, "symmetric", "mse")[1][3]) == float(weight_codes(w, 2, True)[1][3])


@pytest.mark.parametrize("chunk", [1, 5 * 288, 1 << 18])  # one candidate per op, 5 per chunk (a ragged last), all
def test_mse_weight_clip_search_in_chunks_picks_what_one_at_a_time_picks(chunk, monkeypatch):
    """The candidates are tried in chunks (few ops per layer: GPU launches); the pick must be the sequential
    search's, ties included: the largest clip among equal errors (the all-zero channel, the duplicated one)."""
    from qsal.quant import weights

    def one_at_a_time(w, m, n, dims):
        best_err, best = None, m
        for f in reversed(weights._MSE_FRACTIONS.tolist()):
            c = m * f
            s = c / n
            sq = (torch.clamp(torch.round(w / s), -n, n) * s - w) ** 2
            err = sq.sum(dim=dims, keepdim=True) if dims else sq.sum()
            better = err < best_err if best_err is not None else torch.ones_like(err, dtype=torch.bool)
            best_err, best = torch.where(better, err, best_err if best_err is not None else err), \
                torch.where(better, c, best)
        return best

    monkeypatch.setattr(weights, "_MSE_CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(1)
    for shape in ((32, 8, 3, 3), (10, 64)):
        w = torch.randn(shape, generator=g) * 0.1
        w[0] = 0.0
        w[2] = w[1]
        w[3].view(-1)[0] = 2.0  # an outlier
        dims = tuple(range(1, w.dim()))
        for n in (1, 3, 7):
            for per_channel in (True, False):
                m = (w.abs().amax(dim=dims, keepdim=True) if per_channel else w.abs().max()).clamp_min(1e-8)
                d = dims if per_channel else ()
                got, want = weights._mse_clip(w, m, n, d), one_at_a_time(w, m, n, d)
                assert got.shape == m.shape and torch.equal(got, want), (shape, n, per_channel)
                if per_channel:
                    assert float(got[0]) == float(m[0]) and float(got[1]) == float(got[2])


def test_mse_alpha_calibration_lowers_the_two_bit_clip_below_the_percentile():
    from qsal.quant.modules import PACTQuantizer, mse_clip

    v = np.maximum(np.random.default_rng(0).standard_normal(20000), 0)  # ReLU outputs
    top = float(np.percentile(v, 99.9))
    alpha = mse_clip(v, top, 3, signed=False)
    assert 0.3 * top < alpha < 0.8 * top  # 4 levels: the clip moves well inside the tail

    def err(a):
        return float(np.mean((np.round(np.clip(v, 0, a) / (a / 3)) * (a / 3) - v) ** 2))

    assert err(alpha) < 0.6 * err(top)
    q = PACTQuantizer(2, alpha_calibration="mse")
    q.start_observing()
    q(torch.from_numpy(v).float().view(1, -1))
    q.finish_observing()
    assert float(q.alpha.detach()) == pytest.approx(alpha, rel=1e-5) and float(q.alpha_start) == float(q.alpha.detach())


def test_pact_low_bit_start_options_are_validated_and_reach_the_layers():
    with pytest.raises(QsalError, match="weight_clip='mse' needs weight_scheme='symmetric'"):
        PACTConfig(bits=2, weight_clip="mse", weight_scheme="dorefa")
    with pytest.raises(QsalError, match="alpha_calibration"):
        PACTConfig(bits=2, alpha_calibration="median")
    x = torch.randn(32, 1, 28, 28)
    q = quantize(create_model("small_cnn", 2, 1).eval(), PACTConfig(bits=2, num_calibration=32, weight_clip="mse",
                                                                    alpha_calibration="mse"), x)
    clips = {(m.weight_bits, m.weight_clip) for m in q.modules() if hasattr(m, "weight_clip")}
    assert clips == {(2, "mse"), (8, "max")}  # first and last layers stay 8-bit max-scaled, as the paper keeps them
    assert {w.get("clip") for w in describe_quantization(q)["weights"]} == {"mse", None}
    assert {m.alpha_calibration for m in q.modules() if hasattr(m, "alpha_calibration")} == {"mse"}
    # a checkpoint written before these fields reads back with the old behaviour
    old = {k: v for k, v in PACTConfig(bits=2).to_dict().items() if k not in ("weight_clip", "alpha_calibration")}
    assert config_from_dict(old) == PACTConfig(bits=2)
