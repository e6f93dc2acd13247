"""``quantize(model, config, calibration)``: the one entry point; handlers register per config type."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import fx, nn

from qsal.errors import QsalError
from qsal.models.modes import evaluating
from qsal.quant.config import PACTConfig, PTQConfig, QATConfig, QuantConfig, WeightOnlyConfig
from qsal.quant.graph import (act_quantizers, first_and_last_layers, fold_batchnorm, insert_act_quantizers,
                             link_bias_quantizers, swap_layers, trace)
from qsal.quant.modules import ActQuantizer, PACTQuantizer, is_depthwise

__all__ = ["quantize", "prepare_structure", "calibrate", "qat_callbacks", "MIN_CALIBRATION_IMAGES"]

MIN_CALIBRATION_IMAGES = 16
_HANDLERS: dict[type, Callable[[fx.GraphModule, QuantConfig], fx.GraphModule]] = {}


def register_handler(config_cls: type):
    def wrap(fn):
        _HANDLERS[config_cls] = fn
        return fn

    return wrap


@register_handler(PTQConfig)
def _prepare_ptq(gm: fx.GraphModule, cfg: PTQConfig) -> fx.GraphModule:
    fold_batchnorm(gm)  # fold first so per-tensor weight scales see the folded weights
    swap_layers(gm, lambda name: None if name in cfg.skip else
                {"weight_bits": cfg.weight_bits, "per_channel": cfg.per_channel})
    return insert_act_quantizers(gm, lambda node, edge: ActQuantizer(cfg.act_bits, cfg.observer))


@register_handler(QATConfig)
def _prepare_qat(gm: fx.GraphModule, cfg: QATConfig) -> fx.GraphModule:
    swap_layers(gm, lambda name: None if name in cfg.skip else {"weight_bits": cfg.bits, "per_channel": cfg.per_channel})
    # BatchNorm is folded before the fine-tune (into each quantized conv's bn_scale and bias), so the
    # model trained is, operation for operation, the one exported: the trained codes are the deployed
    # codes. Folding only at export changed float rounding and flipped codes, more with depth.
    # fold_bn=False keeps BatchNorm (Jacob et al.'s recipe: frozen late by freeze_bn_at), folded at export.
    if cfg.fold_bn:
        fold_batchnorm(gm)
    return insert_act_quantizers(gm, lambda node, edge: ActQuantizer(cfg.bits, "minmax", ema=cfg.ema))


@register_handler(PACTConfig)
def _prepare_pact(gm: fx.GraphModule, cfg: PACTConfig) -> fx.GraphModule:
    first, last = first_and_last_layers(gm)

    def layer_kwargs(name):
        if name in cfg.skip:
            return None
        if name in (first, last):
            return {"weight_bits": cfg.first_last_bits, "per_channel": True, "scheme": "symmetric"}
        per_channel = cfg.weight_per_channel == "all" or (cfg.weight_per_channel == "depthwise"
                                                          and is_depthwise(gm.get_submodule(name)))
        return {"weight_bits": cfg.bits, "per_channel": per_channel, "scheme": cfg.weight_scheme,
                "weight_clip": cfg.weight_clip}

    swap_layers(gm, layer_kwargs)
    if cfg.fold_bn:
        fold_batchnorm(gm)  # as for QAT: the fine-tuned graph is the exported graph
    def pact(bits: int) -> PACTQuantizer:
        return PACTQuantizer(bits, alpha=cfg.alpha_init or 10.0, alpha_decay=cfg.alpha_decay,
                             calibrate_alpha=cfg.alpha_init is None, alpha_lr=cfg.alpha_lr,
                             alpha_calibration=cfg.alpha_calibration)

    add_quantizer = None if cfg.quantize_add_inputs or cfg.add_input_bits is None else (
        lambda node: pact(cfg.add_input_bits))
    def act_quantizer(node: fx.Node, edge: bool) -> nn.Module:
        if node.op == "placeholder" and cfg.input_clip == "fixed":
            # The image's range is known, not learned: min-max over the calibration images, never moved by
            # the fine-tune (no parameters, no EMA). A learned clip here cut the brightest pixels and zeroed
            # their input gradients, i.e. the saliency maps (PACTConfig's docstring).
            return ActQuantizer(cfg.first_last_bits, "minmax")
        return pact(cfg.first_last_bits if edge else cfg.bits)

    return insert_act_quantizers(gm, act_quantizer, quantize_add_inputs=cfg.quantize_add_inputs,
                                 make_add_quantizer=add_quantizer)


@register_handler(WeightOnlyConfig)
def _prepare_weight_only(gm: fx.GraphModule, cfg: WeightOnlyConfig) -> fx.GraphModule:
    fold_batchnorm(gm)
    return swap_layers(gm, lambda name: None if name in cfg.skip else {"weight_bits": cfg.bits, "per_channel": cfg.per_channel})


def _weight_layers(model: nn.Module) -> str:
    """The names of ``model``'s conv / linear layers, the first dozen: what a ``skip`` may name."""
    held = sorted(n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return f"{', '.join(held[:12])}{', ...' if len(held) > 12 else ''}"


def _weightless(model: nn.Module, skip, whose: str = "this model's") -> str | None:
    """``skip`` keeps conv / linear layers (or blocks holding them) in FP32; a ReLU, pool or dropout has no
    weights to keep, and its activations are quantized all the same: naming one would change nothing, silently."""
    weightless = [name for name in skip if not any(isinstance(m, (nn.Conv2d, nn.Linear))
                                                   for m in model.get_submodule(name).modules())]
    if not weightless:
        return None
    return (f"names {weightless}, which hold no conv or linear weights: skip keeps weight layers in FP32 (activations "
            f"are quantized either way); {whose} are {_weight_layers(model)}")


def check_skip_holds_weights(model: nn.Module, skip) -> None:
    """Refuse a ``skip`` that names a layer without weights (``_weightless``)."""
    if (problem := _weightless(model, skip)) is not None:
        raise QsalError(f"skip {problem}")


def skip_problem(model: nn.Module, skip, arch: str) -> str | None:
    """What keeps a quantized checkpoint of ``model`` (architecture ``arch``) from keeping the layers ``skip`` names
    in FP32 (``None``: nothing): a name that is not one of its layers (leaf modules, as ``quantize_checkpoint``
    matches them), or a layer without weights. Worded to follow the setting as the caller's user wrote it
    (``--skip``, a study's ``pact.4.skip``): ``f"{setting} {problem}"``."""
    layers = {name for name, m in model.named_modules() if name and not list(m.children())}
    unknown = [name for name in skip if name not in layers]
    if unknown:
        return f"names {unknown} are not layers of {arch}; its conv and linear layers are {_weight_layers(model)}"
    return _weightless(model, skip, f"{arch}'s")


def prepare_structure(model: nn.Module, config: QuantConfig) -> fx.GraphModule:
    """The quantized model's structure (layers swapped, quantizers placed) with quantizers switched on
    but not calibrated: what a checkpoint's weights are loaded into."""
    if type(config) not in _HANDLERS:
        raise QsalError(f"no quantization handler for {type(config).__name__}")
    model = copy.deepcopy(model).eval()
    gm = _HANDLERS[type(config)](trace(model, getattr(config, "skip", ())), config)
    link_bias_quantizers(gm)
    for q in act_quantizers(gm):
        q.mode = "quant"
    gm.qsal_arch = getattr(model, "qsal_arch", None)
    gm.qsal_untrained = getattr(model, "qsal_untrained", False)
    gm.qsal_quant = config.to_dict()
    return gm


def _as_tensor(calibration, n: int) -> torch.Tensor:
    if calibration is None:
        raise QsalError("this quantization method needs calibration images: pass calibration=<train split or tensor>")
    if hasattr(calibration, "tensors"):  # an ImageSplit
        calibration = calibration.subset(n).tensors()[0]
    x = torch.as_tensor(calibration)[:n]
    if not x.is_floating_point() or x.ndim != 4:
        raise QsalError(f"calibration images must be normalised float (N, C, H, W), got {x.dtype} {tuple(x.shape)}; "
                        "pass an ImageSplit (its .tensors() are) or a float tensor")
    if not torch.isfinite(x).all():
        raise QsalError("the calibration images hold NaN or infinite values; the ranges calibrated from them would "
                        "be meaningless: check how they were made")
    if len(x) < MIN_CALIBRATION_IMAGES:
        raise QsalError(f"calibration needs at least {MIN_CALIBRATION_IMAGES} images, got {len(x)}; pass more training images")
    return x


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """Run ``x`` ``(N, C, H, W)`` through ``model`` with every activation quantizer observing, then fix
    their ranges (or PACT clips) from what they saw."""
    quantizers = act_quantizers(model)
    with evaluating(model):
        for q in quantizers:
            q.start_observing()
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
        for q in quantizers:
            q.finish_observing()
    return model


def quantize(model: nn.Module, config: QuantConfig, calibration=None) -> fx.GraphModule:
    """Quantize a trained float model; returns a new model, the input is left as it was.

    Args:
        model: a float model (from ``create_model`` / a checkpoint), traceable by ``torch.fx``.
        config: ``PTQConfig``, ``QATConfig``, ``PACTConfig`` or ``WeightOnlyConfig``.
        calibration: an ``ImageSplit`` (a seeded draw of ``config.num_calibration`` of its images, seed 0) or a
            tensor ``(N, C, H, W)`` of training images (its first ``config.num_calibration``); not needed for
            weight-only.
    Returns:
        A ``torch.fx.GraphModule`` that fake-quantizes (gradients flow through the STE), ready to
        evaluate, fine-tune (QAT/PACT), explain, save or export.

    Example:
        >>> qmodel = quantize(model, PTQConfig(observer="mse"), calibration=train_split)
    """
    from qsal.quant.modules import QuantConv2d, QuantLinear

    if any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules()):
        raise QsalError("this model is already quantized; quantize the float model it was made from")
    gm = prepare_structure(model, config)
    # the layers the traced graph calls, which is what skip matches: a leaf, or a container fx keeps whole (not an
    # nn.Sequential, which it traces into: naming one would skip nothing)
    layers = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"
              and not isinstance(gm.get_submodule(str(n.target)), (ActQuantizer, PACTQuantizer))}
    unknown = [name for name in config.skip if name not in layers]
    if unknown:
        raise QsalError(f"skip names {unknown} that are not layers of this model's graph; its layers are "
                        f"{', '.join(sorted(layers)[:12])}{', ...' if len(layers) > 12 else ''}")
    check_skip_holds_weights(model, config.skip)
    gm.qsal_calibration_images = 0  # how many images calibrated it: num_calibration is an upper bound
    if act_quantizers(gm):
        x = _as_tensor(calibration, getattr(config, "num_calibration", 512))
        gm.qsal_calibration_images = len(x)
        try:
            calibrate(gm, x)
        except RuntimeError as e:  # images of another shape or channel count than the model's
            raise QsalError(f"the calibration images, shape {tuple(x.shape)}, do not fit this model "
                            f"({str(e).splitlines()[0][:160]}); pass the model's own training images") from None
    return gm


def qat_callbacks(config: QuantConfig) -> list:
    """Per-epoch callbacks for ``fit`` that freeze activation ranges and BatchNorm statistics late (QAT)."""
    if not isinstance(config, QATConfig):
        return []

    # an epoch freezes when it begins at or after the fraction of the schedule (epoch e begins at e/epochs): int()
    # froze a 1-epoch QAT at 0.5 from its first step, so its ranges never tracked the fine-tune at all
    def freeze(model: nn.Module, epoch: int, epochs: int) -> None:
        if epoch >= config.freeze_observers_at * epochs:
            for q in act_quantizers(model):
                if isinstance(q, ActQuantizer):
                    q.frozen = True
        if epoch >= config.freeze_bn_at * epochs:
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()  # use and keep the running statistics for the rest of training

    return [freeze]
