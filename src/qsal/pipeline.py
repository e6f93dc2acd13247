"""The workflows behind the CLI: train, evaluate, quantize and export a checkpoint, each one call.

Each function reads and writes files (checkpoints, metrics JSON, ONNX) and returns a summary dict;
the CLI prints it. Python users can call these or the lower-level API they are built from.
"""

from __future__ import annotations

import os
from pathlib import Path

from qsal._atomic import write_json_atomic
from qsal.data import ImageSplit, get_info, load_split
from qsal.errors import QsalError
from qsal.provenance import environment
from qsal.train import TrainConfig

__all__ = ["train_model", "evaluate_checkpoint", "quantize_checkpoint", "export_checkpoint", "write_card", "evaluate_onnx", "data_meta",
           "load_splits"]


def data_meta(split: ImageSplit) -> dict:
    """What a deployed model must know about its data: name, task, labels and normalisation."""
    info = split.info
    return {"name": info.name, "task": info.task, "labels": list(info.labels), "mean": list(info.mean),
            "std": list(info.std), "n_channels": info.n_channels, "image_size": int(split.images.shape[1]),
            "license": info.license}


def load_splits(dataset: str, data_dir=None, size=None, download=False, seed: int = 0) -> tuple[ImageSplit, ...]:
    """``(train, val, test)`` of a dataset."""
    return tuple(load_split(dataset, s, data_dir, size=size, download=download, seed=seed) for s in ("train", "val", "test"))


def _write_metrics(out: Path, metrics, extra: dict) -> Path:
    return write_json_atomic(out / "metrics.json", {**extra, "test": metrics.to_dict(), "environment": environment()})


