"""Graph surgery with ``torch.fx``: fold BatchNorm, swap layers, place one quantizer per tensor.

A quantizer goes on every tensor that feeds a quantized op (conv, linear, pooling, and residual adds
unless the method leaves those float, as PACT does by default), once per tensor however many ops
read it, which is exactly where an integer runtime needs QuantizeLinear / DequantizeLinear pairs. Ops
that keep values on the grid (max-pool, flatten, dropout in eval) pass a
quantized tensor through without a new quantizer.
"""

from __future__ import annotations

import operator
from typing import Callable

import torch
from torch import fx, nn

from qsal.errors import QsalError
from qsal.quant.modules import QUANT_LAYERS, ActQuantizer, PACTQuantizer, QuantConv2d, QuantLinear

__all__ = ["trace", "fold_batchnorm", "swap_layers", "insert_act_quantizers", "act_quantizers", "is_add", "link_bias_quantizers",
           "first_and_last_layers", "SUPPORTED_MODULES", "ADD_FUNCTIONS", "TRANSPARENT_MODULES"]

TRANSPARENT_MODULES = (nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
CONSUMER_MODULES = QUANT_LAYERS + (nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d)
SUPPORTED_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
                     nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity, ActQuantizer, PACTQuantizer)
ADD_FUNCTIONS = (operator.add, torch.add)
_SUPPORTED_FUNCTIONS = ADD_FUNCTIONS + (torch.flatten, torch.relu, nn.functional.relu)


def trace(model: nn.Module, skip: tuple[str, ...] = ()) -> fx.GraphModule:
    """Symbolically trace ``model``; raise a one-line error naming any layer qsal cannot quantize."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types for untraceable Python
        raise QsalError(f"cannot trace {type(model).__name__} with torch.fx ({type(e).__name__}: {e}); "
                        "write its forward without data-dependent control flow") from None
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if not isinstance(mod, SUPPORTED_MODULES) and node.target not in skip:
                raise QsalError(f"layer {node.target!r} ({type(mod).__name__}) is not supported by qsal quantization; "
                                f"pass skip=({node.target!r},) to keep it FP32, or replace it with a supported layer")
        elif node.op == "call_function" and node.target not in _SUPPORTED_FUNCTIONS:
            raise QsalError(f"operation {getattr(node.target, '__name__', node.target)} in {node.name!r} is not supported "
                            "by qsal quantization/export; use nn modules (ReLU, Flatten...) or `a + b` in forward")
        elif node.op == "call_method" and node.target not in ("flatten", "view", "reshape", "add", "relu"):
            raise QsalError(f"tensor method .{node.target}() in {node.name!r} is not supported by qsal quantization/export")
    gm.qsal_arch = getattr(model, "qsal_arch", None)
    return gm


def _module(gm: fx.GraphModule, node: fx.Node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


@torch.no_grad()
def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every ``conv -> BatchNorm2d`` pair (the conv used only by the BN) into the conv, in place.

    A float conv gets new weights and bias; a ``QuantConv2d`` gets a per-channel ``bn_scale`` so its
    integer weights stay what they were.
    """
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        src = node.args[0]
        conv = _module(gm, src) if isinstance(src, fx.Node) else None
        if not isinstance(conv, nn.Conv2d) or len(src.users) != 1:
            continue
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + bn.bias
        if isinstance(conv, QuantConv2d):
            conv.bn_scale.mul_(factor)
        else:
            conv.weight.mul_(factor.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(new_bias.clone())
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)
    gm.graph.lint()
    gm.recompile()
    return gm


def first_and_last_layers(gm: fx.GraphModule) -> tuple[str | None, str | None]:
    """Names of the conv/linear reading the input and the one writing the output."""
    first = last = None
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(_module(gm, node), (nn.Conv2d, nn.Linear)):
            first = first or node.target
            last = node.target
    return first, last


def swap_layers(gm: fx.GraphModule, make_kwargs: Callable[[str], dict | None]) -> fx.GraphModule:
    """Replace each ``nn.Conv2d`` / ``nn.Linear`` by its quantized twin; ``make_kwargs(name)`` returns the
    quantizer settings for that layer, or ``None`` to keep it FP32."""
    for node in gm.graph.nodes:
        mod = _module(gm, node)
        if type(mod) not in (nn.Conv2d, nn.Linear):
            continue
        kw = make_kwargs(node.target)
        if kw is None:
            continue
        new = (QuantConv2d if isinstance(mod, nn.Conv2d) else QuantLinear).from_float(mod, **kw)
        for name, param in mod.named_parameters(recurse=False):  # a layer frozen by the user stays frozen
            getattr(new, name).requires_grad_(param.requires_grad)
        gm.set_submodule(node.target, new.to(mod.weight.device))
    gm.recompile()
    return gm


