"""Quantization: one entry point ``quantize(model, config, calibration)`` and one config per method.

PTQ (static INT8, four observers), QAT (k-bit fake-quant fine-tuning), PACT (learned clipping, k-bit
activations, symmetric or DoReFa weights) and weight-only INT8/INT4, all built from the same quantizer modules.
"""

from qsal.quant.api import calibrate, prepare_structure, qat_callbacks, quantize
from qsal.quant.config import PACTConfig, PTQConfig, QATConfig, QuantConfig, WeightOnlyConfig, config_from_dict
from qsal.quant.modules import ActQuantizer, PACTQuantizer, QuantConv2d, QuantLinear
from qsal.quant.observers import OBSERVERS

__all__ = ["quantize", "prepare_structure", "calibrate", "qat_callbacks", "PTQConfig", "QATConfig", "PACTConfig",
           "WeightOnlyConfig", "QuantConfig", "config_from_dict", "ActQuantizer", "PACTQuantizer", "QuantConv2d",
           "QuantLinear", "OBSERVERS"]
