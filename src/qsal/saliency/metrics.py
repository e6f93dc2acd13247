"""Measuring explanations: faithfulness, deletion/insertion, agreement between models, sparseness,
and the model-randomisation sanity check.

Hand-written (numpy): these comparisons are the research question, and they must work the same on
maps from a PyTorch model and from an ONNX artifact. ``model_fn`` is any callable mapping a float
array ``(N, C, H, W)`` to logits ``(N, K)``.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from scipy.ndimage import uniform_filter

from qsal.errors import QsalError
from qsal.saliency.targets import multilabel_target_weights

__all__ = ["pixel_saliency", "remove_features", "faithfulness_curve", "deletion_insertion", "agreement",
           "spearman_per_image", "topk_iou", "ssim_per_image", "gini", "mean_gini", "salient_first", "FRACTIONS",
           "FILLS"]

FRACTIONS = tuple(np.round(np.arange(0.0, 0.91, 0.1), 2))
ModelFn = Callable[[np.ndarray], np.ndarray]


def as_array(values, name: str = "maps", ndim: int | None = 4) -> np.ndarray:
    """A numpy array of ``values`` (a torch tensor taken off its graph and device), ``ndim`` dimensions checked:
    ``(N, H, W)`` maps were ranked as N x H "pixels" of width W without a word."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if ndim is not None and values.ndim != ndim:
        raise QsalError(f"{name} must be (N, C, H, W) arrays, as qsal.explain returns them; got shape "
                        f"{tuple(values.shape)}")
    return values


def _removal_inputs(model_fn: ModelFn, x, maps, labels, what: str):
    """``(x, maps, labels)`` checked for a removal curve, else one-line ``QsalError``: maps of the images' count and
    size; labels ``(N,)`` class ids of the model's classes, or ``(N, L)`` 0/1 vectors of a multi-label model. A
    MedMNIST label column ``(N, 1)`` (as its .npz stores it) is one class id per image: it was read as one multi-label
    vector (accuracy .500 for .688, with no word)."""
    x, maps, labels = as_array(x, "images"), as_array(maps), as_array(labels, what, ndim=None)
    if maps.shape[0] != x.shape[0] or maps.shape[2:] != x.shape[2:]:
        raise QsalError(f"maps {tuple(maps.shape)} do not match images {tuple(x.shape)}: one (C, H, W) map per image, "
                        "at the image's size (qsal.explain returns them so)")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim not in (1, 2) or len(labels) != len(x):
        raise QsalError(f"{what} must be (N,) class ids or (N, L) 0/1 label vectors for the {len(x)} images, got "
                        f"shape {tuple(labels.shape)}")
    k = np.asarray(model_fn(x[:1].astype(np.float32))).shape[1]
    if labels.ndim == 2:
        if labels.shape[1] != k or not np.isin(labels, (0, 1)).all():
            raise QsalError(f"{what} as label vectors must be 0/1 of width {k} (the model's outputs), got shape "
                            f"{tuple(labels.shape)}")
    elif not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= k:
        raise QsalError(f"{what} must be class ids 0-{k - 1} (the model scores {k} classes), got "
                        f"{labels.dtype} values {labels.min()}..{labels.max()}")
    return x, maps, labels


