"""Saliency maps: ``explain(model, images, method, target)`` over Captum's attribution algorithms.

Every method returns a map shaped like the input ``(N, C, H, W)``. Quantized (fake-quant) models are
explained the same way as float ones: gradients pass the quantizers through the straight-through
estimator. Occlusion needs no gradient at all, so it also explains exported ONNX models
(``qsal.saliency.onnx_occlusion``).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from captum.attr import InputXGradient, IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency
from torch import nn

from qsal.errors import QsalError
from qsal.models.modes import evaluating
from qsal.saliency.onnx_occlusion import occlusion_patch
from qsal.saliency.targets import multilabel_target_weights

__all__ = ["explain", "METHODS", "gradcam_layer", "cam_to_input", "black_baseline", "randomization_check"]

METHODS = ("gradient", "gradient_abs", "input_x_gradient", "integrated_gradients", "smoothgrad", "gradcam", "occlusion")


_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)


def gradcam_layer(model: nn.Module) -> tuple[nn.Module, bool]:
    """The layer Grad-CAM reads, and whether it reads that layer's *input*. Grad-CAM (Selvaraju et al. 2017) weighs
    the last convolutional feature maps the classifier sees: the rectified maps before the final pooling (the
    reference code's ``features.29``, the ReLU before VGG-16's last max-pool; ``layer4`` in ResNets: after the last
    residual add and ReLU). That is the input of the model's last pooling layer (every qsal model, FP32 or
    quantized); a model without one falls back to its last ``Conv2d``'s output (before BN and ReLU)."""
    pools = [m for m in model.modules() if isinstance(m, _POOLS)]
    if pools:
        return pools[-1], True
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise QsalError("Grad-CAM needs a convolutional layer and this model has none; use method='gradient'")
    return convs[-1], False


def _as_target(target):
    """``target`` as an integer (or 0/1) tensor, or a one-line error: a float class id would be rounded by gather."""
    if target is None:
        return None
    try:
        t = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError):
        raise QsalError(f"target {target!r} is not class ids; pass an int, or one int per image") from None
    if t.is_complex() or (t.is_floating_point() and t.dim() != 2):  # (N, L) label vectors may be 0./1. floats
        raise QsalError(f"target has {t.dtype} values; pass integer class ids (or 0/1 label vectors for multi-label)")
    if t.is_floating_point() and ((t != 0) & (t != 1)).any():
        raise QsalError("a multi-label target holds values other than 0 and 1; pass 0/1 label vectors (N, L)")
    return t.long()


