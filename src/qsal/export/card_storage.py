"""What an exported ONNX file stores and what onnxruntime runs it on, read off the file for its model card, `qsal
bench`, `qsal export` and reports: the storage type of each layer's weights (``INT8``, ``INT4``, ``FP32``), their
bits, and whether its convolutions run on integer kernels or on float ones with weights dequantized on every call
(as export measured on onnxruntime's optimised graph)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["onnx_layer_storage", "quant_bits", "kernels_run", "deployed_kernels", "describe_kernels", "kernels_label",
           "kernels_scored"]

_ONNX_TYPES = {1: "FP32", 3: "INT8", 22: "INT4", 2: "UINT8", 6: "INT32", 10: "FP16", 16: "BF16"}


def onnx_layer_storage(onnx_path: str | Path) -> tuple[int, dict[str, str]]:
    """``(opset, {layer: weight storage type})`` read from the ONNX graph (``INT8``, ``INT4`` or ``FP32``)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    layers = {}
    for init in model.graph.initializer:
        name = init.name
        if name.endswith("_weight_q"):
            layers[name[: -len("_weight_q")]] = _ONNX_TYPES.get(init.data_type, str(init.data_type))
        elif name.endswith("_weight") and len(init.dims) >= 2:  # a float layer
            layers.setdefault(name[: -len("_weight")], _ONNX_TYPES.get(init.data_type, str(init.data_type)))
    return opset, layers


def quant_bits(quant: dict, storage: dict[str, str], recorded: list | None = None) -> dict[str, int | None]:
    """Bits of each ONNX layer's weights (``storage``: ``onnx_layer_storage``'s). ``recorded``: the checkpoint's own
    per-layer record (``describe_quantization``'s ``weights``) wins, and a layer it leaves out that is stored float
    was kept float (``skip``); else per-layer entries of the config, else the config's bit-width."""
    per_layer = quant.get("layers") or quant.get("per_layer") or quant.get("per_layer_bits") or {}
    by_name = {w.get("name"): w.get("weight_bits") for w in recorded or [] if isinstance(w, dict)}
    method = quant.get("method")
    default = quant.get("weight_bits") or quant.get("bits")
    layers = list(storage)
    out = {}
    for i, name in enumerate(layers):
        found = by_name.get(name, by_name.get(name.replace("_", ".")))
        entry = per_layer.get(name) or per_layer.get(name.replace("_", "."))
        if found is not None:
            out[name] = found
        elif isinstance(recorded, list) and storage[name] == "FP32":
            out[name] = 32
        elif isinstance(entry, dict):
            out[name] = entry.get("weight_bits") or entry.get("bits")
        elif isinstance(entry, int):
            out[name] = entry
        elif method == "pact" and i in (0, len(layers) - 1):
            out[name] = quant.get("first_last_bits", 8)
        else:
            out[name] = default
    return out


def _float_ops_words(float_ops: dict | None) -> str:
    """``{"FusedConv": 2, "Gemm": 1}`` (export's ``float_ops_after_optimization``) as ``2 FusedConv, 1 Gemm``."""
    return ", ".join(f"{n} {op}" for op, n in sorted((float_ops or {}).items()))


def kernels_run(onnx_path: Path, quant: dict) -> dict:
    """What onnxruntime runs the file on, as export measured it on the optimised graph (``integer_kernels``,
    ``float_ops_after_optimization`` in the metadata): a quantized file whose layers fall back to float kernels
    (weight-only, a skipped layer) keeps integer weights on disk but computes in FP32, dequantizing them per call."""
    from qsal.runtime import read_metadata

    info = read_metadata(onnx_path)
    integer, float_ops = info.get("integer_kernels"), info.get("float_ops_after_optimization")
    ops = _float_ops_words(float_ops) or "see the metadata"
    if quant.get("method") == "fp32":
        text = "float (FP32)"
    elif integer:
        text = "integer: onnxruntime runs every conv/gemm on integer kernels (checked on its optimised graph at export)"
    elif integer is None:
        text = None
    elif quant.get("skip") and quant.get("method") != "weight_only":
        text = f"integer but for float kernels ({ops}), the layers kept in FP32 among them ({', '.join(quant['skip'])})"
    else:
        # measured at export where recorded: onnxruntime keeps the DequantizeLinear of each weight in its optimised
        # graph, so a weight-only file runs slower than the FP32 one (audit: 0.47 vs 0.26 ms at batch 1)
        n_dq = info.get("weights_dequantized_per_call")
        dq = f" ({n_dq} DequantizeLinear nodes of weights stay in its optimised graph)" if n_dq else ""
        text = (f"float: onnxruntime dequantizes these layers' weights on every call{dq} and runs them on float "
                f"kernels ({ops}); the file is smaller, but each call does FP32's compute plus the dequantization: "
                "expect it slower than the FP32 file (`qsal bench` both)")
    from qsal.runtime import INT16_MAX, has_integer_layers, sums_fit_int16

    bound = info.get("int16_pair_sum_bound")
    if text and has_integer_layers(info) and bound is not None:  # measured at export: where the sums saturate
        text += (f". Its integer sums fit in int16 (at most {bound}), so it runs on integer kernels on x86 CPUs "
                 "without VNNI too" if sums_fit_int16(info) else
                 f". On x86 CPUs without VNNI (AVX2 only) its 8-bit sums (up to {bound}) would saturate the int16 "
                 f"the fast kernels add in (> {INT16_MAX}): qsal runs those layers on onnxruntime's exact, slower "
                 "u8 x u8 kernels there (session.x64quantprecision); a PTQ file with 7-bit weights (`qsal quantize "
                 "--weight-bits 7`) keeps the fast ones")
    requantized = info.get("fp32_layers_int8_in_onnxruntime") or []
    if requantized and text:  # measured at export: the deployed file does not run these as the model describes
        text += (f". Kept in FP32 but run by onnxruntime on per-tensor INT8 weights it makes itself when it loads the "
                 f"file: {', '.join(requantized)} (its WeightBiasQuantization optimiser quantizes a float conv/gemm "
                 "read from a quantized tensor); the metrics above are the file's as onnxruntime runs it")
    return {"integer_kernels": integer, "float_ops_after_optimization": float_ops,
            "weights_dequantized_per_call": info.get("weights_dequantized_per_call"), "text": text,
            "fp32_layers_int8_in_onnxruntime": requantized}


