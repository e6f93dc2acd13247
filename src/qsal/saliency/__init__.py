"""Explanations: saliency maps (``explain``), saliency-guided training (``SaliencyGuidedStep``) and
metrics that compare explanations (``qsal.saliency.metrics``)."""

from qsal.saliency.guided import SaliencyGuidedStep, input_saliency, mask_lowest
from qsal.saliency.methods import METHODS, explain

__all__ = ["explain", "METHODS", "SaliencyGuidedStep", "input_saliency", "mask_lowest"]
