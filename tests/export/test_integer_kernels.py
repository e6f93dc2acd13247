"""Every 2-8-bit artifact runs on integer kernels in bare onnxruntime with default session options.

The check is on onnxruntime's own optimised graph (SessionOptions.optimized_model_filepath): no float
Conv/Gemm/MatMul/Add may survive. These tests fail if a future change to the export (or to the
quantizer placement) loses integer-kernel fusion, e.g. for PACT-4.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bn_models import model_with_bn_stats
from qsal.export import export_onnx
from qsal.export.fusion import FLOAT_COMPUTE_OPS
from qsal.models import list_models
from qsal.quant import PACTConfig, PTQConfig, QATConfig, WeightOnlyConfig, quantize
from qsal.runtime import Runtime, read_metadata

CONFIGS = {"ptq8": PTQConfig(num_calibration=32), "qat8": QATConfig(bits=8, num_calibration=32),
           "qat3": QATConfig(bits=3, num_calibration=32), "pact8": PACTConfig(bits=8, num_calibration=32),
           "pact4": PACTConfig(bits=4, num_calibration=32), "pact2": PACTConfig(bits=2, num_calibration=32)}



def _export(name, method, tmp_path, x=None):
    x = torch.randn(32, 1, 28, 28) if x is None else x
    q = quantize(model_with_bn_stats(name), CONFIGS[method], x)
    return q, export_onnx(q, tmp_path / f"{name}_{method}.onnx", input_shape=(1, 28, 28), check_untrained=False)


def _optimized_ops(path, tmp_path):
    """Op types after onnxruntime's default optimisation, saved and read back independently of qsal."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


# Fast: every bit-width on small_cnn and PACT-4 (the regression guard of issue 10) on every model;
# the rest of the registry x bit-width matrix runs with -m slow.
MATRIX = [pytest.param(n, m, marks=() if n == "small_cnn" or m == "pact4" else pytest.mark.slow)
          for n in list_models() for m in CONFIGS]


@pytest.mark.parametrize("name,method", MATRIX)
def test_every_bit_width_fuses_to_integer_kernels_in_a_default_session(name, method, tmp_path):
    _, path = _export(name, method, tmp_path)
    ops = _optimized_ops(path, tmp_path)
    float_ops = sorted(op for op in ops if op in FLOAT_COMPUTE_OPS)
    assert float_ops == [], f"{name} {method}: float ops left after optimisation: {float_ops}"
    assert "QLinearConv" in ops
    assert read_metadata(path)["integer_kernels"] is True  # the metadata tells the truth
    assert read_metadata(path)["weights_dequantized_per_call"] == 0  # no weight dequantized per call


def test_pact4_resnet18_is_fused_packed_int4_and_small(tmp_path):
    m = model_with_bn_stats("resnet18")
    fp32 = export_onnx(m, tmp_path / "fp32.onnx", input_shape=(1, 28, 28), check_untrained=False)
    q, path = _export("resnet18", "pact4", tmp_path)
    ops = _optimized_ops(path, tmp_path)
    assert ops.count("QLinearConv") == sum(isinstance(mod, torch.nn.Conv2d) for mod in m.modules())
    assert "QLinearAdd" in ops and "QGemm" in ops
    assert path.stat().st_size <= 0.135 * fp32.stat().st_size
    inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    weights = [i for n, i in inits.items() if n.endswith("_weight_q")]
    int4 = [i for i in weights if i.data_type == onnx.TensorProto.INT4]
    assert len(int4) == len(weights) - 2  # all but the 8-bit first and last layers


def test_pact4_small_cnn_file_is_at_most_0135_of_fp32(tmp_path):
    fp32 = export_onnx(model_with_bn_stats("small_cnn"), tmp_path / "fp32.onnx", input_shape=(1, 28, 28), check_untrained=False)
    _, path = _export("small_cnn", "pact4", tmp_path)
    assert path.stat().st_size <= 0.135 * fp32.stat().st_size


def test_weight_storage_follows_the_codes_int4_when_they_fit_else_int8(tmp_path):
    # 4-bit symmetric codes span [-7, 7] -> INT4 (through a Cast that onnxruntime folds);
    # 5-bit codes span [-15, 15] -> INT8, whatever the nominal bit-width.
    for bits, dtype in ((4, onnx.TensorProto.INT4), (5, onnx.TensorProto.INT8)):
        q = quantize(model_with_bn_stats("small_cnn"), QATConfig(bits=bits, num_calibration=32), torch.randn(32, 1, 28, 28))
        path = export_onnx(q, tmp_path / f"q{bits}.onnx", input_shape=(1, 28, 28), check_untrained=False)
        inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
        assert inits["conv2_weight_q"].data_type == dtype
        codes = q.conv2.integer_weight()[0]
        assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1


