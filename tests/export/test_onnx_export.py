import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bn_models import model_with_bn_stats
from qsal.errors import QsalError
from qsal.export import export_onnx
from qsal.models import create_model
from qsal.quant import PACTConfig, PTQConfig, WeightOnlyConfig, quantize

META = {"data": {"name": "breastmnist", "task": "binary-class", "mean": [0.5], "std": [0.5], "labels": ["m", "b"]}}



def _ort(path, x):
    """As qsal runs the file (``runtime.session_options``: exact u8 x u8 kernels where the fast ones saturate)."""
    from qsal.runtime import session_options

    sess = ort.InferenceSession(str(path), session_options()[0], providers=["CPUExecutionProvider"])
    return sess.run(None, {"pixel_values": x.numpy()})[0]


@pytest.mark.parametrize("name", ["small_cnn", "resnet20", "edge_mbv2"])
def test_fp32_onnx_logits_match_pytorch(name, tmp_path):
    m = model_with_bn_stats(name)
    x = torch.randn(8, 1, 28, 28)
    path = export_onnx(m, tmp_path / "m.onnx", input_shape=(1, 28, 28), meta=META, check_untrained=False)
    np.testing.assert_allclose(_ort(path, x), m(x).detach().numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["small_cnn", "edge_mbv2"])
def test_int8_qdq_logits_match_fake_quant_model_and_weights_are_integers(name, tmp_path):
    m = model_with_bn_stats(name)
    x = torch.randn(64, 1, 28, 28)
    q = quantize(m, PTQConfig(num_calibration=64), x)
    path = export_onnx(q, tmp_path / "q.onnx", input_shape=(1, 28, 28), meta=META, check_untrained=False)
    ref, got = q(x).detach().numpy(), _ort(path, x)
    # stated tolerance: integer requantization in the runtime may move a code by one step per layer
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()
    inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    weights = [i for n, i in inits.items() if n.endswith("_weight_q")]
    assert weights and all(i.data_type == onnx.TensorProto.INT8 for i in weights)
    assert not any(n.endswith("_weight") for n in inits)  # no FP32 copy of a quantized weight


def test_int8_graph_fuses_to_integer_kernels(tmp_path):
    m = model_with_bn_stats("small_cnn")
    x = torch.randn(64, 1, 28, 28)
    path = export_onnx(quantize(m, PTQConfig(num_calibration=64), x), tmp_path / "q.onnx", input_shape=(1, 28, 28), check_untrained=False)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert "QLinearConv" in ops and "QGemm" in ops


def test_file_sizes_int8_and_int4(tmp_path):
    m = model_with_bn_stats("small_cnn")
    x = torch.randn(32, 1, 28, 28)
    fp32 = export_onnx(m, tmp_path / "f.onnx", input_shape=(1, 28, 28), check_untrained=False).stat().st_size
    int8 = export_onnx(quantize(m, PTQConfig(num_calibration=32), x), tmp_path / "8.onnx", input_shape=(1, 28, 28), check_untrained=False).stat().st_size
    pact4 = export_onnx(quantize(m, PACTConfig(bits=4, num_calibration=32), x), tmp_path / "4.onnx",
                        input_shape=(1, 28, 28), check_untrained=False).stat().st_size
    assert int8 <= 0.26 * fp32
    assert pact4 <= 0.14 * fp32


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_low_bit_pact_export_matches_and_packs_int4(bits, tmp_path):
    m = model_with_bn_stats("small_cnn")
    x = torch.randn(32, 1, 28, 28)
    q = quantize(m, PACTConfig(bits=bits, num_calibration=32), x)
    path = export_onnx(q, tmp_path / "p.onnx", input_shape=(1, 28, 28), check_untrained=False)
    inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    assert inits["fc1_weight_q"].data_type == onnx.TensorProto.INT4
    assert len(inits["fc1_weight_q"].raw_data) == 128 * 9216 // 2  # two codes per byte
    ref, got = q(x).detach().numpy(), _ort(path, x)
    # Stated tolerance below 8 bits: the same codes, but a float-summation difference can flip a value
    # sitting on a rounding boundary by one (coarse) step, so: median error <= 0.5 % and max <= 5 % of
    # the logit scale.
    scale = np.abs(ref).max()
    assert np.median(np.abs(got - ref)) <= 5e-3 * scale
    assert np.abs(got - ref).max() <= 5e-2 * scale


def test_weight_only_int4_is_exact(tmp_path):
    m = model_with_bn_stats("edge_mbv2")
    q = quantize(m, WeightOnlyConfig(bits=4))
    x = torch.randn(4, 1, 28, 28)
    path = export_onnx(q, tmp_path / "w.onnx", input_shape=(1, 28, 28), check_untrained=False)
    np.testing.assert_allclose(_ort(path, x), q(x).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_nan_model_is_refused_and_no_file_is_written(tmp_path):
    m = model_with_bn_stats()
    with torch.no_grad():
        m.fc2.weight[0, 0] = float("nan")
    with pytest.raises(QsalError, match="fc2.weight holds NaN"):
        export_onnx(m, tmp_path / "bad.onnx", input_shape=(1, 28, 28), check_untrained=False)
    assert list(tmp_path.iterdir()) == []


def test_untrained_model_is_refused():
    with pytest.raises(QsalError, match="never trained"):
        export_onnx(create_model("small_cnn", 2, 1), "/tmp/never.onnx", input_shape=(1, 28, 28))


@pytest.mark.parametrize("shape, message", [
    ((28, 28), "input_shape must be \\(C, H, W\\) of one image"),
    ((3, 28, 28), "input_shape \\(3, 28, 28\\) has 3 channel\\(s\\) but the model takes 1"),
    ((1, 64, 64), "the model does not take images of input_shape \\(1, 64, 64\\)"),  # its flatten is 28 px's
])
def test_an_input_shape_the_model_does_not_take_is_refused_before_a_file_is_written(tmp_path, shape, message):
    """(3, 28, 28) for a one-channel model wrote a file that failed only at predict; (1, 64, 64) raised onnxruntime's
    Fail; (28, 28) a ValueError from unpacking."""
    with pytest.raises(QsalError, match=message):
        export_onnx(create_model("small_cnn", 2, 1), tmp_path / "m.onnx", input_shape=shape, check_untrained=False)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 2))
    with pytest.raises(QsalError, match="the model does not take images of input_shape \\(3, 28, 28\\)"):
        export_onnx(net, tmp_path / "n.onnx", input_shape=(3, 28, 28))  # no recorded architecture: its layers tell
    assert not list(tmp_path.iterdir())