def train_model(dataset: str, model: str, config: TrainConfig, out_dir: str | os.PathLike, *, data_dir=None,
                size: int | None = None, download: bool = False, saliency_guided: bool = False, sgt_k: float = 0.5,
                sgt_lambda: float = 1.0, pact_bits: int | None = None) -> dict:
    """Train ``model`` on ``dataset`` (optionally PACT-quantized and/or saliency-guided), evaluate on test.

    Writes ``out_dir/best.safetensors`` + ``best.json`` (the checkpoint) and ``out_dir/metrics.json``.
    """
    from qsal.evaluate import evaluate
    from qsal.models import create_model
    from qsal.train import fit, seed_everything

    train, val, test = load_splits(dataset, data_dir, size, download, config.seed)
    info = train.info
    seed_everything(config.seed)  # the initial weights are part of the run
    net = create_model(model, info.num_classes, info.n_channels, int(train.images.shape[1]))
    meta = {"dataset": data_meta(train), "quant": None}
    step = None
    if saliency_guided:
        from qsal.saliency import SaliencyGuidedStep

        step = SaliencyGuidedStep(info.task, k=sgt_k, lam=sgt_lambda)
    out = Path(out_dir)
    if pact_bits is not None:
        # PACT from scratch: a short FP32 warm-up (a quarter of the epochs) first, so the clipping levels
        # are calibrated on meaningful activations; clips calibrated on an untrained net are tiny and
        # cap the logits, and the paper's fixed alpha=10 leaves 2-3-bit codes all zero.
        from dataclasses import replace

        from qsal.quant import PACTConfig, quantize

        warmup = max(1, config.epochs // 4)
        fit(net, train, val, replace(config, epochs=warmup), out / "fp32_warmup", step=step, meta=meta)
        qcfg = PACTConfig(bits=pact_bits)
        net = quantize(net, qcfg, calibration=train)
        meta["quant"] = qcfg.to_dict()
        meta["fp32_warmup_epochs"] = warmup
        config = replace(config, epochs=max(1, config.epochs - warmup))
    result = fit(net, train, val, config, out, step=step, meta=meta)
    metrics = evaluate(net, test, seed=config.seed)
    _write_metrics(out, metrics, {"checkpoint": str(result.best_path), "best_epoch": result.best_epoch,
                                  "train_seconds": result.seconds, "config": config.to_dict(), "seed": config.seed,
                                  "dataset": dataset, "model": model, "quant": meta["quant"],
                                  "saliency_guided": {"k": sgt_k, "lambda": sgt_lambda} if saliency_guided else None})
    return {"checkpoint": str(result.best_path), "best_epoch": result.best_epoch, "test_auc": metrics.auc,
            "test_acc": metrics.acc, "auc_95ci": metrics.ci.get("auc"), "train_seconds": round(result.seconds, 1)}


def _dataset_name(meta: dict, dataset: str | None) -> str:
    name = dataset or (meta.get("dataset") or meta.get("data") or {}).get("name")
    if not name:
        raise QsalError("the checkpoint does not name its dataset; pass --dataset")
    return name


def evaluate_checkpoint(checkpoint: str, *, dataset: str | None = None, split: str = "test", data_dir=None,
                        size: int | None = None, out: str | None = None) -> dict:
    """Metrics of a saved checkpoint on one split of its dataset (or ``dataset``)."""
    from qsal.checkpoint import load_checkpoint
    from qsal.evaluate import evaluate

    model, meta = load_checkpoint(checkpoint)
    name = _dataset_name(meta, dataset)
    data = load_split(name, split, data_dir, size=size)
    arch = meta["arch"]
    if data.info.num_classes != arch["num_classes"] or data.info.n_channels != arch["in_channels"]:
        raise QsalError(f"{name} has {data.info.num_classes} classes / {data.info.n_channels} channels but the checkpoint "
                        f"was built for {arch['num_classes']} / {arch['in_channels']}; pass the dataset it was trained on")
    metrics = evaluate(model, data)
    result = {"checkpoint": str(checkpoint), "dataset": name, "split": split, **metrics.to_dict()}
    if out:
        write_json_atomic(out, {**result, "environment": environment()})
    return result


def quantize_checkpoint(checkpoint: str, qconfig, out_dir: str | os.PathLike, *, epochs: int = 5, lr: float = 1e-4,
                        data_dir=None, seed: int = 0, progress: bool = True, step=None,
                        train_subset: int | None = None) -> dict:
    """Quantize a float checkpoint with ``qconfig`` (PTQ: calibrate; QAT/PACT: also fine-tune ``epochs``,
    on ``train_subset`` images of the training split if given).

    Writes ``out_dir/best.safetensors`` (the quantized model, reloadable with ``load_checkpoint``) and
    ``out_dir/metrics.json`` with test metrics of the fake-quantized model.
    """
    from qsal.checkpoint import load_checkpoint, save_checkpoint
    from qsal.evaluate import evaluate
    from qsal.quant import PACTConfig, QATConfig, qat_callbacks, quantize
    from qsal.train import fit

    model, meta = load_checkpoint(checkpoint)
    if meta.get("quant"):
        raise QsalError(f"{checkpoint} is already quantized ({meta['quant']['method']}); start from the FP32 checkpoint")
    name = _dataset_name(meta, None)
    size = (meta.get("dataset") or {}).get("image_size")
    train, val, test = load_splits(name, data_dir, size, seed=seed)
    qmodel = quantize(model, qconfig, calibration=train)
    if train_subset:  # fine-tune on a seeded subset (a CPU-time budget), calibrated on the full split
        train = train.subset(train_subset, seed)
    out = Path(out_dir)
    qmeta = {"dataset": meta.get("dataset") or data_meta(train), "quant": qconfig.to_dict(),
             "parent_checkpoint": str(checkpoint)}
    seconds = 0.0
    if isinstance(qconfig, (QATConfig, PACTConfig)):
        cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed, progress=progress)
        result = fit(qmodel, train, val, cfg, out, step=step, meta=qmeta, callbacks=qat_callbacks(qconfig))
        path, seconds = result.best_path, result.seconds
    else:
        path = save_checkpoint(qmodel, out / "best.safetensors", {**qmeta, "arch": qmodel.qsal_arch, "seed": seed})
    metrics = evaluate(qmodel, test, seed=seed)
    _write_metrics(out, metrics, {"checkpoint": str(path), "quant": qconfig.to_dict(), "seed": seed,
                                  "train_seconds": seconds, "parent_checkpoint": str(checkpoint)})
    return {"checkpoint": str(path), "method": qconfig.label, "test_auc": metrics.auc, "test_acc": metrics.acc,
            "auc_95ci": metrics.ci.get("auc")}