@pytest.mark.parametrize("method,bits", [("pact2", 2), ("qat3", 3), ("pact4", 4)])
def test_k_bit_activations_keep_exactly_2_to_the_k_levels(method, bits, tmp_path):
    q, path = _export("small_cnn", method, tmp_path)
    model = onnx.load(str(path))
    # every activation tensor a conv or gemm reads: the DequantizeLinear in front of it
    producers = {n.output[0]: n for n in model.graph.node}
    reads = {}
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm") and producers.get(n.input[0], n).op_type == "DequantizeLinear":
            reads[n.input[0]] = n.name
    assert len(reads) == 4  # conv1, conv2, fc1, fc2
    model.graph.output.extend(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in reads)
    x = torch.randn(64, 1, 28, 28) * 3
    outs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(list(reads), {"pixel_values": x.numpy()})
    for (tensor, reader), values in zip(reads.items(), outs):
        edge = method.startswith("pact") and reader.startswith(("conv1", "fc2"))  # 8-bit first/last layer inputs
        k = 8 if edge else bits
        levels = np.unique(values)
        assert len(levels) <= 2 ** k, f"{reader} reads {len(levels)} levels > 2^{k}"
        if not edge:
            assert len(levels) >= 2 ** k - 1, f"{reader} reads only {len(levels)} levels"  # the clip is not too tight


def test_io_names_and_no_absolute_paths_in_metadata(tmp_path):
    m = model_with_bn_stats("resnet20")
    meta = {"checkpoint": "/home/someone/runs/best.safetensors", "data": {"name": "breastmnist", "mean": [0.5], "std": [0.5]}}
    path = export_onnx(m, tmp_path / "m.onnx", input_shape=(1, 28, 28), meta=meta, check_untrained=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["pixel_values"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    info = read_metadata(path)
    assert info["checkpoint"] == "best.safetensors"
    assert info["integer_kernels"] is False  # an FP32 export has none
    assert str(tmp_path) not in json.dumps(info) and "/home/" not in json.dumps(info)


def test_runtime_runs_the_artifact_with_default_session_options_but_where_integer_kernels_saturate(tmp_path,
                                                                                                   monkeypatch):
    import qsal.runtime

    q, path = _export("small_cnn", "pact4", tmp_path)
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    bare = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})[0]
    monkeypatch.setattr(qsal.runtime, "integer_kernels_saturate", lambda: False)
    rt = Runtime(path, threads=1)
    np.testing.assert_array_equal(rt.run_normalized(x), bare)
    assert rt.u8u8_kernels is None
    with pytest.raises(RuntimeError, match="does not have configuration"):  # no special session settings
        rt.session.get_session_options().get_session_config_entry("session.x64quantprecision")
    # a CPU whose fast integer kernels saturate (x86-64 without VNNI): the 8-bit layers run on the exact u8 x u8 ones
    monkeypatch.setattr(qsal.runtime, "integer_kernels_saturate", lambda: True)
    rt = Runtime(path, threads=1)
    assert rt.session.get_session_options().get_session_config_entry("session.x64quantprecision") == "1"
    assert rt.u8u8_kernels == qsal.runtime.SATURATION_NOTE
    from qsal.export.bench import bench_onnx

    assert bench_onnx(path, threads=(1,), batches=(1,), seconds=0.1)["u8u8_kernels"] == rt.u8u8_kernels
    with torch.no_grad():
        np.testing.assert_allclose(rt.run_normalized(x), q(torch.from_numpy(x)).numpy(), atol=1e-5)
    monkeypatch.setenv("QSAL_INTEGER_KERNELS", "1")  # the user's choice: the fast kernels anyway, and recorded so
    chosen = Runtime(path, threads=1)
    assert chosen.u8u8_kernels is None and chosen.kernel_notes == {"saturating_kernels": qsal.runtime.OVERRIDE_NOTE}
    assert bench_onnx(path, threads=(1,), batches=(1,), seconds=0.1)["saturating_kernels"] == qsal.runtime.OVERRIDE_NOTE
    from qsal.errors import QsalError

    monkeypatch.setenv("QSAL_INTEGER_KERNELS", "yes")  # not a value it knows: said, not ignored
    with pytest.raises(QsalError, match="QSAL_INTEGER_KERNELS='yes': set it to 1"):
        Runtime(path, threads=1)


@pytest.mark.skipif(not __import__("qsal.runtime").runtime.integer_kernels_saturate(),
                    reason="this CPU has VNNI: onnxruntime's integer kernels sum in int32")
