"""ONNX export: FP32 graphs and QDQ graphs whose weights are stored as integers.

The emitter walks the model's ``torch.fx`` graph (the same graph the quantizers were placed on), so
every QuantizeLinear/DequantizeLinear pair sits where the PyTorch model fake-quantizes, with the
same scale and zero point: ONNX Runtime fuses ``DQ -> Conv -> Q`` into integer kernels (QLinearConv,
QGemm, QLinearAdd) at every bit-width, in a session with default options.

Weights: codes and per-channel scales come from the layer's ``integer_weight()`` (codes * scale is
the fake-quant weight, BatchNorm already folded). Codes that all fit ``[-8, 7]`` are stored as an
INT4 initializer (opset 21, two per byte; ONNX has no 2- or 3-bit type, so 2/3-bit codes use 4-bit
containers), others as INT8. An INT4 weight reaches ``DequantizeLinear`` through a ``Cast`` to INT8,
which onnxruntime constant-folds at session start, so the conv sees an INT8 weight it can fuse.
Biases of layers fed by a quantized tensor are INT32 with scale ``s_in * s_w`` (what integer
kernels take).

Activations: uint8 codes. Below 8 bits (or for a signed PACT tensor, whose codes are
``zp +- (2^(k-1) - 1)``) a ``Clip`` on the *codes*, between QuantizeLinear and DequantizeLinear,
keeps exactly the ``2^k`` levels of the PyTorch model and leaves the ``DQ -> op -> Q`` patterns
intact for fusion (a float Clip after DQ would block them; one before Q is removed by onnxruntime's
ClipQuantFusion, which assumes the full uint8 range).

I/O names are fixed: input ``pixel_values`` (float32, N x C x H x W, normalised), output ``logits``.
The metadata's ``integer_kernels`` is read off onnxruntime's optimised graph (``qsal.export.fusion``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn

from qsal._atomic import atomic_path
from qsal.errors import QsalError, is_integer
from qsal.export.fusion import (float_compute_ops, int16_pair_sum_bound, optimized_graph, requantized_by_runtime,
                               weights_dequantized_per_call)
from qsal.provenance import environment
from qsal.quant.graph import ADD_FUNCTIONS, fold_batchnorm, trace
from qsal.quant.modules import ActQuantizer, PACTQuantizer, QuantConv2d, QuantLinear

__all__ = ["export_onnx", "OPSET", "INPUT_NAME", "OUTPUT_NAME"]

OPSET = 21
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"


class _Emitter:
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: dict[fx.Node, str] = {}
        self.qparams: dict[fx.Node, dict] = {}
        self.relu6_inputs: dict[fx.Node, str] = {}
        self.deferred_clip: set[fx.Node] = set()
        # a grid-preserving op's output before its exact re-quantization: what a layer kept in FP32 (skip) reads,
        # since onnxruntime turns a float Conv/Gemm fed straight by a DequantizeLinear into an INT8 per-tensor
        # kernel (its WeightBiasQuantization optimiser), which is not the layer the model trained or describes
        self.float_reads: dict[fx.Node, str] = {}
        self.float_layers: dict[str, str] = {}  # plain Conv/Linear in a quantized graph (skip): layer -> ONNX node
        self.counter = 0

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def init(self, name: str, array: np.ndarray, dtype: int | None = None) -> str:
        if dtype == TensorProto.INT4:
            self.inits.append(helper.make_tensor(name, dtype, array.shape, _pack_int4(array), raw=True))
        else:
            self.inits.append(numpy_helper.from_array(array, name))
        return name

    def emit(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def qdq(self, x: str, p: dict, base: str) -> str:
        scale = np.float32(p["scale"])
        zp = int(p["zero_point"])
        s = self.init(self.fresh(base + "_scale"), np.array(scale, np.float32))
        z = self.init(self.fresh(base + "_zp"), np.array(zp, np.uint8))
        q = self.emit("QuantizeLinear", [x, s, z], base + "_q")
        lo, hi = _code_range(p, scale, zp)
        if (lo, hi) != (0, 255):
            # Keep the k-bit levels by clipping the uint8 codes themselves: integer kernels then read
            # exactly the codes the PyTorch model uses.
            lo_c = self.init(self.fresh(base + "_code_lo"), np.array(lo, np.uint8))
            hi_c = self.init(self.fresh(base + "_code_hi"), np.array(hi, np.uint8))
            q = self.emit("Clip", [q, lo_c, hi_c], base + "_codes")
        return self.emit("DequantizeLinear", [q, s, z], base + "_dq")

    def drop_redundant_relu6(self, src: fx.Node, x: str, p: dict) -> str:
        """Skip a ReLU6 whose only reader is a quantizer with codes inside [0, 6]: the code Clip already
        bounds the values, the result is identical, and the float Clip would keep the conv in front of
        it from fusing to an integer kernel (onnxruntime drops such a Clip only for full uint8 ranges)."""
        if src not in self.relu6_inputs or len(src.users) != 1:
            return x
        scale, zp = np.float32(p["scale"]), int(p["zero_point"])
        lo, hi = _code_range(p, scale, zp)
        if lo < zp or (hi - zp) * float(scale) > 6.0:
            return x
        clip = next(n for n in self.nodes if list(n.output) == [x])
        self.nodes.remove(clip)
        self.inits = [t for t in self.inits if t.name not in clip.input[1:]]
        return self.relu6_inputs[src]

    def layer_params(self, node: fx.Node, mod: nn.Module) -> tuple[str, str | None]:
        base = node.target.replace(".", "_")
        if isinstance(mod, (QuantConv2d, QuantLinear)) and mod.quant_weights:
            codes, scale = mod.integer_weight()
            codes = np.asarray(codes)
            if codes.min() < -128 or codes.max() > 127:
                raise QsalError(f"layer {node.target}: weight codes span [{codes.min()}, {codes.max()}], "
                                "which does not fit INT8 storage")
            scale = np.asarray(scale, np.float32).reshape(-1)
            w_q = base + "_weight_q"
            if codes.min() >= -8 and codes.max() <= 7:
                self.init(w_q, codes.astype(np.int8), TensorProto.INT4)
                w_q = self.emit("Cast", [w_q], base + "_weight_int8", to=TensorProto.INT8)  # folded at load
            else:
                self.init(w_q, codes.astype(np.int8))
            w_s = self.init(base + "_weight_scale", scale)
            w_zp = self.init(base + "_weight_zp", np.zeros(scale.shape, np.int8))
            w = self.emit("DequantizeLinear", [w_q, w_s, w_zp], base + "_weight", axis=0)
            if mod.bias is None:
                return w, None
            b = mod.bias.detach().numpy().astype(np.float32)
            step = mod.bias_scale()
            if step is not None:
                # INT32 bias on the accumulator's grid (s_in * s_w): what QLinearConv / QGemm take, and
                # the grid the PyTorch layer already rounds its bias to (QuantConv2d.quantized_bias).
                b_scale = step.numpy().astype(np.float32)
                b_codes = np.round(b / b_scale).clip(-2 ** 31, 2 ** 31 - 1).astype(np.int32)
                bq = self.init(base + "_bias_q", b_codes)
                bs = self.init(base + "_bias_scale", b_scale)
                bz = self.init(base + "_bias_zp", np.zeros(b_scale.shape, np.int32))
                return w, self.emit("DequantizeLinear", [bq, bs, bz], base + "_bias", axis=0)
            return w, self.init(base + "_bias", b)
        w = self.init(base + "_weight", mod.weight.detach().numpy().astype(np.float32) *
                      (mod.bn_scale.view(-1, *[1] * (mod.weight.dim() - 1)).numpy() if hasattr(mod, "bn_scale") else 1))
        return w, (self.init(base + "_bias", mod.bias.detach().numpy().astype(np.float32)) if mod.bias is not None else None)

    def run(self) -> str:
        out_name = None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.names[node] = INPUT_NAME
            elif node.op == "output":
                out_name = self.names[node.args[0]]
            elif node.op == "call_module":
                self.module(node, self.gm.get_submodule(node.target))
            elif node.op == "call_function" and node.target in ADD_FUNCTIONS or \
                    node.op == "call_method" and node.target == "add":
                a, b = (self.names[n] for n in node.args[:2])
                self.names[node] = self.emit("Add", [a, b], node.name)
            elif node.target in (torch.flatten, "flatten"):
                self.flatten(node)
            elif node.target in (torch.relu, nn.functional.relu, "relu"):
                self.names[node] = self.emit("Relu", [self.names[node.args[0]]], node.name)
            else:
                raise QsalError(f"ONNX export does not support {node.op} {node.target} ({node.name})")
        return out_name

    def passthrough_qdq(self, node: fx.Node, out: str) -> None:
        # A grid-preserving op on a quantized tensor is re-quantized with the same parameters so the
        # runtime can keep it in integers (DQ -> MaxPool -> Q fuses to an integer MaxPool).
        p = self.qparams.get(node.args[0])
        if p is not None:
            if node.args[0] not in self.deferred_clip:  # values already on the grid: the re-quantization is exact
                self.float_reads[node] = out
            out = self.qdq(out, p if node.args[0] in self.deferred_clip else {**p, "clip": None}, node.name)
            self.qparams[node] = p
        self.names[node] = out

    def flatten(self, node: fx.Node) -> None:
        self.passthrough_qdq(node, self.emit("Flatten", [self.names[node.args[0]]], node.name, axis=1))

    def module(self, node: fx.Node, mod: nn.Module) -> None:
        x = self.names[node.args[0]]
        if isinstance(mod, (ActQuantizer, PACTQuantizer)):
            if mod.mode == "off":
                self.names[node] = x
                self.qparams.pop(node, None)
                return
            p = mod.export_params()
            x = self.drop_redundant_relu6(node.args[0], x, p)
            if p["clip"] is not None and node.users and all(
                    u.op == "call_module" and isinstance(self.gm.get_submodule(u.target), nn.MaxPool2d) for u in node.users):
                # Read only by max-pools: clip the codes after pooling instead (max commutes with a
                # monotone clip, so the codes are the same), where the tensor is smaller and the pool
                # can stay in onnxruntime's fused NHWC layout.
                self.deferred_clip.add(node)
                self.names[node] = self.qdq(x, {**p, "clip": None}, node.name)
            else:
                self.names[node] = self.qdq(x, p, node.name)
            self.qparams[node] = p
        elif isinstance(mod, (nn.Conv2d, nn.Linear)) and not isinstance(mod, (QuantConv2d, QuantLinear)) and self.qparams:
            self.emit_module(node, mod, self.float_reads.get(node.args[0], x))
            self.float_layers[node.target] = self.names[node]
        else:
            self.emit_module(node, mod, x)

    def emit_module(self, node: fx.Node, mod: nn.Module, x: str) -> None:
        if isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                raise QsalError(f"layer {node.target}: only numeric zero padding exports to ONNX")
            w, b = self.layer_params(node, mod)
            ph, pw = mod.padding
            self.names[node] = self.emit("Conv", [x, w] + ([b] if b else []), node.name,
                                         kernel_shape=list(mod.kernel_size), strides=list(mod.stride),
                                         pads=[ph, pw, ph, pw], dilations=list(mod.dilation), group=mod.groups)
        elif isinstance(mod, nn.Linear):
            w, b = self.layer_params(node, mod)
            self.names[node] = self.emit("Gemm", [x, w] + ([b] if b else []), node.name, transB=1)
        elif isinstance(mod, nn.ReLU):
            self.names[node] = self.emit("Relu", [x], node.name)
        elif isinstance(mod, nn.ReLU6):
            lo = self.init(self.fresh("relu6_lo"), np.array(0.0, np.float32))
            hi = self.init(self.fresh("relu6_hi"), np.array(6.0, np.float32))
            self.names[node] = self.emit("Clip", [x, lo, hi], node.name)
            self.relu6_inputs[node] = x
        elif isinstance(mod, nn.MaxPool2d):
            k, s, p = (v if isinstance(v, (tuple, list)) else (v, v) for v in (mod.kernel_size, mod.stride, mod.padding))
            out = self.emit("MaxPool", [x], node.name, kernel_shape=list(k), strides=list(s), pads=[p[0], p[1], p[0], p[1]])
            self.passthrough_qdq(node, out)
        elif isinstance(mod, nn.AdaptiveAvgPool2d):
            if mod.output_size not in (1, (1, 1)):
                raise QsalError(f"layer {node.target}: only AdaptiveAvgPool2d(1) exports (global average pooling)")
            self.names[node] = self.emit("GlobalAveragePool", [x], node.name)
        elif isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                raise QsalError(f"layer {node.target}: only Flatten(start_dim=1) exports")
            self.flatten(node)
        elif isinstance(mod, (nn.Dropout, nn.Identity)):
            self.names[node] = x
            if node.args[0] in self.qparams:
                self.qparams[node] = self.qparams[node.args[0]]
            if node.args[0] in self.float_reads:
                self.float_reads[node] = self.float_reads[node.args[0]]
        elif isinstance(mod, nn.BatchNorm2d):
            raise QsalError(f"layer {node.target}: a BatchNorm that does not follow a conv cannot be exported")
        else:
            raise QsalError(f"layer {node.target} ({type(mod).__name__}) has no ONNX export in qsal")


def _pack_int4(codes: np.ndarray) -> bytes:
    """Two signed 4-bit codes per byte, first element in the low nibble (the ONNX INT4 layout)."""
    nibbles = (codes.astype(np.int8).reshape(-1) & 0x0F).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()


def _code_range(p: dict, scale: np.float32, zp: int) -> tuple[int, int]:
    """The uint8 codes an activation quantizer can produce: from its float clip, else all 256."""
    if p.get("clip") is None:
        return 0, 255
    lo, hi = (int(np.clip(np.round(np.float32(v) / scale) + zp, 0, 255)) for v in p["clip"])
    return lo, hi


def _rename_output(nodes: list[onnx.NodeProto], old: str, new: str) -> None:
    for n in nodes:
        n.input[:] = [new if i == old else i for i in n.input]
        n.output[:] = [new if o == old else o for o in n.output]


def _portable(value):
    """Metadata without the exporting machine's absolute paths (a path is kept as its file name)."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value) and (Path(value).is_absolute() or value[1:3] == ":\\"):
        return Path(value.replace("\\", "/")).name
    return value


