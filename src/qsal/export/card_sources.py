"""What a deployed model's card quotes, gathered from the files around it: the ONNX artifact's test metrics, the
PyTorch model's ``metrics.json`` (only beside the weights it scored), data counts and class balance, the latency, and
a quantized model's parent (its kind, how it was trained, its metrics: only while its weights are the ones recorded
at quantization). ``write_card`` hands them to ``export.model_card.write_model_card``, which lays the card out."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from qsal.checkpoint import trained_saliency_guided
from qsal.data.folder import check_same_listing
from qsal.errors import QsalError
from qsal.provenance import environment

__all__ = ["write_card"]


def _parent_meta(parent: str) -> dict | None:
    """The JSON of a quantized model's parent checkpoint, or ``None`` where it can no longer be read."""
    from qsal.checkpoint import read_meta

    try:
        return read_meta(parent)
    except (QsalError, OSError):
        return None


def _parent_kind(meta: dict | None) -> str | None:
    """What a quantized model's parent is (``meta``: its checkpoint's JSON, ``_parent_meta``), for its card:
    ``"SGT"`` (saliency-guided training, the parent of SGT+PACT), ``"FP32"``, or ``None`` where it was unreadable."""
    if meta is None:
        return None
    if meta.get("quant"):
        return str(meta["quant"].get("method") or "quantized").upper()
    return "SGT" if trained_saliency_guided(meta) else "FP32"


def _parent_file_is_its_export(onnx_path: Path, parent_sha256: str) -> bool:
    from qsal.runtime import exported_from

    try:
        return exported_from(onnx_path, parent_sha256)
    except QsalError:  # unreadable: not compared with, as a file of other weights is not
        return False


def write_card(checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, bench: dict | None = None,
               explanations: dict | None = None, metrics: dict | None = None, data_dir=None, latency: bool = True) -> str:
    """Model card beside ``onnx_path``: the *artifact's* test metrics (``metrics``, a ``Metrics`` dict with
    ``artifact: True``, measured here on the test split unless given), its latency (measured unless ``bench``
    is given; ``latency=False``: none, the card then has no latency section), data counts and class balance, and a
    quantized model's change against its parent (FP32 or SGT)."""
    import numpy as np

    from qsal.checkpoint import read_meta
    from qsal.export.bench import bench_onnx
    from qsal.export.model_card import write_model_card
    from qsal.pipeline import load_splits, split_seed  # the splits the model was trained and chosen on
    from qsal.scoring import evaluate_onnx
    from qsal.run_folder import file_sha256, unfinished_run
    from qsal.models import count_parameters, create_model

    def belongs(record: dict, weights: str | os.PathLike) -> bool:
        """metrics.json written for these weights (records before the hash was kept are taken as theirs)."""
        sha = record.get("checkpoint_sha256")
        return sha is None or sha == file_sha256(weights)

    def test_metrics(weights: Path) -> dict | None:
        """The test metrics in ``metrics.json`` beside ``weights``, if written for them."""
        path = weights.with_name("metrics.json")
        try:
            record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
            return record.get("test") if record is not None and belongs(record, weights) else None
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError):
            return None

    meta = read_meta(checkpoint)
    data = meta.get("dataset") or {}
    metrics_file = Path(checkpoint).with_name("metrics.json")
    try:
        torch_metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QsalError(f"{metrics_file} is not valid JSON ({type(e).__name__}); delete it (the card then has no "
                        "test metrics) or rerun the command that wrote it") from None
    if torch_metrics is not None and not isinstance(torch_metrics, dict):
        raise QsalError(f"{metrics_file} holds a {type(torch_metrics).__name__}, not the metrics qsal writes; delete it")
    if torch_metrics is not None and not belongs(torch_metrics, checkpoint):
        torch_metrics = None  # written for other weights (a copied or retrained file): not this model's numbers
    parent = meta.get("parent_checkpoint")
    parent_meta = _parent_meta(parent) if parent else None  # read once: its kind and how it was trained
    parent_kind = _parent_kind(parent_meta) if parent else None
    if parent and parent_kind and meta.get("parent_sha256") is not None and (
            not Path(parent).is_file() or file_sha256(parent) != meta["parent_sha256"]):
        # retrained or replaced in place since this model was made from it: another model, not compared with
        gone = "its weights are gone" if not Path(parent).is_file() else "replaced since this model was made from it"
        parent_kind, parent = f"{parent_kind}, {gone}: not compared", None
    parent_metrics = test_metrics(Path(parent)) if parent else None
    # how the parent was trained: a quantized model's own seed only picked its calibration images
    parent_training = {"seed": parent_meta.get("seed"), "epochs": (parent_meta.get("train") or {}).get("epochs"),
                       "best_epoch": parent_meta.get("epoch")} if parent and parent_meta else None
    parent_scored = "its PyTorch model"
    artifact_metrics, data_stats = metrics, None
    try:  # the card can still be written without the data; it then says the artifact was not scored
        splits = load_splits(data["name"], data_dir, size=data.get("image_size"), seed=split_seed(meta),
                             n_channels=(meta.get("arch") or {}).get("in_channels"))
        check_same_listing(splits[2], data.get("listing_sha256"), str(checkpoint))
        if artifact_metrics is None:
            artifact_metrics = evaluate_onnx(onnx_path, splits[2], n_bootstrap=1000).to_dict()
        parent_onnx = Path(parent).with_name("model.onnx") if parent else None
        # compare artifact with artifact where the parent's file was exported from the parent's weights (any other
        # model.onnx beside it, an older export or a copied one, would make up the change)
        if parent_onnx is not None and parent_onnx.is_file() and _parent_file_is_its_export(
                parent_onnx, meta.get("parent_sha256") or file_sha256(parent)):
            parent_metrics, parent_scored = evaluate_onnx(parent_onnx, splits[2]).to_dict(), "its ONNX file"
        k = len(data.get("labels") or [])
        data_stats = {"counts": {s.split: len(s) for s in splits},
                      "class_counts": {s.split: np.bincount(s.labels, minlength=k).tolist() for s in splits
                                       if s.labels.ndim == 1}}
    except (QsalError, KeyError, OSError) as e:  # the card then shows the PyTorch model's metrics, and says so
        if artifact_metrics is None:
            print(f"note: the model card quotes the PyTorch model's test metrics; the ONNX file was not scored "
                  f"({str(e).rstrip('.')})", file=sys.stderr)
    arch = meta.get("arch") or {}
    n_parameters = count_parameters(create_model(arch["name"], arch["num_classes"], arch["in_channels"],
                                                 arch.get("image_size", 28))) if arch.get("name") else None
    if bench is None and latency:
        bench = bench_onnx(onnx_path, threads=(1,), batches=(1,), seconds=0.5)
    env = environment()
    bench = {**bench, "cpu": env["cpu"]} if bench is not None else None
    write_model_card(onnx_path, meta, torch_metrics, bench, explanations, artifact_metrics=artifact_metrics,
                     parent_metrics=parent_metrics, parent_scored=parent_scored, data_stats=data_stats,
                     n_parameters=n_parameters, versions=env["versions"], parent_kind=parent_kind,
                     unfinished=unfinished_run(checkpoint, short=True), parent_training=parent_training)
    return str(Path(onnx_path).with_suffix(".card.md"))