def test_on_a_cpu_without_vnni_the_fast_integer_kernels_saturate_which_is_why_qsal_runs_the_exact_ones(tmp_path):
    """Measured on an AMD EPYC without VNNI: the fused 8-bit file decided 6 % of images otherwise than the model it
    was exported from. If a newer onnxruntime stops saturating, this fails: drop the fallback then. qsal's session
    (session.x64quantprecision) runs the same integer graph on the u8 x u8 kernels, and computes what PyTorch does."""
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    q = quantize(model_with_bn_stats("resnet20"), PTQConfig(num_calibration=32), x)
    path = export_onnx(q, tmp_path / "r20.onnx", input_shape=(1, 28, 28), check_untrained=False)
    fused = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x.numpy()})
    fused = fused[0]
    with torch.no_grad():
        ref = q(x).numpy()
    fused_err = np.abs(fused - ref) / np.abs(ref).max()
    deployed = Runtime(path)
    assert deployed.session.get_session_options().get_session_config_entry("session.x64quantprecision") == "1"
    qsal_err = np.abs(deployed.run_normalized(x.numpy()) - ref) / np.abs(ref).max()
    # exact kernels: rounding only (a code at a rounding boundary can flip); fast ones: the int16 sums clipped
    assert np.median(qsal_err) < 1e-5 and np.median(fused_err) > 100 * max(np.median(qsal_err), 1e-7)
    # most fast-kernel outputs are off by more than 0.1 % of the largest logit; under a third of the exact ones are
    assert np.mean(fused_err > 1e-3) > 0.8 and np.mean(qsal_err > 1e-3) < 0.4


def test_a_layer_kept_fp32_after_a_pool_stays_float_in_onnxruntime(tmp_path):
    """skip=('fc1',): small_cnn's fc1 reads max-pool -> flatten of a quantized tensor. The exporter's exact
    re-quantization there fed it a DequantizeLinear, and onnxruntime's WeightBiasQuantization then ran it as
    a per-tensor INT8 QGemm: not the FP32 layer the model trained, its card described, nor the PyTorch logits."""
    x = torch.randn(32, 1, 28, 28)
    q = quantize(model_with_bn_stats("small_cnn"), PTQConfig(num_calibration=32, skip=("fc1",)), x)
    path = export_onnx(q, tmp_path / "skip_fc1.onnx", input_shape=(1, 28, 28), check_untrained=False)
    ops = _optimized_ops(path, tmp_path)
    assert ops.count("QGemm") == 1 and ops.count("Gemm") + ops.count("FusedGemm") == 1  # fc2 integer, fc1 float
    meta = read_metadata(path)
    assert meta["fp32_layers_int8_in_onnxruntime"] == [] and meta["integer_kernels"] is False
    with torch.no_grad():
        expected = q(x).numpy()
    got = Runtime(path).run_normalized(x.numpy())  # as qsal runs it (exact kernels where fast ones saturate)
    assert np.abs(got - expected).max() < 1e-4


def test_the_exact_kernels_note_covers_every_file_with_8_bit_integer_layers_and_only_those(tmp_path, monkeypatch):
    """On a CPU whose fast integer kernels saturate, a file with some layers kept in FP32 ("integer + float") runs
    its 8-bit layers on the exact kernels too, and must say so; an FP32 or weight-only file has nothing to say."""
    import qsal.runtime

    monkeypatch.setattr(qsal.runtime, "integer_kernels_saturate", lambda: True)
    x = torch.randn(32, 1, 28, 28)
    models = {"skip": quantize(model_with_bn_stats("small_cnn"), PTQConfig(num_calibration=32, skip=("fc1",)), x),
              "pact4": quantize(model_with_bn_stats("small_cnn"), CONFIGS["pact4"], x),
              "weight_only": quantize(model_with_bn_stats("small_cnn"), WeightOnlyConfig(), x),
              "fp32": model_with_bn_stats("small_cnn")}
    for name, model in models.items():
        path = export_onnx(model, tmp_path / f"{name}.onnx", input_shape=(1, 28, 28), check_untrained=False)
        # the graph's own answer: QDQ fusion has integer layers to make where an activation is quantized
        quantizes = any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)
        assert quantizes == (name in ("skip", "pact4")), name
        assert read_metadata(path)["integer_kernels"] is (name == "pact4"), name
        note = Runtime(path).u8u8_kernels
        assert note == (qsal.runtime.SATURATION_NOTE if quantizes else None), name
        assert qsal.runtime.has_integer_layers({**read_metadata(path), "quantization": None,
                                                "quant": {"method": "ptq" if quantizes else "weight_only"}}) is quantizes


