"""qsal: quantized, saliency-guided image classifiers for edge hardware.

The public API, imported lazily so that ``import qsal.runtime`` (the deployment side) never pulls
in PyTorch:

    qsal.load_split, qsal.create_model, qsal.fit, qsal.TrainConfig, qsal.evaluate, qsal.compute_metrics,
    qsal.choose_decision, qsal.predict_logits, qsal.data_meta,
    qsal.quantize, qsal.PTQConfig, qsal.QATConfig, qsal.PACTConfig, qsal.WeightOnlyConfig,
    qsal.export_onnx, qsal.explain, qsal.SaliencyGuidedStep
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_split": "qsal.data", "get_info": "qsal.data", "list_datasets": "qsal.data",
    "create_model": "qsal.models", "list_models": "qsal.models",
    "fit": "qsal.train", "TrainConfig": "qsal.train", "ClassificationStep": "qsal.train",
    "evaluate": "qsal.metrics", "compute_metrics": "qsal.metrics", "choose_decision": "qsal.metrics",
    "predict_logits": "qsal.metrics", "data_meta": "qsal.data",
    "quantize": "qsal.quant", "PTQConfig": "qsal.quant", "QATConfig": "qsal.quant", "PACTConfig": "qsal.quant",
    "WeightOnlyConfig": "qsal.quant",
    "save_checkpoint": "qsal.checkpoint", "load_checkpoint": "qsal.checkpoint",
    "export_onnx": "qsal.export",
    "explain": "qsal.saliency", "SaliencyGuidedStep": "qsal.saliency",
    "QsalError": "qsal.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qsal' has no attribute {name!r}")


def __dir__() -> list[str]:  # tab completion lists the lazily imported API too
    return sorted(set(globals()) | set(_LAZY))
