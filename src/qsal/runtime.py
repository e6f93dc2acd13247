"""Run an exported model with onnxruntime and numpy only: importing this module never imports torch.

    >>> from qsal.runtime import Runtime
    >>> rt = Runtime("model.onnx", threads=1)
    >>> probs = rt.predict_proba(images_uint8)   # (N, H, W) or (N, H, W, C) uint8 -> (N, K)

Preprocessing (scale to [0, 1], per-channel mean/std) is read from the model's own metadata, so it
is the same as in training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from qsal.errors import QsalError

__all__ = ["Runtime", "read_metadata", "validate_metadata"]


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``qsal`` metadata JSON embedded in an exported ONNX file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise QsalError(f"model file {path} not found")
    if path.stat().st_size == 0:
        raise QsalError(f"model file {path} is empty (0 bytes); the export was interrupted or the copy failed: export it again")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        raise QsalError(f"{path} is not a readable ONNX file ({type(e).__name__}); re-export it with qsal export") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "qsal" not in props:
        raise QsalError(f"{path} was not exported by qsal (no 'qsal' metadata); export it with `qsal export`")
    try:
        meta = json.loads(props["qsal"])
    except json.JSONDecodeError as e:
        raise QsalError(f"{path}: its 'qsal' metadata is not valid JSON ({e}); re-export it with qsal export") from None
    return validate_metadata(meta, path)


def validate_metadata(meta, path) -> dict:
    """Check the fields inference relies on: ``input_shape`` (C, H, W) and, if given, the preprocessing
    ``data.mean`` / ``data.std`` (finite, std > 0, one value or one per channel)."""
    fix = "re-export it with qsal export"

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(meta, dict):
        raise QsalError(f"{path}: its 'qsal' metadata is a {type(meta).__name__}, not a mapping; {fix}")
    shape = meta.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(is_int(v) and v >= 1 for v in shape)):
        raise QsalError(f"{path}: metadata input_shape must be [channels, height, width] positive integers, got "
                        f"{str(shape)[:60]}; {fix}")
    data = meta.get("data", {})
    if not isinstance(data, dict):
        raise QsalError(f"{path}: metadata 'data' must be a mapping, got {str(data)[:60]}; {fix}")
    if "name" in data and not isinstance(data["name"], str):
        raise QsalError(f"{path}: metadata data.name must be a dataset name, got {str(data['name'])[:60]}; {fix}")
    for key in ("mean", "std"):
        v = data.get(key)
        if v is None:
            continue
        ok = (isinstance(v, list) and len(v) in (1, shape[0])
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v))
        if not ok or (key == "std" and any(x <= 0 for x in v)):
            raise QsalError(f"{path}: metadata data.{key} must be 1 or {shape[0]} finite numbers"
                            f"{' > 0 (it divides the pixels)' if key == 'std' else ''}, got {str(v)[:60]}; {fix}")
    return meta


class Runtime:
    """An ONNX Runtime session plus the preprocessing recorded at export.

    Args:
        path: an ONNX file written by ``qsal export``.
        threads: intra-op threads (1 = the single-core edge case; None = onnxruntime's default).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.meta = read_metadata(self.path)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # Otherwise default options: a qsal artifact needs no special session settings to run on integer
        # kernels, so what is measured here is what any onnxruntime application gets.
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise QsalError(f"onnxruntime cannot load {self.path} ({str(e).splitlines()[0][:200]})") from None
        self.input_name = self.session.get_inputs()[0].name
        data = self.meta.get("data", {})
        self.mean = np.asarray(data.get("mean", [0.0]), np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(data.get("std", [1.0]), np.float32).reshape(1, -1, 1, 1)
        self.input_shape = tuple(self.meta["input_shape"])
        self.task = data.get("task", "multi-class")
        self.labels = data.get("labels")

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W)`` / ``(N, H, W, C)`` (or one image without N) -> float32 ``(N, C, H, W)``."""
        images = np.asarray(images)
        given = images.shape
        c, h, w = self.input_shape
        if images.dtype != np.uint8:
            raise QsalError(f"images must be uint8 pixels (0-255), got {images.dtype}; use run_normalized() for tensors")
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3) and c == images.shape[-1]
                                and images.shape[:2] == (h, w)):
            images = images[None]
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[1:3] != (h, w) or images.shape[3] != c:
            raise QsalError(f"images have shape {given}; this model takes (N, {h}, {w}) or (N, {h}, {w}, {c}) uint8")
        x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        return np.ascontiguousarray((x - self.mean) / self.std, dtype=np.float32)

    def run_normalized(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(N, K)`` for already-normalised float32 input ``(N, C, H, W)``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise QsalError(f"input has shape {x.shape}; this model takes (N, {', '.join(map(str, self.input_shape))})")
        return self.session.run(None, {self.input_name: x})[0]

    def predict_logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits ``(N, K)`` for uint8 images, in batches of ``batch_size``."""
        x = self.preprocess(images)
        return np.concatenate([self.run_normalized(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K)`` (sigmoid per label for multi-label models)."""
        logits = self.predict_logits(images).astype(np.float64)
        if self.task.startswith("multi-label"):
            return 1 / (1 + np.exp(-logits))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
