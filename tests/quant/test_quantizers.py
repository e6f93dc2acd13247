import numpy as np
import pytest
import torch
from torch import nn

from qsal.errors import QsalError
from qsal.quant import ActQuantizer, PACTConfig, PACTQuantizer, PTQConfig, QATConfig, config_from_dict, quantize
from qsal.quant.modules import QuantConv2d
from qsal.quant.weights import quantize_weight
from qsal.quant.observers import OBSERVERS, ValueSampler, compute_range
from qsal.quant.ste import round_ste


def test_round_ste_rounds_forward_and_passes_gradient():
    x = torch.tensor([0.2, 0.7, -1.6], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 1.0, -2.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pact_layer_has_at_most_2_to_the_k_output_levels(bits):
    q = PACTQuantizer(bits)
    q.start_observing()
    q(torch.rand(1000) * 5)
    q.finish_observing()
    out = q(torch.randn(10000) * 3).detach()
    assert len(torch.unique(out)) <= 2 ** bits
    assert float(out.min()) >= 0 and float(out.max()) <= float(q.alpha.detach()) + 1e-5


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_symmetric_weights_have_2_to_the_k_minus_1_levels_including_zero(bits):
    w = torch.rand(64, 32, 3, 3) * 2 - 1  # uniform, so every level is used
    wq, codes, scale = quantize_weight(w, bits, per_channel=False, scheme="symmetric")
    n = 2 ** (bits - 1) - 1
    assert len(torch.unique(wq)) == 2 * n + 1 and bool((wq == 0).any())
    assert codes.abs().max() == n and torch.equal(wq, codes * scale)


@pytest.mark.parametrize("bits", [2, 3, 4, 7])
def test_dorefa_weights_are_the_papers_grid(bits):
    # DoReFa-Net: tanh(w) / (2 max|tanh w|) + 0.5 -> k-bit -> 2q - 1: 2^k levels, none zero
    w = (torch.rand(64, 32, 3, 3) * 2 - 1) * 0.1
    wq, codes, scale = quantize_weight(w, bits, per_channel=False, scheme="dorefa")
    top = 2 ** bits - 1
    assert len(torch.unique(wq)) == 2 ** bits and not bool((wq == 0).any())
    assert torch.equal(torch.unique(codes), torch.arange(-top, top + 1, 2, dtype=codes.dtype))  # odd codes
    t = torch.tanh(w)
    paper = 2 * torch.round((t / (2 * t.abs().max()) + 0.5) * top) / top - 1  # the paper's [-1, 1] output
    assert torch.allclose(wq, paper * w.abs().max(), atol=1e-6)


def test_two_bit_grids_dorefa_has_4_values_none_zero_symmetric_is_ternary():
    w = torch.randn(32, 16, 3, 3)
    dorefa = torch.unique(quantize_weight(w, 2, per_channel=False, scheme="dorefa")[0])
    symmetric = torch.unique(quantize_weight(w, 2, per_channel=False, scheme="symmetric")[0])
    assert len(dorefa) == 4 and not bool((dorefa == 0).any())
    assert len(symmetric) == 3 and float(symmetric[1]) == 0.0 and float(symmetric[0]) == -float(symmetric[2])


@pytest.mark.parametrize("scheme", ["symmetric", "dorefa", "tanh_symmetric"])
def test_integer_weight_times_scale_is_exactly_the_fake_quant_weight(scheme):
    torch.manual_seed(0)
    conv = QuantConv2d(8, 16, 3, weight_bits=3, per_channel=scheme != "dorefa", scheme=scheme)
    with torch.no_grad():
        conv.bn_scale.copy_(torch.linspace(-2, 2, 16))  # a folded BN with a negative gamma
    codes, scale = conv.integer_weight()
    assert codes.dtype == np.int8 and scale.shape == (16,)
    assert np.array_equal(codes * scale[:, None, None, None], conv.quantized_weight().detach().numpy())
    if scheme == "dorefa":
        assert np.all(np.abs(codes) % 2 == 1) and np.abs(codes).max() == 7  # 3 bits: odd codes in [-7, 7]


def test_depthwise_convs_get_one_weight_scale_per_channel_under_pact():
    from qsal.models import create_model

    model = create_model("edge_mbv2", 2, 1).eval()
    q = quantize(model, PACTConfig(bits=4, num_calibration=32), torch.randn(32, 1, 28, 28))
    depthwise = [m for m in q.modules() if isinstance(m, QuantConv2d) and m.groups == m.in_channels > 1]
    assert depthwise and all(m.per_channel for m in depthwise)
    for m in depthwise:
        codes, scale = m.integer_weight()
        per_channel_max = m.weight.detach().abs().amax(dim=(1, 2, 3)).numpy()
        assert len(np.unique(scale)) == m.out_channels  # one scale per channel ...
        assert np.allclose(scale, per_channel_max * m.bn_scale.abs().numpy() / 7)  # ... from that channel's max
    others = [m for m in q.modules() if isinstance(m, QuantConv2d) and m.weight_bits == 4 and m.groups == 1]
    assert others and not any(m.per_channel for m in others)  # the paper's per-layer scale elsewhere


def test_pact_alpha_gradient_is_one_above_alpha_and_zero_below():
    q = PACTQuantizer(4)
    q.mode = "quant"
    with torch.no_grad():
        q.alpha.fill_(1.0)
    x = torch.tensor([0.3, 0.9, 1.5, 4.0])
    q(x).sum().backward()
    assert q.alpha.grad.item() == pytest.approx(2.0, abs=1e-4)  # two inputs >= alpha


def test_pact_alpha_actually_learns_under_training():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 2))
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 2, (64,))
    q = quantize(net, PACTConfig(bits=2, num_calibration=64), calibration=x)
    pacts = [m for m in q.modules() if isinstance(m, PACTQuantizer)]
    before = [float(p.alpha.detach()) for p in pacts]
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    for _ in range(20):
        loss = nn.functional.cross_entropy(q(x), y) + sum(p.regularization() for p in pacts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = [float(p.alpha.detach()) for p in pacts]
    assert all(abs(a - b) > 1e-3 for a, b in zip(after, before)), (before, after)


def test_act_quantizer_uint8_grid_and_error_bound():
    q = ActQuantizer(8, "minmax")
    q.start_observing()
    x = torch.linspace(-1, 3, 1001)
    q(x)
    q.finish_observing()
    out = q(x)
    assert len(torch.unique(out)) <= 256
    assert float((out - x).abs().max()) <= float(q.scale) / 2 + 1e-6


@pytest.mark.parametrize("observer", OBSERVERS)
def test_observers_clip_outliers_no_wider_than_minmax(observer):
    rng = np.random.default_rng(0)
    s = ValueSampler()
    v = np.concatenate([rng.exponential(1.0, 100_000), [80.0]])  # one outlier
    s.update(torch.from_numpy(v))
    lo, hi = compute_range(observer, s, 8)
    assert lo == 0.0 and 0 < hi <= 80.0
    if observer in ("percentile", "entropy"):
        assert hi < 40.0  # the robust observers do not stretch to the outlier
    if observer == "mse":
        from qsal.quant.observers import _quant_mse

        vals = s.values()
        assert _quant_mse(vals, lo, hi, 8) <= _quant_mse(vals, 0.0, 80.0, 8)


def test_ptq_per_channel_int8_conv_is_close_to_float():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 3)).eval()
    x = torch.randn(128, 1, 28, 28)
    q = quantize(net, PTQConfig(num_calibration=128), calibration=x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())  # folded
    assert sum(isinstance(m, QuantConv2d) for m in q.modules()) == 1
    with torch.no_grad():
        ref, out = net(x), q(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.02


def test_qat_callbacks_freeze_observers_then_batchnorm():
    from qsal.quant import qat_callbacks

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 2))
    q = quantize(net, QATConfig(freeze_observers_at=0.5, freeze_bn_at=0.75, num_calibration=32), torch.randn(32, 1, 28, 28))
    (cb,) = qat_callbacks(QATConfig(freeze_observers_at=0.5, freeze_bn_at=0.75))
    q.train()
    cb(q, 0, 4)
    assert not any(m.frozen for m in q.modules() if isinstance(m, ActQuantizer))
    cb(q, 3, 4)
    assert all(m.frozen for m in q.modules() if isinstance(m, ActQuantizer))
    assert all(not m.training for m in q.modules() if isinstance(m, nn.BatchNorm2d))
    # an epoch freezes only when it begins at or after the fraction: in 1 epoch at 0.5 the ranges track the whole
    # fine-tune (int() froze them from the first step); in 3 epochs, epochs 2 (1.5 <= 2) on, not epoch 1 (1 < 1.5)
    for epochs, epoch, frozen in ((1, 0, False), (3, 1, False), (3, 2, True), (2, 1, True)):
        q = quantize(net, QATConfig(num_calibration=32), torch.randn(32, 1, 28, 28))
        q.train()
        cb(q, epoch, epochs)
        assert all(m.frozen == frozen for m in q.modules() if isinstance(m, ActQuantizer)), (epochs, epoch)


