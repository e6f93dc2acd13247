"""Deployment: ONNX export (FP32 and integer QDQ) and latency/size benchmarking of the artifact."""

from qsal.export.onnx import export_onnx

__all__ = ["export_onnx"]