def _check(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """``x`` as a checked ``(N, C, H, W)`` batch; ``target``: ``_as_target``'s tensor, checked against it."""
    arch = getattr(model, "qsal_arch", None) or {}
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise QsalError(f"images have shape {tuple(x.shape)}; pass a batch (N, C, H, W) of normalised images")
    if x.shape[0] == 0:
        raise QsalError("no images to explain (a batch of 0); pass at least one")
    if not torch.isfinite(x).all():
        raise QsalError("the images hold NaN or infinite values; a map of them would mean nothing")
    want_c, side = arch.get("in_channels"), arch.get("image_size")
    if want_c is not None and x.shape[1] != want_c:
        raise QsalError(f"images have {x.shape[1]} channel(s) but the model takes {want_c}")
    if side is not None and tuple(x.shape[-2:]) != (side, side):
        raise QsalError(f"images are {x.shape[-1]}x{x.shape[-2]} px but the model was trained on {side}x{side}; "
                        "resize them as its preprocessing does (qsal.runtime.conform_image)")
    n_classes = arch.get("num_classes")
    t = target
    if t is not None and t.dim() == 2:
        if t.shape[0] != x.shape[0] or (n_classes is not None and t.shape[1] != n_classes) or ((t != 0) & (t != 1)).any():
            raise QsalError(f"multi-label target has shape {tuple(t.shape)}; pass 0/1 label vectors (N, L) for the "
                            f"{x.shape[0]} images, one column per label of the model")
    elif t is not None and t.dim() == 1 and len(t) != x.shape[0]:
        raise QsalError(f"target names {len(t)} classes for {x.shape[0]} images; pass one per image, or one "
                        "int for all")
    elif n_classes is not None and t is not None:
        if (t < 0).any() or (t >= n_classes).any():
            raise QsalError(f"target {t.tolist()} is out of range: the model has classes 0..{n_classes - 1}")
    return x


def _weighted_logits(model: nn.Module):
    """``f(x, w) = (model(x) * w).sum(1)``: a scalar per image for Captum (``w`` is expanded with ``x``)."""
    return lambda inp, weights: (model(inp) * weights).sum(dim=1)


def _check_options(x: torch.Tensor, n_samples: int, noise_std: float, window: int, stride: int, ig_steps: int) -> None:
    side = min(x.shape[-2:])
    for name, value, lo, hi in (("n_samples", n_samples, 1, 10_000), ("ig_steps", ig_steps, 1, 10_000),
                                ("window", window, 1, side), ("stride", stride, 1, side)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not lo <= value <= hi:
            raise QsalError(f"{name} must be an integer in {lo}-{hi} (for {x.shape[-1]}x{x.shape[-2]} px images), "
                            f"got {value!r}")
    if not isinstance(noise_std, numbers.Real) or not math.isfinite(noise_std) or noise_std < 0:
        raise QsalError(f"noise_std must be a finite number >= 0 (a fraction of each image's value range), got {noise_std!r}")


def _baseline_values(baseline, channels: int) -> tuple[float, ...]:
    """``baseline`` (a number, a sequence, an array or a tensor) as one value or one per channel, checked."""
    raw = baseline.detach().cpu().numpy() if isinstance(baseline, torch.Tensor) else baseline
    try:
        values = np.asarray(raw, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        values = np.asarray([np.nan])
    if values.size not in (1, channels) or not np.isfinite(values).all():
        raise QsalError(f"baseline must be a finite number or one per channel ({channels}), got {baseline!r}")
    return tuple(float(v) for v in values)


def black_baseline(mean, std) -> tuple[float, ...]:
    """Pixel value 0 in a model's normalised units, one per channel (``(0 - mean) / std``): the black image
    integrated gradients starts from (Sundararajan et al. 2017) and occlusion fills with; normalised 0 would be
    the training set's mean intensity."""
    return tuple(float(-m / s) for m, s in zip(np.ravel(mean), np.ravel(std)))


def _baseline_tensor(values: tuple[float, ...], x: torch.Tensor):
    """One value, or one per channel broadcast over ``(N, C, H, W)``."""
    if len(values) == 1:
        return values[0]
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1).expand_as(x)


def cam_to_input(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A Grad-CAM map ``(N, 1, h, w)`` placed on the input grid ``size``. A feature map that tiles the input (``H``
    a multiple of ``h``: padded, strided nets) is upsampled bilinearly, each feature at the centre of its tile; one
    that only lost an even border to unpadded stride-1 convolutions (``small_cnn``: 28 -> 24) is padded back by
    that border, replicating the edge features, so feature ``(i, j)`` stays over input pixel ``(i + b, j + b)``,
    the centre of its receptive field (resizing would stretch it up to ``b`` px off)."""
    (h, w), (H, W) = cam.shape[-2:], size
    bh, bw = H - h, W - w
    if H % h and W % w and bh % 2 == 0 and bw % 2 == 0 and 0 < bh < h and 0 < bw < w:
        return torch.nn.functional.pad(cam, (bw // 2, bw // 2, bh // 2, bh // 2), mode="replicate")
    return LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")


def _smoothgrad(forward, x: torch.Tensor, kw: dict, n_samples: int, noise_std: float, seed: int) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the mean gradient over ``n_samples`` copies of each image with Gaussian
    noise of std ``noise_std`` x that image's own value range (max - min); seeded, so the same batch gives the same
    maps (the noise is drawn for the whole batch: an image explained in another batch gets other draws)."""
    spread = (x.detach().amax(dim=(1, 2, 3)) - x.detach().amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros_like(x)
    for _ in range(n_samples):
        noise = torch.randn(x.shape, generator=generator).to(x.device) * (noise_std * spread)
        noisy = (x.detach() + noise).requires_grad_(True)
        total += Saliency(forward).attribute(noisy, abs=False, **kw)
    return total / n_samples


def _integrated_gradients(forward, x: torch.Tensor, kw: dict, baseline, ig_steps: int, chunk: int = 64) -> torch.Tensor:
    """Integrated gradients over chunks of at most ``chunk`` images, each run ``chunk`` path points per forward
    (Captum's ``internal_batch_size`` cannot go below the number of images): memory bounded for any N."""
    parts = []
    for i in range(0, len(x), chunk):
        part = {**kw, "target": kw["target"][i:i + chunk] if kw.get("target") is not None else None}
        if "additional_forward_args" in kw:
            part["additional_forward_args"] = tuple(a[i:i + chunk] for a in kw["additional_forward_args"])
        base = baseline[i:i + chunk] if isinstance(baseline, torch.Tensor) else baseline
        parts.append(IntegratedGradients(forward).attribute(x[i:i + chunk], baselines=base, n_steps=ig_steps,
                                                            internal_batch_size=chunk, **part))
    return torch.cat(parts)


def explain(model: nn.Module, images: torch.Tensor, method: str = "integrated_gradients", target=None, *,
            baseline: float | tuple[float, ...] = 0.0, n_samples: int = 16, noise_std: float = 0.15,
            window: int | None = None, stride: int | None = None, ig_steps: int = 32, seed: int = 0) -> torch.Tensor:
    """Attribution maps for ``images`` ``(N, C, H, W)`` (normalised, as the model takes them).

    Args:
        method: one of ``METHODS``: vanilla gradient (signed / absolute), gradient x input, integrated
            gradients (``ig_steps``, constant ``baseline``), SmoothGrad (``n_samples``, noise std as a
            fraction of each image's own value range, seeded by ``seed``), Grad-CAM (the rectified feature maps
            before the last pooling, ``gradcam_layer``; placed on the input grid by ``cam_to_input``) and
            occlusion (``window`` x ``window`` patches set to ``baseline``, moved by ``stride``; None: a seventh of
            the shorter side moved by half of it, 4 / 2 px at 28 px: ``onnx_occlusion.occlusion_patch``).
        baseline: in *normalised* units, a number or one per channel. The default 0.0 is the dataset's mean
            intensity (mid-grey for MedMNIST's mean 0.5), not the black image of Sundararajan et al. (2017):
            pass ``black_baseline(mean, std)`` for black, as ``qsal explain``, ``qsal report`` and the demo do.
        target: class index per image (int or ``(N,)``); default: the model's most probable class (argmax),
            which for a binary model deployed at another operating point can differ from the class it reports:
            pass ``qsal.runtime.decide``'s class to explain the decision. For a multi-label model, ``(N, L)``
            0/1 label vectors: each image is explained by the sum of its positive labels' logits, or by its
            most probable label when it has none (``qsal.saliency.targets``); the default (argmax) explains the
            most probable label.
        The score explained is the raw logit (Captum's convention), not its log-softmax.
    Returns:
        Tensor ``(N, C, H, W)``, detached, on the CPU (computed on the model's device).
    """
    if method not in METHODS:
        raise QsalError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")
    target = _as_target(target)
    x = _check(model, torch.as_tensor(images, dtype=torch.float32), target)
    default_window, default_stride = occlusion_patch(*x.shape[-2:])
    window = default_window if window is None else window
    stride = default_stride if stride is None else stride
    _check_options(x, n_samples, noise_std, window, stride, ig_steps)
    baseline = _baseline_values(baseline, x.shape[1])
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = x.to(device)
    with evaluating(model):
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
            out = _integrated_gradients(forward, x, kw, _baseline_tensor(baseline, x), ig_steps)
        elif method == "smoothgrad":
            out = _smoothgrad(forward, x, kw, n_samples, noise_std, seed)
        elif method == "gradcam":
            layer, reads_input = gradcam_layer(model)
            cam = LayerGradCam(forward, layer).attribute(x, relu_attributions=True,
                                                         attribute_to_layer_input=reads_input, **kw)
            out = cam_to_input(cam, tuple(x.shape[-2:])).expand_as(x)
        else:
            out = Occlusion(forward).attribute(x, sliding_window_shapes=(x.shape[1], window, window),
                                               strides=(x.shape[1], stride, stride),
                                               baselines=_baseline_tensor(baseline, x), **kw)
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
        with torch.no_grad(), evaluating(model):  # the caller's model comes back as it was given
            target = model(torch.as_tensor(images)).argmax(dim=1)
    trained = explain(model, images, method, target=target).numpy()
    randomized = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG stream is left where it was
        torch.manual_seed(seed)
        for m in randomized.modules():
            if hasattr(m, "reset_parameters") and m is not randomized:
                m.reset_parameters()
    rho = spearman_per_image(trained, explain(randomized, images, method, target=target).numpy())
    defined = rho[~np.isnan(rho)]  # a constant map (all-zero Grad-CAM) ranks nothing: left out, and counted
    mean = float(defined.mean()) if defined.size else float("nan")
    return {"method": method, "spearman_mean": mean, "undefined": int(rho.size - defined.size),
            "passed": bool(defined.size and abs(mean) < 0.5)}
