"""Predictions on new image files: ``qsal predict MODEL PATH...``.

``MODEL`` is an exported ``.onnx`` file (run by ``qsal.runtime``; PyTorch is never imported) or a
``.safetensors`` checkpoint. ``PATH`` may be files, folders (searched recursively) or glob patterns
of PNG/JPEG/BMP/TIFF/DICOM images. Each image is converted to the model's channels and size exactly
as training images were (the recorded rule), and decided at the model's stored operating point.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

from qsal.errors import QsalError, printable_path
from qsal.runtime import Runtime

__all__ = ["image_files", "load_predictor", "predict_paths", "read_or_skip", "format_predictions", "CheckpointRuntime"]


def image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Every image named by ``paths`` (files, folders searched recursively but for hidden files and folders, glob
    patterns), in order, once each."""
    from qsal.data.folder import images_under, is_image_file

    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found += images_under(p, follow_links=True)
        elif p.is_file():
            found.append(p)
        elif any(ch in str(raw) for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(raw), recursive=True))
            found += [m for m in matches if m.is_file() and is_image_file(m)]
            if not matches:
                raise QsalError(f"no file matches {raw!r}; check its folder and suffix (patterns match case: "
                                "'*.png' does not find X.PNG), or name the folder to score every image in it")
        else:
            raise QsalError(f"{raw} does not exist; pass image files, folders or glob patterns")
    # once each: the same file named twice (a/x.png, a/../a/x.png, its absolute path, a link to it) is scored once,
    # under the name it was first given
    first: dict[str, Path] = {}
    for p in found:
        first.setdefault(os.path.realpath(p), p)
    unique = list(first.values())
    if not unique:
        raise QsalError(f"no PNG/JPEG/BMP/TIFF/DICOM images found in {', '.join(map(str, paths))} (files and folders "
                        "whose names start with '.' are skipped); name the image files or the folder that holds them")
    return unique


class CheckpointRuntime(Runtime):
    """``Runtime``'s interface over a PyTorch checkpoint (the same preprocessing and decision)."""

    _normalisation_key = "metadata dataset.mean / dataset.std"
    _normalisation_fix = ("save it with save_checkpoint(..., meta={'dataset': {'mean': [...], 'std': [...]}, ...}) "
                          "(qsal train's checkpoints record them)")

    def __init__(self, path: str | os.PathLike):
        from qsal.checkpoint import load_checkpoint

        self.path = Path(path)
        self.model, meta = load_checkpoint(self.path)
        data = meta.get("dataset") or {}
        arch = meta["arch"]
        side = int(data.get("image_size") or arch.get("image_size", 28))
        self.meta = meta
        self.input_shape = (int(arch["in_channels"]), side, side)
        # None where the checkpoint records no normalisation: preprocess refuses, as Runtime does for the file
        # exported from it, instead of scoring raw 0-1 pixels (a model trained on normalised input answers wrongly)
        self.mean, self.std = (None if data.get(k) is None else np.asarray(data[k], np.float32).reshape(1, -1, 1, 1)
                               for k in ("mean", "std"))
        self.task = data.get("task", "multi-class")
        self.labels = data.get("labels")
        self.decision = meta.get("decision") or {}
        self.temperature = float(self.decision.get("temperature") or 1.0)

    @property
    def n_outputs(self) -> int:
        return int(self.meta["arch"]["num_classes"])  # no onnxruntime session to ask

    def run_normalized(self, x: np.ndarray) -> np.ndarray:
        import torch

        from qsal.metrics import predict_logits

        return predict_logits(self.model, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))


def load_predictor(model: str | os.PathLike, threads: int | None = None) -> Runtime:
    """A ``Runtime`` for an ``.onnx`` file, a ``CheckpointRuntime`` for a ``.safetensors`` checkpoint."""
    path = Path(model)
    if path.suffix.lower() == ".onnx":
        return Runtime(path, threads=threads)
    if path.suffix.lower() == ".safetensors":
        return CheckpointRuntime(path)
    raise QsalError(f"{model} is neither an .onnx file nor a .safetensors checkpoint written by qsal")