def _check_finite(model: nn.Module) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise QsalError(f"model tensor {name} holds NaN/inf values; retrain (or reload the last good checkpoint) "
                            "before exporting")


def export_onnx(model: nn.Module, path: str | Path, *, input_shape: tuple[int, int, int], meta: dict | None = None,
                check_untrained: bool = True) -> Path:
    """Write ``model`` as ONNX (opset 21) with a dynamic batch axis; quantized models become QDQ graphs.

    Args:
        model: a float model or a ``qsal.quantize`` result.
        input_shape: ``(C, H, W)`` of one image.
        meta: JSON stored in the model's ``metadata_props["qsal"]`` (dataset normalisation, labels,
            task, quantization config); ``qsal.runtime`` reads it to preprocess images.
    Returns:
        The written path; the file appears atomically.
    """
    if check_untrained and getattr(model, "qsal_untrained", False):
        raise QsalError("this model was never trained; train it (qsal train) or load a checkpoint before exporting "
                        "(check_untrained=False exports it anyway)")
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
            and all(is_integer(v) and v >= 1 for v in input_shape)):
        raise QsalError(f"input_shape must be (C, H, W) of one image, e.g. (1, 28, 28), got {input_shape!r}")
    channels = (getattr(model, "qsal_arch", None) or {}).get("in_channels")
    if channels is not None and input_shape[0] != channels:  # a file for images it never saw
        raise QsalError(f"input_shape {tuple(input_shape)} has {input_shape[0]} channel(s) but the model takes "
                        f"{channels}; pass ({channels}, H, W) at the size it was trained on")
    model = copy.deepcopy(model).cpu().eval()
    _check_finite(model)
    try:  # a shape the layers cannot take fails here in one line, not as a broken file or an onnxruntime error
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except RuntimeError as e:
        raise QsalError(f"the model does not take images of input_shape {tuple(input_shape)} "
                        f"({str(e).splitlines()[0][:120]}); pass the (C, H, W) it was trained on") from None
    gm = model if isinstance(model, fx.GraphModule) else trace(model)
    fold_batchnorm(gm)
    em = _Emitter(gm)
    with torch.no_grad():
        out = em.run()
    c, h, w = input_shape
    if out in (INPUT_NAME, None):
        raise QsalError("the model returns its input unchanged; there is nothing to export")
    _rename_output(em.nodes, out, OUTPUT_NAME)
    graph = helper.make_graph(
        em.nodes, "qsal", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", c, h, w])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", None])], em.inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qsal")
    onnx_model.ir_version = 10
    info = {**_portable(meta or {}), "input_shape": [c, h, w], "environment": environment()}
    helper.set_model_props(onnx_model, {"qsal": json.dumps(info)})
    try:
        onnx.checker.check_model(onnx_model)
    except onnx.checker.ValidationError as e:
        raise QsalError(f"qsal built an invalid ONNX graph ({str(e).splitlines()[0]}); please report this") from None
    # integer_kernels: whether onnxruntime (default options) runs every conv/gemm/add on integer kernels;
    # read off the optimised graph, since that, not the config, decides it.
    optimized = optimized_graph(onnx_model.SerializeToString())
    float_ops = float_compute_ops(optimized)
    quantized = any(isinstance(m, (QuantConv2d, QuantLinear)) for m in gm.modules())
    info["integer_kernels"] = quantized and not float_ops
    info["float_ops_after_optimization"] = float_ops
    info["weights_dequantized_per_call"] = weights_dequantized_per_call(optimized)
    # whether its integer kernels compute exactly on x86-64 CPUs without VNNI (int16 pair sums; runtime.session_options)
    info["int16_pair_sum_bound"] = int16_pair_sum_bound(optimized)
    if em.float_layers:  # kept in FP32 (skip): does onnxruntime keep them so? (not where a DequantizeLinear feeds one)
        onnx_names = {node: layer for layer, node in em.float_layers.items()}
        info["fp32_layers_int8_in_onnxruntime"] = [onnx_names[n] for n in requantized_by_runtime(optimized, onnx_names)]
    if quantized and "quantization" not in info:  # read off the model when the caller's meta does not record it
        from qsal.quant.describe import describe_quantization

        info["quantization"] = _portable(describe_quantization(model))
    helper.set_model_props(onnx_model, {"qsal": json.dumps(info)})
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(onnx_model, str(tmp))
    return path
