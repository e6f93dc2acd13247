"""ONNX export: FP32 graphs and QDQ graphs whose weights are stored as integers.

The emitter walks the model's ``torch.fx`` graph (the same graph the quantizers were placed on), so
every QuantizeLinear/DequantizeLinear pair sits where the PyTorch model fake-quantizes, with the
same scale and zero point: ONNX Runtime fuses ``DQ -> Conv -> Q`` into integer kernels (QLinearConv,
QGemm, QLinearAdd) and the artifact's logits match the PyTorch model's.

Weights: 8-bit codes are INT8 initializers; 2-4-bit codes are INT4 initializers (opset 21, two per
byte), since ONNX has no 2- or 3-bit type: a 2/3-bit layer is stored in 4-bit containers (its codes
use only 3 or 7 of the 16 values). 5-7-bit codes use INT8. Biases of quantized layers fed by a
quantized tensor are INT32 with scale ``s_in * s_w`` (as integer runtimes expect).
Activations below 8 bits are uint8 codes with a Clip in front that keeps them to ``2^k`` levels.
"""

from __future__ import annotations

import copy
import json
import operator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn

from qsal._atomic import atomic_path
from qsal.errors import QsalError
from qsal.provenance import environment
from qsal.quant.graph import ADD_FUNCTIONS, fold_batchnorm, trace
from qsal.quant.modules import ActQuantizer, PACTQuantizer, QuantConv2d, QuantLinear

__all__ = ["export_onnx", "OPSET"]

OPSET = 21


class _Emitter:
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: dict[fx.Node, str] = {}
        self.qparams: dict[fx.Node, dict] = {}
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
        s = self.init(self.fresh(base + "_scale"), np.array(p["scale"], np.float32))
        zp = self.init(self.fresh(base + "_zp"), np.array(p["zero_point"], np.uint8))
        q = self.emit("QuantizeLinear", [x, s, zp], base + "_q")
        out = self.emit("DequantizeLinear", [q, s, zp], base + "_dq")
        if p["clip"] is not None:
            # Below 8 bits the codes must stop at 2^k levels. The clip goes *after* DequantizeLinear, on
            # grid values: a Clip in front of QuantizeLinear is removed by onnxruntime's ClipQuantFusion,
            # which assumes the uint8 range, and that changed the results.
            lo = self.init(self.fresh(base + "_clip_lo"), np.array(p["clip"][0], np.float32))
            hi = self.init(self.fresh(base + "_clip_hi"), np.array(p["clip"][1], np.float32))
            out = self.emit("Clip", [out, lo, hi], base + "_clip")
        return out

    def layer_params(self, node: fx.Node, mod: nn.Module) -> tuple[str, str | None]:
        base = node.target.replace(".", "_")
        in_q = self.qparams.get(node.args[0])
        if isinstance(mod, (QuantConv2d, QuantLinear)) and mod.quant_weights:
            codes, scale = mod.integer_weight()
            dtype = TensorProto.INT4 if codes.min() >= -8 and codes.max() <= 7 else TensorProto.INT8  # DoReFa-4: INT8
            w_q = self.init(base + "_weight_q", codes, dtype)
            w_s = self.init(base + "_weight_scale", scale)
            zp = np.zeros(scale.shape, np.int8)
            w_zp = self.init(base + "_weight_zp", zp, dtype)
            w = self.emit("DequantizeLinear", [w_q, w_s, w_zp], base + "_weight", axis=0)
            if mod.bias is None:
                return w, None
            b = mod.bias.detach().numpy().astype(np.float32)
            # INT32 bias (scale s_in * s_w) where the runtime can fuse to integer kernels: 8-bit input and
            # weights. Below 8 bits the step s_in * s_w is coarse and the layer runs in float anyway.
            if in_q is not None and in_q["bits"] == 8 and mod.weight_bits == 8:
                b_scale = (in_q["scale"] * scale).astype(np.float32)
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
                self.names[node] = "input"
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
            out = self.qdq(out, {**p, "clip": None}, node.name)
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
            self.names[node] = self.qdq(x, p, node.name)
            self.qparams[node] = p
        elif isinstance(mod, nn.Conv2d):
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


def _runs_on_integer_kernels(gm: fx.GraphModule) -> bool:
    """True when every quantized layer is 8-bit with quantized inputs: the runtime fuses it to integer
    kernels. Otherwise (weight-only, or < 8 bits) it computes in float from the stored integers."""
    layers = [m for m in gm.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    acts = [m for m in gm.modules() if isinstance(m, (ActQuantizer, PACTQuantizer)) and m.mode == "quant"]
    return bool(layers) and bool(acts) and all(m.weight_bits == 8 for m in layers) and all(a.bits == 8 for a in acts)


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
    model = copy.deepcopy(model).cpu().eval()
    _check_finite(model)
    gm = model if isinstance(model, fx.GraphModule) else trace(model)
    fold_batchnorm(gm)
    em = _Emitter(gm)
    with torch.no_grad():
        out = em.run()
    c, h, w = input_shape
    graph = helper.make_graph(
        em.nodes, "qsal", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", c, h, w])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", None])], em.inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qsal")
    onnx_model.ir_version = 10
    info = {**(meta or {}), "input_shape": [c, h, w], "integer_kernels": _runs_on_integer_kernels(gm),
            "environment": environment()}
    helper.set_model_props(onnx_model, {"qsal": json.dumps(info)})
    try:
        onnx.checker.check_model(onnx_model)
    except onnx.checker.ValidationError as e:
        raise QsalError(f"qsal built an invalid ONNX graph ({str(e).splitlines()[0]}); please report this") from None
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(onnx_model, str(tmp))
    return path