def test_unsupported_layer_and_bad_bits_and_too_few_images():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 2))
    with pytest.raises(QsalError, match=r"layer '1' \(GELU\) is not supported.*skip=\('1',\)"):
        quantize(net, PTQConfig(), torch.randn(32, 1, 28, 28))
    with pytest.raises(QsalError, match="bits=1 is not supported"):
        PACTConfig(bits=1)
    with pytest.raises(QsalError, match="at least 16 images, got 4"):
        quantize(nn.Sequential(nn.Conv2d(1, 4, 3)), PTQConfig(), torch.randn(4, 1, 28, 28))


def test_quantized_checkpoint_round_trips(tmp_path):
    from qsal.checkpoint import load_checkpoint, save_checkpoint
    from qsal.models import create_model

    model = create_model("edge_mbv2", 2, 1).eval()
    x = torch.randn(32, 1, 28, 28)
    for cfg in (PTQConfig(observer="percentile", num_calibration=32), PACTConfig(bits=3, num_calibration=32)):
        q = quantize(model, cfg, x).eval()
        path = save_checkpoint(q, tmp_path / f"{cfg.method}.safetensors", {"arch": q.qsal_arch, "quant": cfg.to_dict()})
        loaded, meta = load_checkpoint(path)
        assert meta["quant"]["method"] == cfg.method
        assert torch.equal(loaded.eval()(x), q(x))