def test_a_layer_kept_fp32_that_onnxruntime_quantizes_is_named_in_the_metadata(tmp_path):
    """A skipped conv fed straight by a quantized tensor (a ResNet block's first conv: its input also feeds the
    shortcut) reads a DequantizeLinear in any QDQ graph; onnxruntime then quantizes its weights itself. The
    file cannot prevent that, so its metadata says so (the model card quotes it)."""
    q = quantize(model_with_bn_stats("resnet20"), PTQConfig(num_calibration=32, skip=("layers.0.conv1",)),
                 torch.randn(32, 1, 28, 28))
    path = export_onnx(q, tmp_path / "skip_conv.onnx", input_shape=(1, 28, 28), check_untrained=False)
    assert read_metadata(path)["fp32_layers_int8_in_onnxruntime"] == ["layers.0.conv1"]


@pytest.mark.parametrize("name,config,bound", [
    ("w8a8", PTQConfig(num_calibration=32), 255 * 2 * 127),
    ("w7a8", PTQConfig(num_calibration=32, weight_bits=7), 255 * 2 * 63),
    ("w8a7", PTQConfig(num_calibration=32, act_bits=7), 127 * 2 * 127),
    ("w4a4", PTQConfig(num_calibration=32, weight_bits=4, act_bits=4), 15 * 2 * 7),
    ("pact4", CONFIGS["pact4"], 255 * 2 * 127),  # its first and last layers stay 8-bit
])
def test_the_int16_pair_sum_bound_is_read_off_the_optimised_graph(tmp_path, name, config, bound):
    """x86-64 without VNNI adds two u8 x s8 products in int16 with saturation: the bound export records is the
    largest such sum any integer conv/gemm can form (activation codes up to 255 or their k-bit Clip; the weight codes
    themselves), and it alone decides whether the file runs on integer kernels there."""
    import qsal.runtime

    q = quantize(model_with_bn_stats("small_cnn"), config, torch.randn(32, 1, 28, 28))
    path = export_onnx(q, tmp_path / f"{name}.onnx", input_shape=(1, 28, 28), check_untrained=False)
    meta = read_metadata(path)
    assert meta["int16_pair_sum_bound"] == bound
    assert qsal.runtime.sums_fit_int16(meta) is (bound <= 32767)


def test_a_layer_onnxruntime_quantizes_itself_counts_at_its_8_bit_weights(tmp_path):
    """A kept-FP32 conv read straight from a quantized tensor gets per-tensor INT8 weights from onnxruntime at load:
    7-bit weights elsewhere do not make such a file safe from saturation."""
    q = quantize(model_with_bn_stats("resnet20"), PTQConfig(num_calibration=32, weight_bits=7,
                                                            skip=("layers.0.conv1",)), torch.randn(32, 1, 28, 28))
    path = export_onnx(q, tmp_path / "skip.onnx", input_shape=(1, 28, 28), check_untrained=False)
    meta = read_metadata(path)
    assert meta["fp32_layers_int8_in_onnxruntime"] == ["layers.0.conv1"] and meta["int16_pair_sum_bound"] > 32767


@pytest.mark.parametrize("name", list_models())
def test_7_bit_weights_run_on_integer_kernels_where_8_bit_ones_saturate_and_match_pytorch(tmp_path, monkeypatch, name):
    """Where the integer kernels saturate (monkeypatched: on this CPU or not), a W7A8 file keeps QDQ fusion on, and
    its integer kernels compute what its PyTorch model does. On a CPU without VNNI this runs the saturating kernels
    themselves: were the bound wrong, the logits would be off by percent, as the W8A8 test above shows."""
    import qsal.runtime

    monkeypatch.setattr(qsal.runtime, "integer_kernels_saturate", lambda: True)
    x = torch.randn(64, 1, 28, 28)
    q = quantize(model_with_bn_stats(name), PTQConfig(num_calibration=32, weight_bits=7), x)
    path = export_onnx(q, tmp_path / f"{name}_w7.onnx", input_shape=(1, 28, 28), check_untrained=False)
    rt = Runtime(path)
    assert rt.u8u8_kernels is None
    with pytest.raises(RuntimeError, match="does not have configuration"):  # the fast u8 x s8 kernels throughout
        rt.session.get_session_options().get_session_config_entry("session.x64quantprecision")
    with torch.no_grad():
        ref = q(x).numpy()
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    dequantized = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    deq_err = np.abs(dequantized.run(None, {"pixel_values": x.numpy()})[0] - ref) / np.abs(ref).max()
    err = np.abs(rt.run_normalized(x.numpy()) - ref) / np.abs(ref).max()
    # as close as the dequantized graph (the float path): rounding only, where a code at a
    # rounding boundary can flip (ResNet-18's 20 layers of untrained weights compound such flips to .4 % either way);
    # saturated sums were 1000x off on the small nets
    assert np.median(err) <= 2 * np.median(deq_err) + 1e-5 and err.max() <= 2 * deq_err.max() + 1e-3
