"""Saliency maps: ``explain(model, images, method, target)`` over Captum's attribution algorithms.

Every method returns a map shaped like the input ``(N, C, H, W)``. Quantized (fake-quant) models are
explained the same way as float ones: gradients pass the quantizers through the straight-through
estimator. Occlusion needs no gradient at all, so it also explains exported ONNX models
(``qsal.saliency.onnx_occlusion``).
"""

from __future__ import annotations

import torch
from captum.attr import (InputXGradient, IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion,
                         Saliency)
from torch import nn

from qsal.errors import QsalError
from qsal.saliency.targets import multilabel_target_weights

__all__ = ["explain", "METHODS", "last_conv_layer", "randomization_check"]

METHODS = ("gradient", "gradient_abs", "input_x_gradient", "integrated_gradients", "smoothgrad", "gradcam", "occlusion")


def last_conv_layer(model: nn.Module) -> nn.Conv2d:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise QsalError("Grad-CAM needs a convolutional layer and this model has none; use method='gradient'")
    return convs[-1]


def _check(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    arch = getattr(model, "qsal_arch", None) or {}
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise QsalError(f"images have shape {tuple(x.shape)}; pass a batch (N, C, H, W) of normalised images")
    if x.shape[0] == 0:
        raise QsalError("no images to explain (a batch of 0); pass at least one")
    want_c = arch.get("in_channels")
    if want_c is not None and x.shape[1] != want_c:
        raise QsalError(f"images have {x.shape[1]} channel(s) but the model takes {want_c}")
    n_classes = arch.get("num_classes")
    if target is not None and torch.as_tensor(target).dim() == 2:
        t = torch.as_tensor(target)
        if t.shape[0] != x.shape[0] or (n_classes is not None and t.shape[1] != n_classes) or ((t != 0) & (t != 1)).any():
            raise QsalError(f"multi-label target has shape {tuple(t.shape)}; pass 0/1 label vectors (N, L) for the "
                            f"{x.shape[0]} images, one column per label of the model")
    elif target is not None and torch.as_tensor(target).dim() == 1 and len(target) != x.shape[0]:
        raise QsalError(f"target names {len(target)} classes for {x.shape[0]} images; pass one per image, or one "
                        "int for all")
    elif n_classes is not None and target is not None:
        t = torch.as_tensor(target)
        if (t < 0).any() or (t >= n_classes).any():
            raise QsalError(f"target {t.tolist()} is out of range: the model has classes 0..{n_classes - 1}")
    return x


def _weighted_logits(model: nn.Module):
    """``f(x, w) = (model(x) * w).sum(1)``: a scalar per image for Captum (``w`` is expanded with ``x``)."""
    return lambda inp, weights: (model(inp) * weights).sum(dim=1)


def explain(model: nn.Module, images: torch.Tensor, method: str = "integrated_gradients", target=None, *,
            baseline: float = 0.0, n_samples: int = 16, noise_std: float = 0.15, window: int = 4,
            stride: int = 2, ig_steps: int = 32) -> torch.Tensor:
    """Attribution maps for ``images`` ``(N, C, H, W)`` (normalised, as the model takes them).

    Args:
        method: one of ``METHODS``: vanilla gradient (signed / absolute), gradient x input, integrated
            gradients (``ig_steps``, constant ``baseline``), SmoothGrad (``n_samples``, noise std as a
            fraction of each image's value range), Grad-CAM (last conv layer, upsampled) and occlusion
            (``window`` x ``window`` patches set to ``baseline``, moved by ``stride``).
        target: class index per image (int or ``(N,)``); default: the model's predicted class. For a
            multi-label model, ``(N, L)`` 0/1 label vectors: each image is explained by the sum of its
            positive labels' logits, or by its most probable label when it has none
            (``qsal.saliency.targets``); the default (argmax) explains the most probable label.
        The score explained is the raw logit (Captum's convention), not its log-softmax.
    Returns:
        Tensor ``(N, C, H, W)``, detached, on the CPU (computed on the model's device).
    """
    if method not in METHODS:
        raise QsalError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")
    x = _check(model, torch.as_tensor(images, dtype=torch.float32), target)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = x.to(device)
    was_training = model.training
    model.eval()
    try:
        if target is None:
            with torch.no_grad():
                target = model(x).argmax(dim=1)
        target = torch.as_tensor(target, device=device)
        target = target.expand(x.shape[0]) if target.dim() == 0 else target
        forward, kw = model, {"target": target}
        if target.dim() == 2:  # multi-label: one score per image, the weighted sum of its target labels' logits
            with torch.no_grad():
                weights = torch.from_numpy(multilabel_target_weights(target.cpu().numpy(),
                                                                     model(x).float().cpu().numpy())).to(device)
            forward, kw = _weighted_logits(model), {"target": None, "additional_forward_args": (weights,)}
        x = x.clone().requires_grad_(True)
        if method in ("gradient", "gradient_abs"):
            out = Saliency(forward).attribute(x, abs=method == "gradient_abs", **kw)
        elif method == "input_x_gradient":
            out = InputXGradient(forward).attribute(x, **kw)
        elif method == "integrated_gradients":
            out = IntegratedGradients(forward).attribute(x, baselines=baseline, n_steps=ig_steps, **kw)
        elif method == "smoothgrad":
            spread = (x.detach().amax(dim=(1, 2, 3)) - x.detach().amin(dim=(1, 2, 3))).mean().item()
            out = NoiseTunnel(Saliency(forward)).attribute(x, nt_type="smoothgrad", nt_samples=n_samples,
                                                           stdevs=noise_std * spread, abs=False, **kw)
        elif method == "gradcam":
            cam = LayerGradCam(forward, last_conv_layer(model)).attribute(x, relu_attributions=True, **kw)
            out = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear").expand_as(x)
        else:
            out = Occlusion(forward).attribute(x, sliding_window_shapes=(x.shape[1], window, window),
                                               strides=(x.shape[1], stride, stride), baselines=baseline, **kw)
    finally:
        model.train(was_training)
    return out.detach().cpu().contiguous()


def randomization_check(model: nn.Module, images: torch.Tensor, method: str = "gradient_abs", target=None,
                        seed: int = 0) -> dict:
    """Model-randomisation sanity check (Adebayo et al. 2018): maps of the same model with re-initialised
    weights must differ from the trained model's. Returns the mean Spearman rank correlation between the
    two (near 0 passes; near 1 means the method ignores what the model learned).
    """
    import copy

    from qsal.saliency.metrics import spearman_per_image

    if target is None:
        with torch.no_grad():
            target = model.eval()(torch.as_tensor(images)).argmax(dim=1)
    trained = explain(model, images, method, target=target).numpy()
    randomized = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in randomized.modules():
        if hasattr(m, "reset_parameters") and m is not randomized:
            m.reset_parameters()
    rho = spearman_per_image(trained, explain(randomized, images, method, target=target).numpy())
    return {"method": method, "spearman_mean": float(rho.mean()), "passed": bool(abs(rho.mean()) < 0.5)}