def test_a_version_1_pact_checkpoint_loads_with_the_behaviour_it_was_trained_with(tmp_path):
    from safetensors.torch import load_file, save_file

    from qsal.checkpoint import load_checkpoint, save_checkpoint
    from qsal.models import create_model
    from qsal.quant.graph import act_quantizers

    old = {"method": "pact", "version": 1, "bits": 4, "first_last_bits": 8, "alpha_decay": 1e-4, "alpha_init": None,
           "weight_scheme": "dorefa", "num_calibration": 32, "skip": []}
    cfg = config_from_dict(old)
    assert (cfg.weight_scheme, cfg.weight_per_channel, cfg.quantize_add_inputs, cfg.alpha_lr) == \
        ("tanh_symmetric", "none", True, None)
    x = torch.randn(32, 1, 28, 28)
    q = quantize(create_model("resnet20", 2, 1).eval(), cfg, x).eval()
    path = save_checkpoint(q, tmp_path / "old.safetensors", {"arch": q.qsal_arch, "quant": old})
    state = {k: v for k, v in load_file(str(path)).items() if not k.endswith("alpha_start")}  # as written before
    save_file(state, str(path))
    loaded, _ = load_checkpoint(path)
    assert len(act_quantizers(loaded)) == 32  # add inputs quantized, as then
    assert all(float(p.alpha_start) == float(p.alpha.detach()) for p in act_quantizers(loaded))
    assert torch.equal(loaded.eval()(x), q(x))


@pytest.mark.parametrize("signed", [False, True])
def test_pact_quantize_matches_the_composite_graph_it_replaces_value_and_gradients(signed):
    """``pact_quantize`` (one autograd node) against qsal 0.2's composite PACT graph: same grid values bit for
    bit, same gradients w.r.t. x and alpha (ties x == alpha, where the composite graph split the gradient in
    half, have probability zero here)."""
    from qsal.quant.ste import pact_quantize

    torch.manual_seed(0)
    x = (torch.randn(64, 8, 7, 7) * 3).requires_grad_(True)
    g = torch.randn(64, 8, 7, 7)
    alpha = torch.tensor(2.37, requires_grad=True)
    a = alpha.abs() + 1e-6
    y = torch.maximum(torch.minimum(x, a), -a) if signed else torch.minimum(torch.relu(x), a)
    scale = a / 7
    ref = (torch.round(y / scale) * scale).detach() + (y - y.detach())
    ref_gx, ref_ga = torch.autograd.grad((ref * g).sum(), (x, alpha))
    out = pact_quantize(x, alpha.abs() + 1e-6, 7, signed)
    gx, ga = torch.autograd.grad((out * g).sum(), (x, alpha))
    assert torch.equal(out, ref.detach())
    assert torch.equal(gx, ref_gx)
    assert ga.item() == pytest.approx(ref_ga.item(), rel=1e-5)
    assert (gx == 0).float().mean() > 0.2 and ga.item() != 0  # both masks were exercised


@pytest.mark.parametrize("model_name,qconfig", [("small_cnn", PACTConfig(bits=4, num_calibration=32)),
                                                ("edge_mbv2", PTQConfig(num_calibration=32))])