def evaluate_onnx(onnx_path: str | os.PathLike, split: ImageSplit, n_bootstrap: int = 0):
    """``Metrics`` of the deployed artifact itself (onnxruntime, the exported preprocessing) on ``split``."""
    from qsal.evaluate import compute_metrics
    from qsal.runtime import Runtime

    logits = Runtime(onnx_path).predict_logits(split.images)
    return compute_metrics(split.labels, logits, split.info.task, n_bootstrap=n_bootstrap)


def export_checkpoint(checkpoint: str, out: str | os.PathLike, card: bool = True, data_dir=None) -> dict:
    """Export a checkpoint (float or quantized) to ONNX with its preprocessing in the metadata, and (``card``)
    a model card beside it with the checkpoint's test metrics and the artifact's measured latency."""
    from qsal.checkpoint import load_checkpoint
    from qsal.export import export_onnx

    model, meta = load_checkpoint(checkpoint)
    data = meta.get("dataset") or {}
    arch = meta["arch"]
    side = data.get("image_size", arch.get("image_size", 28))
    path = export_onnx(model, out, input_shape=(arch["in_channels"], side, side),
                       meta={"data": data, "arch": arch, "quant": meta.get("quant"), "checkpoint": str(checkpoint)})
    result = {"onnx": str(path), "size_bytes": Path(path).stat().st_size, "quant": (meta.get("quant") or {}).get("method", "fp32")}
    if card:
        result["card"] = write_card(checkpoint, path, data_dir=data_dir)
    return result


def write_card(checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, bench: dict | None = None,
               explanations: dict | None = None, data_dir=None) -> str:
    """Model card beside ``onnx_path`` from the checkpoint's records; latency is measured unless ``bench`` is
    given. The ONNX file itself is scored on the test split (when the data can be loaded), and a quantized
    model is compared with its FP32 parent's ``metrics.json``."""
    import json

    import numpy as np

    from qsal.checkpoint import read_meta
    from qsal.export.bench import bench_onnx
    from qsal.export.model_card import write_model_card
    from qsal.models import count_parameters, create_model

    def test_metrics(path: Path) -> dict | None:
        return json.loads(path.read_text()).get("test") if path.is_file() else None

    meta = read_meta(checkpoint)
    data = meta.get("dataset") or {}
    metrics_file = Path(checkpoint).with_name("metrics.json")
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    parent = meta.get("parent_checkpoint")
    parent_metrics = test_metrics(Path(parent).with_name("metrics.json")) if parent else None
    parent_scored = "its PyTorch model"
    artifact_metrics, data_stats = None, None
    try:  # the card can still be written without the data; it then says the artifact was not scored
        splits = load_splits(data["name"], data_dir, size=data.get("image_size"), seed=meta.get("seed") or 0)
        artifact_metrics = evaluate_onnx(onnx_path, splits[2], n_bootstrap=1000).to_dict()
        parent_onnx = Path(parent).with_name("model.onnx") if parent else None
        if parent_onnx is not None and parent_onnx.is_file():  # compare artifact with artifact where both exist
            parent_metrics, parent_scored = evaluate_onnx(parent_onnx, splits[2]).to_dict(), "its ONNX file"
        k = len(data.get("labels") or [])
        data_stats = {"counts": {s.split: len(s) for s in splits},
                      "class_counts": {s.split: np.bincount(s.labels, minlength=k).tolist() for s in splits
                                       if s.labels.ndim == 1}}
    except (QsalError, KeyError, OSError):
        pass
    arch = meta.get("arch") or {}
    n_parameters = count_parameters(create_model(arch["name"], arch["num_classes"], arch["in_channels"],
                                                 arch.get("image_size", 28))) if arch.get("name") else None
    if bench is None:
        bench = bench_onnx(onnx_path, threads=(1,), batches=(1,), seconds=0.5)
    env = environment()
    bench = {**bench, "cpu": env["cpu"]}
    write_model_card(onnx_path, meta, metrics, bench, explanations, artifact_metrics=artifact_metrics,
                     parent_metrics=parent_metrics, parent_scored=parent_scored, data_stats=data_stats, n_parameters=n_parameters,
                     versions=env["versions"])
    return str(Path(onnx_path).with_suffix(".card.md"))
