"""What onnxruntime actually runs: the op types of a model after its default graph optimisation.

A QDQ file only states where integers are; whether a layer runs on integer kernels is decided by
onnxruntime's optimiser when a session starts (``DQ -> Conv -> Q`` becomes ``QLinearConv`` only if
every piece of the pattern is in place). So ``integer_kernels`` in an artifact's metadata is not
derived from the quantization config but read off the optimised graph, with the session options a
user gets by default.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

__all__ = ["optimized_graph", "optimized_op_types", "float_compute_ops", "requantized_by_runtime", "FLOAT_COMPUTE_OPS",
           "int16_pair_sum_bound", "INT16_MAX"]

# Ops that do multiply-accumulate (or residual) work in float when they survive optimisation; their
# integer counterparts are QLinearConv, QGemm, QLinearMatMul/MatMulInteger, QLinearAdd.
FLOAT_COMPUTE_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul",
                               "Add"})


def optimized_graph(model: str | os.PathLike | bytes):
    """``model``'s graph (``onnx.GraphProto``) after onnxruntime's graph optimisation with default session options
    (the CPU provider, ``ORT_ENABLE_ALL``), as saved by ``SessionOptions.optimized_model_filepath``."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()  # defaults otherwise: this is what a deployment gets
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 3
        src = model if isinstance(model, bytes) else str(model)
        ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath, load_external_data=False).graph


def optimized_op_types(model) -> Counter:
    """Op-type counts of ``model`` (a file, its bytes, or an ``optimized_graph``) after default optimisation."""
    graph = model if hasattr(model, "node") else optimized_graph(model)
    return Counter(n.op_type for n in graph.node)


def float_compute_ops(model) -> dict[str, int]:
    """The float conv/gemm/matmul/add ops left after default optimisation (empty: all on integer kernels)."""
    return {op: n for op, n in optimized_op_types(model).items() if op in FLOAT_COMPUTE_OPS}


def requantized_by_runtime(graph, node_names) -> list[str]:
    """Which of the float Conv/Gemm nodes ``node_names`` onnxruntime quantized itself (``graph``: an
    ``optimized_graph``). Its WeightBiasQuantization optimiser gives a float-weight Conv/Gemm fed by a
    DequantizeLinear per-tensor INT8 weights, in an initializer named ``<node>_weight_q``."""
    made = {name for n in graph.node for name in n.input} | {t.name for t in graph.initializer}
    return [name for name in node_names if any(m.startswith(f"{name}_weight_q") for m in made)]


def weights_dequantized_per_call(graph) -> int:
    """How many weight tensors ``graph`` (an ``optimized_graph``) dequantizes on every call: a DequantizeLinear of an
    initializer that onnxruntime's optimiser left in place (it does not fold them, to keep QDQ patterns), i.e. the
    weights of a layer run on float kernels. 0 where every quantized layer runs on integer kernels."""
    inits = {t.name for t in graph.initializer}
    return sum(1 for n in graph.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] in inits)


from qsal.runtime import INT16_MAX  # noqa: E402 - torch-free, as this module is
# Integer kernels of onnxruntime's optimised graph that multiply uint8 activations by int8 weights (its MLAS u8 x s8
# GEMM, or the symmetric conv kernel): the positions of the activation, the weight and the activation's zero point
# (None: the activation is float and quantized per call to the full uint8 range). ConvInteger is uint8 x uint8 only,
# whose kernel widens to int16 before multiplying (no pair sums); depthwise QLinearConv widens too, but is counted.
_INTEGER_KERNEL_INPUTS = {"QLinearConv": (0, 3, 2), "QGemm": (0, 3, 2), "QLinearMatMul": (0, 3, 2),
                          "MatMulInteger": (0, 1, 2), "MatMulIntegerToFloat": (0, 1, 4),
                          "DynamicQuantizeMatMul": (0, 1, None)}
# Ops that move or select uint8 codes without making new ones: a Clip upstream of them still bounds the codes
_CODE_PRESERVING_OPS = frozenset({"Transpose", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "MaxPool",
                                  "NhwcMaxPool"})


def int16_pair_sum_bound(graph) -> int | None:
    """The largest ``|a1 w1 + a2 w2|`` any integer conv/gemm of ``graph`` (an ``optimized_graph``) can form from two
    uint8 activation codes and two int8 weight codes: what x86-64 CPUs without VNNI add in int16 with saturation
    (``vpmaddubsw``, then widened to int32: never more than two products), so the file runs exactly there only if the
    bound is at most ``INT16_MAX``. Activation codes reach 255 unless a constant Clip bounds them (a k-bit activation's
    2^k levels), and the zero point too (MLAS pads a conv's input with it); weight codes are the initializers' own.
    0 for a graph without integer kernels; None where it cannot be bounded (int8 activations, computed weights)."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}

    def constant(name: str) -> int | None:
        return int(numpy_helper.to_array(inits[name]).max()) if name in inits else None

    def code_max(name: str) -> int:
        node = producer.get(name)
        while node is not None and node.op_type in _CODE_PRESERVING_OPS:
            node = producer.get(node.input[0])
        if node is not None and node.op_type == "Clip" and len(node.input) > 2:
            hi = constant(node.input[2])
            return 255 if hi is None else hi
        return 255

    bound = 0
    for node in graph.node:
        if node.op_type not in _INTEGER_KERNEL_INPUTS:
            continue
        x_at, w_at, zp_at = _INTEGER_KERNEL_INPUTS[node.op_type]
        x, w = node.input[x_at], node.input[w_at]
        zero_point = node.input[zp_at] if zp_at is not None and len(node.input) > zp_at else ""
        if w not in inits or inits[w].data_type not in (TensorProto.INT8, TensorProto.INT4):
            return None  # computed weights, or uint8 ones (another kernel): not bounded here
        if zero_point in inits and inits[zero_point].data_type != TensorProto.UINT8:
            return None  # int8 activations
        a_max = 255 if zp_at is None else max(code_max(x), constant(zero_point) or 0)
        weights = numpy_helper.to_array(inits[w]).astype(np.int32)
        bound = max(bound, a_max * 2 * int(np.abs(weights).max(initial=0)))
    return bound