def deployed_kernels(meta: dict) -> dict:
    """The file's quantization and kernels as its export measured them (``integer_kernels``: every conv/gemm on
    integer kernels; ``weights_dequantized_per_call``: weight tensors dequantized on every call, float kernels)."""
    quant = meta.get("quant") or {}  # None: an FP32 file
    return {"method": quant.get("method", "fp32"), "bits": quant.get("bits") or quant.get("weight_bits"),
            # PTQ's activations where their bits differ from the weights' (W7A8)
            **({"act_bits": quant["act_bits"]} if quant.get("act_bits") not in (None, quant.get("weight_bits"))
               else {}),
            **{k: meta.get(k) for k in ("integer_kernels", "float_ops_after_optimization",
                                        "weights_dequantized_per_call")}}


def describe_kernels(deployed: dict) -> str:
    """One line on what onnxruntime runs a file on (``bench_onnx``'s ``deployed``), as its export measured it."""
    method, bits = deployed.get("method"), deployed.get("bits")
    what = "FP32" if method == "fp32" else f"{str(method).replace('_', '-')} {bits}-bit" if bits else str(method)
    if deployed.get("act_bits"):  # PTQ with weights and activations apart: 7-bit weights, 8-bit activations
        what = f"{str(method).replace('_', '-')} W{bits}A{deployed['act_bits']}"
    if deployed.get("integer_kernels"):
        return f"integer kernels ({what})"
    if method in ("fp32", None) or deployed.get("integer_kernels") is None:
        return f"float kernels ({what})" if method == "fp32" else f"{what} (kernels not recorded at export)"
    if method != "weight_only":  # a layer kept in FP32 (--skip)
        ops = _float_ops_words(deployed.get("float_ops_after_optimization"))
        return f"integer kernels but for float ones ({ops}: the layers kept in FP32) ({what})"
    return (f"float kernels ({what}): onnxruntime dequantizes its weights on every call, so expect it slower than "
            "the FP32 file; the file is smaller, not faster")


def kernels_label(meta: dict) -> str | None:
    """A report column's word for what onnxruntime runs a file on (its ONNX metadata ``meta``): ``integer``,
    ``float`` (an FP32 file, or weight-only: weights dequantized on every call), ``integer + float`` (layers kept in
    FP32); ``None`` for a file exported before qsal measured it."""
    integer = meta.get("integer_kernels")
    if integer is None:
        return None
    if integer:
        return "integer"
    method = (meta.get("quant") or {}).get("method", "fp32")
    return "float" if method == "fp32" else "float, dequantized per call" if method == "weight_only" else \
        "integer + float"


def kernels_scored(artifact_metrics: dict | None) -> str:
    """A sentence on the kernels the file was scored on where a CPU without VNNI chose them
    (``runtime.kernel_notes``), else ``""``: the fast kernels that saturate there give other numbers."""
    if not artifact_metrics:
        return ""
    if artifact_metrics.get("saturating_kernels"):
        return (" Scored on a CPU without VNNI with QSAL_INTEGER_KERNELS=1: the fast integer kernels saturate there, "
                "so these numbers can differ from the same file's on a CPU with VNNI.")
    if artifact_metrics.get("u8u8_kernels"):
        return (" Scored on a CPU without VNNI, on onnxruntime's exact u8 x u8 integer kernels: the numbers a CPU with "
                "VNNI gives.")
    return ""