def is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in ADD_FUNCTIONS) or (node.op == "call_method"
                                                                             and node.target == "add")


def _is_consumer(gm: fx.GraphModule, node: fx.Node, adds: bool = True) -> bool:
    if node.op == "call_module":
        return isinstance(_module(gm, node), CONSUMER_MODULES)
    return adds and is_add(node)


def _is_transparent(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(_module(gm, node), TRANSPARENT_MODULES)
    if node.op == "call_function":
        return node.target is torch.flatten
    return node.op == "call_method" and node.target in ("flatten", "view", "reshape")


def _readers_through_transparent(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node]:
    """The ops that read ``node``'s values, looking through dropout/flatten/max-pool: the quantizer then
    sits *before* a dropout (as usual), so training-time dropout scaling is not clipped by it."""
    out = []
    for u in node.users:
        out.append(u)
        if _is_transparent(gm, u):
            out.extend(_readers_through_transparent(gm, u))
    return out


def insert_act_quantizers(gm: fx.GraphModule, make_quantizer: Callable[[fx.Node, bool], nn.Module],
                          quantize_add_inputs: bool = True,
                          make_add_quantizer: Callable[[fx.Node], nn.Module] | None = None) -> fx.GraphModule:
    """Insert ``make_quantizer(node, feeds_edge_layer)`` after every tensor that feeds a quantized op.

    ``feeds_edge_layer`` is True for the tensor read by the first or last conv/linear (kept at higher
    precision by PACT's first/last-layer rule). With ``quantize_add_inputs=False`` a residual add is
    not a quantized op: a tensor read only by adds stays float (PACT's placement, ReLU outputs only),
    or, when ``make_add_quantizer`` is given, gets that quantizer instead (PACT's 8-bit add inputs, which
    an integer runtime's QLinearAdd needs).
    """
    first, last = first_and_last_layers(gm)
    on_grid: set[fx.Node] = set()
    count = 0
    for node in list(gm.graph.nodes):
        if node.op == "output" or node in on_grid:
            continue
        if _is_transparent(gm, node) and isinstance(node.args[0], fx.Node) and node.args[0] in on_grid:
            on_grid.add(node)
            continue
        readers = _readers_through_transparent(gm, node)
        add_only = False
        if not any(_is_consumer(gm, u, quantize_add_inputs) for u in readers):
            add_only = make_add_quantizer is not None and any(_is_consumer(gm, u, True) for u in readers)
            if not add_only:
                continue
        edge = any(u.op == "call_module" and u.target in (first, last) for u in readers)
        name = f"act_quant_{count}"
        count += 1
        gm.add_submodule(name, make_add_quantizer(node) if add_only else make_quantizer(node, edge))
        with gm.graph.inserting_after(node):
            q = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)
        on_grid.add(q)
    gm.graph.lint()
    gm.recompile()
    return gm


def link_bias_quantizers(gm: fx.GraphModule) -> fx.GraphModule:
    """Tell each quantized layer which activation quantizer feeds it (looking back through max-pool,
    flatten and dropout), so it can put its bias on the ``s_in * s_w`` grid of the INT32 bias that the
    exported integer kernel adds (``QuantConv2d.quantized_bias``). The reference is a plain attribute,
    not a submodule: the state dict and the module tree stay as they were."""
    for node in gm.graph.nodes:
        layer = _module(gm, node)
        if not isinstance(layer, QUANT_LAYERS):
            continue
        src = node.args[0]
        while isinstance(src, fx.Node) and _is_transparent(gm, src) and src.args and isinstance(src.args[0], fx.Node):
            src = src.args[0]
        feeder = _module(gm, src) if isinstance(src, fx.Node) else None
        layer.__dict__["input_quantizer"] = feeder if isinstance(feeder, (ActQuantizer, PACTQuantizer)) else None
    return gm


def act_quantizers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (ActQuantizer, PACTQuantizer))]
