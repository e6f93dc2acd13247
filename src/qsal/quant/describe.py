"""``describe_quantization(model)``: what a quantized model quantizes and how, as JSON.

Stored in every checkpoint's JSON (``quantization``) and in result files, so a number can be traced to
the weight scheme, per-layer bits, which tensors carry an activation quantizer, the observer that set
each range and, for PACT, each clip's value at the start and at the end of fine-tuning.
"""

from __future__ import annotations

from collections import Counter

from torch import fx, nn

from qsal.quant.graph import act_quantizers, is_add
from qsal.quant.modules import QUANT_LAYERS, PACTQuantizer, is_depthwise
from qsal.quant.observers import OBSERVER_DEFINITIONS

__all__ = ["describe_quantization"]


def _producer(gm: nn.Module, node) -> str:
    """What computed the tensor a quantizer reads: ``input``, ``add``, ``relu`` or a module type name."""
    if not isinstance(node, fx.Node):
        return "constant"
    if node.op == "placeholder":
        return "input"
    if is_add(node):
        return "add"
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    return getattr(node.target, "__name__", str(node.target))


def _readers(gm: nn.Module, node: fx.Node) -> list[str]:
    out = []
    for u in node.users:
        out.append("add" if is_add(u) else type(gm.get_submodule(u.target)).__name__ if u.op == "call_module"
                   else getattr(u.target, "__name__", str(u.target)))
    return sorted(set(out))


def _activation(gm: nn.Module, node: fx.Node | None, name: str, q: nn.Module) -> dict:
    entry = {"name": name, "bits": q.bits}
    if node is not None:
        entry["reads"] = _producer(gm, node.args[0])
        entry["read_by"] = _readers(gm, node)
    if isinstance(q, PACTQuantizer):
        entry.update(kind="pact", signed=bool(q.signed), alpha_start=round(float(q.alpha_start), 6),
                     alpha_end=round(float(q.alpha.detach().abs()), 6))
    else:
        lo, hi = (float(v) for v in q.range)
        entry.update(kind="affine_uint8", observer=q.observer, ema=q.ema, range=[round(lo, 6), round(hi, 6)])
    return entry


def describe_quantization(model: nn.Module) -> dict | None:
    """JSON-able description of a quantized model, or None for a float model.

    Returns ``{"config", "weights": [per layer: name, type, weight_bits, scheme, scale], "activations":
    [per quantizer: name, bits, reads (the op whose output it quantizes), read_by, kind, PACT
    alpha_start/alpha_end or observer/range], "quantized": counts by producer, "observers": definitions}``.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS)]
    acts = act_quantizers(model)
    if not layers and not acts:
        return None
    weights = [{"name": n,
                "type": "depthwise_conv" if is_depthwise(m) else type(m).__name__.replace("Quant", "").lower(),
                "weight_bits": m.weight_bits if m.quant_weights else 32, "scheme": m.scheme,
                **({"clip": m.weight_clip} if m.weight_clip != "max" else {}),
                "scale": "per_channel" if m.per_channel else "per_tensor"} for n, m in layers]
    nodes = {}
    if isinstance(model, fx.GraphModule):
        nodes = {n.target: n for n in model.graph.nodes if n.op == "call_module"}
    names = {id(m): n for n, m in model.named_modules()}
    activations = [_activation(model, nodes.get(names[id(q)]), names[id(q)], q) for q in acts]
    observers = sorted({a["observer"] for a in activations if "observer" in a})
    return {
        "config": getattr(model, "qsal_quant", None),
        "weights": weights,
        "activations": activations,
        "quantized": {"weight_layers": len(weights),
                      "activation_tensors_by_producer": dict(Counter(a.get("reads", "?") for a in activations)),
                      "tensors_read_only_by_residual_adds": sum(a.get("read_by") == ["add"] for a in activations)},
        "observers": {o: OBSERVER_DEFINITIONS[o] for o in observers},
        "pact_alpha_definition": "alpha_start: the clip after calibration, before fine-tuning; alpha_end: at save"
        if any(isinstance(q, PACTQuantizer) for q in acts) else None,
    }
