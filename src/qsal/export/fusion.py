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

__all__ = ["optimized_op_types", "float_compute_ops", "FLOAT_COMPUTE_OPS"]

# Ops that do multiply-accumulate (or residual) work in float when they survive optimisation; their
# integer counterparts are QLinearConv, QGemm, QLinearMatMul/MatMulInteger, QLinearAdd.
FLOAT_COMPUTE_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul",
                               "Add"})


def optimized_op_types(model: str | os.PathLike | bytes) -> Counter:
    """Op-type counts of ``model`` after onnxruntime's graph optimisation with default session options
    (the CPU provider, ``ORT_ENABLE_ALL``), as saved by ``SessionOptions.optimized_model_filepath``."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()  # defaults otherwise: this is what a deployment gets
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 3
        src = model if isinstance(model, bytes) else str(model)
        ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath, load_external_data=False).graph
    return Counter(n.op_type for n in graph.node)


def float_compute_ops(model: str | os.PathLike | bytes) -> dict[str, int]:
    """The float conv/gemm/matmul/add ops left after default optimisation (empty: all on integer kernels)."""
    return {op: n for op, n in optimized_op_types(model).items() if op in FLOAT_COMPUTE_OPS}