def pixel_saliency(maps: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` -> ``(N, H*W)`` per-pixel importance: |map| averaged over channels."""
    maps = as_array(maps).astype(np.float64)
    return np.abs(maps).mean(axis=1).reshape(maps.shape[0], -1)


FILLS = ("constant", "random")


def _check_fill(fill: str) -> None:
    from qsal.errors import QsalError

    if fill not in FILLS:
        raise QsalError(f"fill {fill!r} is not a removal qsal knows; choose one of {', '.join(FILLS)}")


def salient_first(sal: np.ndarray, seed: int = 0) -> np.ndarray:
    """Pixel order ``(N, P)``, most salient first; equal values in random order (seeded, its own stream): a map that
    ties many pixels (a zero gradient) must not rank them by raster position, which would pass for information."""
    keys = np.random.default_rng([seed, 1]).random(sal.shape)
    return np.lexsort((keys, -sal))


def remove_features(x: np.ndarray, order: np.ndarray, fraction: float, fill: str, rng: np.random.Generator) -> np.ndarray:
    """Replace the first ``fraction`` of pixels in ``order`` ``(N, H*W)`` in every channel.

    ``fill``: ``constant`` (each image's minimum, the background of these scans) or ``random`` (uniform
    in each image's range), as in Ismail et al.
    """
    _check_fill(fill)
    n, c, h, w = x.shape
    count = int(round(fraction * h * w))
    out = x.copy().reshape(n, c, h * w)
    if count == 0:
        return out.reshape(x.shape)
    lo = x.reshape(n, -1).min(axis=1)
    hi = x.reshape(n, -1).max(axis=1)
    for i in range(n):
        idx = order[i, :count]
        if fill == "random":
            out[i][:, idx] = rng.uniform(lo[i], hi[i], size=(c, count))
        else:
            out[i][:, idx] = lo[i]
    return out.reshape(x.shape)


def _decisions(model_fn: ModelFn, x: np.ndarray, y: np.ndarray, batch: int = 256) -> np.ndarray:
    """Each image's decision: the argmax class ``(N,)``; for multi-label ``y`` ``(N, L)``, ``sigmoid(z) > 0.5``
    (i.e. ``z > 0``) per label ``(N, L)``."""
    logits = np.concatenate([model_fn(x[i:i + batch]) for i in range(0, len(x), batch)])
    return logits > 0 if np.ndim(y) == 2 else logits.argmax(axis=1)


def _accuracy(decisions: np.ndarray, y: np.ndarray) -> float:
    """Multi-class: argmax == ``y`` ``(N,)``. Multi-label ``y`` ``(N, L)``: the MedMNIST multi-label ACC,
    the fraction of (image, label) decisions that match ``y``."""
    return float(np.mean(decisions == (np.asarray(y) == 1))) if np.ndim(y) == 2 else float(np.mean(decisions == y))


def faithfulness_curve(model_fn: ModelFn, x: np.ndarray, y: np.ndarray, maps: np.ndarray,
                       fractions=FRACTIONS, fill: str = "constant", seed: int = 0) -> dict:
    """Accuracy after removing the top-t most salient pixels, and after removing t random pixels.

    ``y``: ``(N,)`` class indices, or ``(N, L)`` 0/1 label vectors for a multi-label model (accuracy is
    then the MedMNIST multi-label ACC over all labels).

    Returns ``fractions``, ``acc_top``, ``acc_random``, their areas (mean accuracy over the fractions)
    and ``gap = area_random - area_top``: the larger, the more the map points at what the model uses; and
    ``changed``, the share of images whose decision some removal (either order, any fraction) moved off the intact
    image's. A gap of 0 with ``changed`` 0 ranks no map: no removal moved any decision (a model that calls every
    sampled image the majority class, intact or blanked: BreastMNIST's small nets), so accuracy could not tell the
    maps apart; deletion / insertion AUC follow the probability instead.
    """
    x, maps, y = _removal_inputs(model_fn, x, maps, y, "labels")
    _check_fill(fill)
    if not all(0 <= f <= 1 for f in fractions) or not len(fractions):
        raise QsalError(f"fractions must be fractions of the pixels in [0, 1], got {list(fractions)}")
    rng = np.random.default_rng(seed)
    sal = pixel_saliency(maps)
    top_order = salient_first(sal, seed)
    rand_order = np.stack([rng.permutation(sal.shape[1]) for _ in range(len(x))])
    intact = _decisions(model_fn, x.astype(np.float32), y)
    moved = np.zeros(len(x), bool)
    acc_top, acc_rand = [], []
    for f in fractions:
        for order, accs in ((top_order, acc_top), (rand_order, acc_rand)):
            decided = _decisions(model_fn, remove_features(x, order, f, fill, rng).astype(np.float32), y)
            accs.append(_accuracy(decided, y))
            moved |= (decided != intact).reshape(len(x), -1).any(axis=1)
    area_top, area_rand = float(np.mean(acc_top)), float(np.mean(acc_rand))
    return {"fractions": [float(f) for f in fractions], "acc_top": acc_top, "acc_random": acc_rand,
            "area_top": area_top, "area_random": area_rand, "gap": area_rand - area_top, "fill": fill,
            "changed": float(moved.mean())}


def deletion_insertion(model_fn: ModelFn, x: np.ndarray, target: np.ndarray, maps: np.ndarray, steps: int = 20,
                       seed: int = 0) -> dict:
    """Deletion and insertion AUC (Petsiuk et al. 2018) of the target class probability.

    ``target``: ``(N,)`` class indices (softmax probability), or ``(N, L)`` 0/1 label vectors of a
    multi-label model: the mean sigmoid probability of the labels each image is explained by
    (``qsal.saliency.targets``: its positive labels, else its most probable label on the intact image).

    Deletion removes the most salient pixels first (lower AUC = more faithful); insertion reveals them
    first on a blank (each image's minimum) canvas (higher = more faithful). Pixels of equal saliency go in a
    random order (``seed``, ``salient_first``).
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise QsalError(f"steps must be a whole number >= 1 (points of the curve), got {steps!r}")
    x, maps, target = _removal_inputs(model_fn, x, maps, target, "targets")
    sal = pixel_saliency(maps)
    order = salient_first(sal, seed)
    n, c, h, w = x.shape
    blank = np.broadcast_to(x.reshape(n, -1).min(axis=1).reshape(n, 1, 1, 1), x.shape)
    deletion, insertion = [], []
    rows = np.arange(n)[:, None]
    weights = None
    if np.ndim(target) == 2:
        weights = multilabel_target_weights(target, model_fn(x.astype(np.float32)))
        weights = weights / weights.sum(axis=1, keepdims=True)
    for s in range(steps + 1):
        count = int(round(s / steps * h * w))
        mask = np.zeros((n, h * w), dtype=bool)
        mask[rows, order[:, :count]] = True
        mask = np.broadcast_to(mask.reshape(n, 1, h, w), x.shape)
        for curve, img in ((deletion, np.where(mask, blank, x)), (insertion, np.where(mask, x, blank))):
            logits = model_fn(img.astype(np.float32)).astype(np.float64)
            if weights is not None:
                curve.append((weights / (1.0 + np.exp(-logits))).sum(axis=1))
                continue
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            curve.append((e / e.sum(axis=1, keepdims=True))[np.arange(n), target])
    d, i = np.stack(deletion, axis=1), np.stack(insertion, axis=1)  # (N, steps+1)
    trap = lambda a: ((a[:, 1:] + a[:, :-1]) / 2).mean(axis=1)  # noqa: E731 - area under [0, 1]
    return {"deletion_auc": float(trap(d).mean()), "insertion_auc": float(trap(i).mean()),
            "deletion_per_image": trap(d).tolist(), "insertion_per_image": trap(i).tolist()}


def spearman_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of two maps, per image ``(N,)``: tied pixels share their average rank (scipy's
    ``rankdata``), so a constant map (no ranking at all) gives NaN, not a correlation of raster positions."""
    from scipy.stats import rankdata

    ra, rb = rankdata(pixel_saliency(a), axis=1), rankdata(pixel_saliency(b), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(axis=1) / np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum(axis=1))


def _constant(u: np.ndarray) -> bool:
    return not np.ptp(u) > 0


def topk_iou(a: np.ndarray, b: np.ndarray, k: float = 0.1) -> np.ndarray:
    """Intersection over union of the top ``k`` fraction of pixels of two maps, per image; NaN where a map is
    constant (it has no top pixels); ties at the cut-off in random order (``salient_first``), independently for
    each map, so a map whose top ``k`` is mostly ties (a sparse map) is below 1 even against itself."""
    sa, sb = pixel_saliency(a), pixel_saliency(b)
    count = max(1, int(round(k * sa.shape[1])))
    oa, ob = salient_first(sa, 0), salient_first(sb, 1)  # each map's ties broken apart: shared keys would align them
    out = []
    for u, v, pa, pb in zip(sa, sb, oa, ob):
        if _constant(u) or _constant(v):
            out.append(np.nan)
            continue
        ta, tb = set(pa[:count].tolist()), set(pb[:count].tolist())
        out.append(len(ta & tb) / len(ta | tb))
    return np.asarray(out, dtype=np.float64)


def ssim_per_image(a: np.ndarray, b: np.ndarray, window: int = 7) -> np.ndarray:
    """Structural similarity (Wang et al. 2004, with a uniform ``window`` rather than their Gaussian, and mirrored
    borders) of two maps ``(N, C, H, W)`` each normalised to [0, 1]; NaN where a map is constant."""
    n, h, w = a.shape[0], *np.shape(a)[-2:]
    out = []
    for u, v in zip(pixel_saliency(a).reshape(n, h, w), pixel_saliency(b).reshape(n, h, w)):
        if _constant(u) or _constant(v):
            out.append(np.nan)
            continue
        u = (u - u.min()) / max(np.ptp(u), 1e-12)
        v = (v - v.min()) / max(np.ptp(v), 1e-12)
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        mu_u, mu_v = uniform_filter(u, window), uniform_filter(v, window)
        var_u = uniform_filter(u * u, window) - mu_u ** 2
        var_v = uniform_filter(v * v, window) - mu_v ** 2
        cov = uniform_filter(u * v, window) - mu_u * mu_v
        s = ((2 * mu_u * mu_v + c1) * (2 * cov + c2)) / ((mu_u ** 2 + mu_v ** 2 + c1) * (var_u + var_v + c2))
        out.append(float(s.mean()))
    return np.asarray(out)


def agreement(a: np.ndarray, b: np.ndarray, k: float = 0.1, n_worst: int = 5) -> dict:
    """How alike two models' maps of the same images are: Spearman, top-k IoU and SSIM, per image and
    on average, plus the ``n_worst`` images where they disagree most (lowest Spearman)."""
    rho, iou, ssim = spearman_per_image(a, b), topk_iou(a, b, k), ssim_per_image(a, b)
    worst = [i for i in np.argsort(rho, kind="stable") if np.isfinite(rho[i])][:n_worst]  # undefined: not "changed"
    with np.errstate(invalid="ignore"), warnings.catch_warnings():  # all maps constant: NaN, reported as undefined
        warnings.simplefilter("ignore", RuntimeWarning)
        means = [float(np.nanmean(m)) for m in (rho, iou, ssim)]
    return {"spearman": means[0], "topk_iou": means[1], "ssim": means[2], "k": k,
            "per_image": {"spearman": rho.tolist(), "topk_iou": iou.tolist(), "ssim": ssim.tolist()},
            "most_changed": [{"index": int(i), "spearman": float(rho[i]), "topk_iou": float(iou[i])} for i in worst]}


def gini(maps: np.ndarray) -> np.ndarray:
    """Gini index of |map| per image (0 = uniform, 1 = all mass on one pixel; Chalasani et al. 2020). An empty map
    (all zero: Grad-CAM of a class the evidence is against) attributes nothing: NaN, not the 0 of a uniform map."""
    s = np.sort(pixel_saliency(maps), axis=1)
    n = s.shape[1]
    idx = np.arange(1, n + 1)
    total = s.sum(axis=1)
    g = ((2 * idx - n - 1) * s).sum(axis=1) / (n * np.maximum(total, 1e-12))
    return np.where(total > 0, g, np.nan)


def mean_gini(maps: np.ndarray) -> float | None:
    """The mean ``gini`` over the maps that attribute something (``None`` when none does: a JSON null, a '—' in a
    table, never a NaN token)."""
    g = gini(maps)
    return float(np.mean(g[np.isfinite(g)])) if np.isfinite(g).any() else None