def test_forward_evaluates_the_weight_grid_once_and_adds_the_exported_bias_grid(model_name, qconfig, monkeypatch):
    """Each quantized layer's forward computes its weight grid once and adds its bias on the grid that the
    exported INT32 bias has (``bias_scale``, the export path): same values bit for bit, same weight gradient."""
    import torch.nn.functional as F

    import qsal.quant.modules as qm
    from qsal.models import create_model

    torch.manual_seed(0)
    q = quantize(create_model(model_name, 2, 1).eval(), qconfig, torch.randn(32, 1, 28, 28))
    layers = [m for m in q.modules() if isinstance(m, qm.QUANT_LAYERS)]
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0].detach())) for m in layers]
    q(torch.randn(4, 1, 28, 28))
    for h in hooks:
        h.remove()
    calls = []
    real = qm.weight_codes
    monkeypatch.setattr(qm, "weight_codes", lambda *a, **k: calls.append(1) or real(*a, **k))
    quantized_biases = 0
    for layer in layers:
        x = inputs[layer]
        calls.clear()
        out = layer(x)
        assert len(calls) == 1  # one pass over the weight per forward
        step = layer.bias_scale()
        w = layer.quantized_weight()
        b = layer.bias if step is None else torch.round(layer.bias / step) * step
        quantized_biases += step is not None
        ref = layer._conv_forward(x, w, b) if isinstance(layer, nn.Conv2d) else F.linear(x, w, b)
        assert torch.equal(out, ref)
        g_out, = torch.autograd.grad(out.square().sum(), layer.weight)
        g_ref, = torch.autograd.grad(ref.square().sum(), layer.weight)
        assert torch.equal(g_out, g_ref)
    assert quantized_biases >= 2  # the check reached layers whose bias is on the INT32 grid


@pytest.mark.parametrize("scheme", ["symmetric", "dorefa", "tanh_symmetric", "symmetric+mse"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("autocast", [False, True])
def test_forward_weight_and_bias_are_the_exported_integer_ones(scheme, per_channel, autocast):
    """The weight and bias a layer's forward uses are exactly ``integer_weight``'s codes x scale and the bias on
    the ``s_in x s_w`` INT32 grid, for every scheme, per-channel or per-tensor, with folded BN scales of both
    signs (a negative gamma flips the codes), with and without bf16 autocast around the forward."""
    from qsal.quant.modules import QuantLinear

    torch.manual_seed(0)
    scheme, _, clip = scheme.partition("+")
    conv = QuantConv2d(4, 6, 3, weight_bits=3, per_channel=per_channel, scheme=scheme, weight_clip=clip or "max")
    lin = QuantLinear(8, 6, weight_bits=3, per_channel=per_channel, scheme=scheme, weight_clip=clip or "max")
    aq = ActQuantizer(bits=8)
    aq.start_observing()
    aq(torch.rand(256, 8))
    aq.finish_observing()
    for layer in (conv, lin):
        with torch.no_grad():
            layer.bn_scale.copy_(torch.tensor([1.5, -0.5, 0.75, 2.0, -1.0, 0.25]))
        layer.__dict__["input_quantizer"] = aq
        codes, scale = layer.integer_weight()
        w = torch.from_numpy(codes.astype(np.float32) * scale.reshape(-1, *([1] * (codes.ndim - 1))))
        step = torch.tensor(aq.export_params()["scale"], dtype=torch.float32) * torch.from_numpy(scale)
        b = torch.round(layer.bias.detach() / step) * step
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            w_fwd, b_fwd = layer._quantized_weight_and_bias()
        assert torch.equal(w_fwd.detach(), w) and torch.equal(b_fwd.detach(), b)
        assert torch.equal(layer.bias_scale(), step)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_scale_tensor_is_the_exported_scale_bit_for_bit(bits):
    # The quantized bias's grid reads the input step without a host copy (GPU speed); it must still be exactly the
    # float the ONNX file stores, or the PyTorch model and the deployed integer kernel add different biases.
    gen = torch.Generator().manual_seed(bits)
    for alpha in (torch.rand(200, generator=gen) * 20).tolist() + [1e-3, 0.1, 6.0, 10.0]:
        for signed in (False, True):
            q = PACTQuantizer(bits, alpha=alpha)
            q.signed.fill_(signed)
            q._signed_host = None
            t = q.scale_tensor()
            assert t.dtype == torch.float32 and t.shape == ()
            assert t.item() == torch.tensor(q.export_params()["scale"], dtype=torch.float32).item()
    a = ActQuantizer(bits)
    a.set_range(-0.37, 5.3)
    assert a.scale_tensor().item() == torch.tensor(a.export_params()["scale"], dtype=torch.float32).item()


def test_pact_signedness_follows_a_loaded_state():
    # is_signed caches the buffer (a GPU read per forward waited for the device); a load must not leave it stale
    q = PACTQuantizer(4)
    assert q.is_signed is False and q.n_steps == 15
    signed = PACTQuantizer(4)
    signed.signed.fill_(True)
    q.load_state_dict(signed.state_dict())
    assert q.is_signed is True and q.n_steps == 7
    assert float(q(torch.tensor([-20.0])).detach()) < 0
    q.start_observing()
    q(torch.rand(100))
    q.finish_observing()  # non-negative values: unsigned again
    assert q.is_signed is False and q.n_steps == 15
