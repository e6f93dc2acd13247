"""What a saliency map of a multi-label image explains, defined once for ``explain``, the faithfulness
metrics and saliency-guided training.

A multi-class image is explained by one class index. A multi-label image (ChestMNIST: 14 findings,
about half of the images with none) is explained by its **positive labels**, the score being the sum
of their scores; an image with **no positive label** is explained by its **most probable label**
(highest logit), so that no image gets an all-zero map, whose "least salient pixels" would be a tie
broken by pixel position.

numpy only, so the metrics can use it on ONNX outputs without importing torch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["multilabel_target_weights"]


def multilabel_target_weights(labels, logits) -> np.ndarray:
    """``(N, L)`` float32 0/1 weights of the labels each image is explained by.

    Args:
        labels: ``(N, L)`` 0/1 label vectors (true labels, or predicted ones: ``logits > 0``).
        logits: ``(N, L)`` model outputs for the same images (picks the label of an all-negative row).
    Returns:
        ``labels`` as float where a row has a positive label; one-hot of ``argmax(logits)`` otherwise.
    """
    y = np.asarray(labels)
    z = np.asarray(logits)
    if y.ndim != 2 or z.shape != y.shape:
        raise ValueError(f"multi-label targets must be (N, L) like the logits {z.shape}, got {y.shape}")
    w = (y > 0).astype(np.float32)
    none = ~w.any(axis=1)
    w[np.flatnonzero(none), z[none].argmax(axis=1)] = 1.0
    return w