def read_or_skip(read, path, notes: dict, skip_unreadable: bool, others: bool, skipped: list, what: str):
    """``read(path, notes)``, the image's pixels; for an image that cannot be read, with ``skip_unreadable`` ``None``
    and ``{"file", "reason"}`` appended to ``skipped`` (a name that is not valid UTF-8 written with \\x escapes),
    else the error, naming ``--skip-unreadable`` when ``others`` could still be used (``what`` it does then)."""
    try:
        return read(path, notes)
    except QsalError as e:
        if not skip_unreadable:
            if others:
                raise QsalError(f"{e} (or skip it: --skip-unreadable, {what} and lists the ones it could not "
                                "use)") from None
            raise
        skipped.append({"file": printable_path(str(path)), "reason": printable_path(str(e))})
        return None


def predict_paths(model: str | os.PathLike | Runtime, paths: list[str | os.PathLike], threads: int | None = None,
                  skip_unreadable: bool = False) -> dict:
    """``{"model", "artifact", "decision", "classes", "predictions": [{"file", "probabilities", "predicted_class",
    "predicted_label", "decided_by"}, ...], "skipped": [{"file", "reason"}, ...]}`` for every image under ``paths``.
    ``model``: a file, or a predictor ``load_predictor`` already opened (the CLI checks the model before it lists the
    images). An image that cannot be read stops the batch, unless ``skip_unreadable``: then it is listed under
    ``skipped`` with the reason and the others are scored (all unreadable is still an error)."""
    predictor = model if isinstance(model, Runtime) else load_predictor(model, threads)
    files = image_files(paths)
    predictions, skipped, notes = [], [], {}
    for f in files:
        pixels = read_or_skip(predictor.read_file, f, notes, skip_unreadable, len(files) > 1, skipped,
                              "skip_unreadable=True in Python, scores the others")
        if pixels is None:
            continue
        predictions.append({"file": printable_path(str(f)),
                            **predictor.prediction(predictor.predict_proba(pixels)[0])})
    if not predictions:
        raise QsalError(f"none of the {len(files)} images could be used; the first: {skipped[0]['reason']}")
    # Without stored class names the classes are named by id, as each prediction's probabilities are.
    classes = [str(n) for n in predictor.labels] if predictor.labels else list(predictions[0]["probabilities"])
    from qsal.data.folder import conversion_notes

    side = predictor.input_shape[1]
    said = conversion_notes(notes, len(predictions), "", side)
    for line in said:
        print(f"note: {line}", file=sys.stderr)
    return {"model": str(predictor.path), "artifact": not isinstance(predictor, CheckpointRuntime),
            "decision": predictor.decision, "classes": classes, "predictions": predictions, "skipped": skipped,
            **({"notes": said} if said else {})}


def format_predictions(result: dict, fmt: str = "csv") -> str:
    """CSV (``file``, ``p(<class>)`` per class, ``predicted_class``, ``predicted_label``, ``decided_by``: the
    rule that turned the probabilities into the label, e.g. the stored threshold) or JSON text."""
    if fmt == "json":
        return json.dumps(result, indent=2) + "\n"  # a text file (and a terminal's prompt) ends with a newline
    if fmt != "csv":
        raise QsalError(f"output format {fmt!r} is not csv or json")
    classes = result["classes"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", *(f"p({c})" for c in classes), "predicted_class", "predicted_label", "decided_by"])
    for p in result["predictions"]:
        label = p["predicted_label"]
        writer.writerow([p["file"], *(f"{p['probabilities'][c]:.6f}" for c in classes), p["predicted_class"],
                         ";".join(map(str, label)) if isinstance(label, list) else label, p["decided_by"]])
    return buf.getvalue()
