"""One study cell, run: train or quantize, export, score the ONNX artifact, time it, explain it.

Each cell folder holds its config, checkpoint, ONNX artifact + model card, ``result.json`` (metrics, size,
latency, saliency metrics), saliency maps and a log. ``agreement_with_fp32`` adds each cell's map agreement
with its group's FP32 cell to its ``result.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from qsal._atomic import write_json_atomic
from qsal.errors import QsalError
from qsal.study.config import RunConfig
from qsal.study.grid import CellSpec, folder_content, quant_config
from qsal.study.redo import finished, parent_made_at, started_on_other_images
from qsal.study.results import defined
from qsal.study.rundir import load_npy, read_json

__all__ = ["run_cell", "explanation_measures", "agreement_with_fp32", "log"]


def log(cell_dir: Path, message: str) -> None:
    with open(cell_dir / "log.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def run_cell(spec: CellSpec, cfg: RunConfig, run_dir: Path, progress: bool, made_at: str | None = None) -> dict:
    """Train or quantize one cell (resuming what its folder holds), then export, score, time and explain it into
    ``result.json``. ``made_at``: when its model was made, for a finished cell only measured again (its training
    resumes with nothing left to do); by default now."""
    from qsal.pipeline import export_checkpoint, load_splits, quantize_checkpoint, train_model, write_card
    from qsal.provenance import environment
    from qsal.runtime import Runtime
    from qsal.saliency import SaliencyGuidedStep
    from qsal.scoring import artifact_row, score_onnx
    from qsal.train import resolve_device

    cell = run_dir / spec.id
    cell.mkdir(parents=True, exist_ok=True)
    content = folder_content(cfg, spec.dataset)  # the images' bytes as this cell reads them (folders.other_images)
    _refuse_other_images(cell, content)  # before config.json, which records what the cut-off run started on, is new
    write_json_atomic(cell / "config.json", {"cell": asdict(spec), "label": spec.label, "study": cfg.to_dict(),
                                             **({"data_content": content} if content is not None else {})})
    log(cell, f"start {spec.id}")
    t0 = time.perf_counter()
    source, size = cfg.dataset_source(spec.dataset), cfg.dataset_size(spec.dataset)  # folder:PATH for a folder
    # a folder's split_seed draws one split for every seed (else each seed its own): children score on it too
    train, val, test = load_splits(source, cfg.data_dir, size=size, seed=cfg.split_seed(spec.dataset, spec.seed))
    sgt = SaliencyGuidedStep(train.info.task, k=cfg.sgt.k, lam=cfg.sgt.lam, seed=spec.seed, target=cfg.sgt.target)
    train_cfg, finetune_cfg = cfg.train_configs(spec.dataset, spec.model, spec.seed, progress)
    if spec.kind in ("fp32", "sgt"):
        train_model(source, spec.model, train_cfg, cell, data_dir=cfg.data_dir, size=size,
                    positive_class=cfg.positive_class(spec.dataset), saliency_guided=spec.kind == "sgt",
                    sgt_k=cfg.sgt.k, sgt_lambda=cfg.sgt.lam, sgt_target=cfg.sgt.target,
                    split_seed=cfg.fixed_split_seed(spec.dataset),  # recorded only when fixed
                    resume=True)  # the study's own check guards mixing
    else:
        qcfg = quant_config(spec, cfg)
        quantize_checkpoint(str(cell.parent / spec.parent / "best.safetensors"), qcfg, cell, data_dir=cfg.data_dir,
                            seed=spec.seed, progress=progress, step=sgt if spec.kind == "sgt+pact" else None,
                            train_config=finetune_cfg, resume=True)
    seconds = time.perf_counter() - t0
    log(cell, f"trained/quantized in {seconds:.1f} s (this invocation)")
    ckpt = cell / "best.safetensors"
    record = read_json(cell / "metrics.json", "rerun `qsal run` to redo this cell")
    metrics = record["test"]
    # training time over every invocation (metrics.json counts resumed ones; a PTQ cell trains nothing: its call)
    trained_s = record.get("train_seconds") if spec.kind != "ptq" else None
    exp = export_checkpoint(str(ckpt), cell / "model.onnx", card=False, force=True)  # the cell owns its files
    deployed = Runtime(cell / "model.onnx")  # one session scores both splits
    art, probs = score_onnx(deployed, test, seed=spec.seed)
    on_val = score_onnx(deployed, val, n_bootstrap=0, seed=spec.seed)[0].to_dict()
    from qsal.export.card_storage import kernels_label

    kernels = kernels_label(deployed.meta)
    # scored (and timed) on the exact u8 x u8 kernels: this CPU's fast ones saturate (runtime.SATURATION_NOTE)
    notes = deployed.kernel_notes
    del deployed
    result = {"id": spec.id, **asdict(spec), "label": spec.label, **artifact_row(art, metrics),
              # the artifact on the validation split: what a choice among cells (benchmarks/targets.py) may look at
              "val_auc": on_val.get("auc"), "val_acc": on_val.get("acc"),
              "acc_ci": art.ci.get("acc"), "train_s": trained_s if isinstance(trained_s, (int, float)) else seconds,
              "size_bytes": exp["size_bytes"], "kernels": kernels, **notes,
              # what the report names it by: a folder's path and classes are not in the dataset table
              "data_source": source, "class_names": list(test.info.labels),
              # a folder's split as drawn: a folder changed since makes the cell stale (folders.other_images)
              "data_listing": train.listing_sha256, "data_content": content, "split_seed": test.split_seed,
              "measure": asdict(cfg.measure),
              # the method's config with its version: seeds of one row made by different qsal versions show up
              "quant_config": None if spec.kind in ("fp32", "sgt") else qcfg.to_dict(),
              # which parent it descends from (that result's time): a retrained parent makes it stale (qsal.study.redo)
              "parent_made_at": parent_made_at(spec, run_dir)}
    np.save(cell / "test_probs.npy", probs)  # the report's confusion matrix, ROC and reliability figures
    np.save(cell / "test_labels.npy", test.labels)
    if cfg.measure.latency:
        from qsal.export.bench import bench_onnx

        bench = bench_onnx(cell / "model.onnx", threads=(1,), batches=(1, 64), seconds=1.0)
        b1, b64 = bench["runs"]
        result.update(latency_b1_ms=b1["latency_ms_p50"], latency_b1_p95_ms=b1["latency_ms_p95"],
                      throughput_b64=b64["throughput_img_s"])
    if cfg.measure.saliency:
        from qsal.checkpoint import load_checkpoint
        from qsal.saliency.plot import to_display

        model, _ = load_checkpoint(ckpt)
        sub = test.subset(cfg.measure.n_explain, 0)  # the same images in every cell
        x, y = sub.tensors()
        maps, measures = explanation_measures(model, x, y, spec.seed, str(resolve_device(train_cfg.device)))
        np.save(cell / "saliency_maps.npy", maps)
        if spec.kind == "fp32":
            np.save(cell / "explain_images.npy", to_display(x.numpy(), sub.info.mean, sub.info.std))
            np.save(cell / "explain_indices.npy", test.subset_indices(cfg.measure.n_explain, 0))
        result.update(measures)
    # every cell's artifact gets its card (measure.latency: false leaves only its latency out)
    write_card(str(ckpt), cell / "model.onnx", bench if cfg.measure.latency else None, metrics=art.to_dict(),
               explanations={k: result[k] for k in ("faithfulness_gap", "faithfulness_changed", "deletion_auc",
                                                    "insertion_auc", "gini") if k in result} or None,
               data_dir=cfg.data_dir, latency=cfg.measure.latency)
    result["environment"] = environment()
    result["made_at"] = made_at or result["environment"]["utc"]  # redo.older_than_parent compares children with it
    result = defined(result)
    log(cell, f"done {json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float))})}")
    write_json_atomic(cell / "result.json", result)
    return result


def _refuse_other_images(cell: Path, content: str | None) -> None:
    """A cell cut off part-way whose folder's images changed since it started (``redo.started_on_other_images``):
    its first epochs saw other bytes than the rest would, and its result would record only the new digest.
    ``CannotResume``, which the runner answers by starting the cell over (files added, removed or renamed:
    ``train.fit`` refuses them itself)."""
    from qsal.run_folder import CannotResume

    if started_on_other_images(cell, content):
        why = "its folder's images changed since it started (their bytes: another digest)"
        raise CannotResume(f"cannot resume {cell}: {why}", why)


def explanation_measures(model, x, y, seed: int, device: str = "cpu") -> tuple[np.ndarray, dict]:
    """A cell's saliency step: |gradient| maps of the labels ``y`` (``(N,)``, or ``(N, L)`` multi-label:
    see ``qsal.saliency.targets``) and what they are worth: the faithfulness gap (accuracy area with random
    pixels removed minus with the most salient removed), deletion / insertion AUC of the label's probability
    (Petsiuk et al. 2018; 20 steps, each image's minimum as the blank) and the Gini index of the maps.
    Runs on ``device`` (the cell's training device: a GPU when the study trains on one).
    Returns ``(maps (N, C, H, W), measures)``."""
    import torch

    from qsal.metrics import predict_logits
    from qsal.saliency import explain
    from qsal.saliency.metrics import deletion_insertion, faithfulness_curve, mean_gini

    model = model.to(device)
    maps = explain(model, x, "gradient_abs", target=y).numpy()
    model_fn = lambda a: predict_logits(model, torch.from_numpy(a), device=device)  # noqa: E731
    faith = faithfulness_curve(model_fn, x.numpy(), y.numpy(), maps, seed=seed)
    curves = deletion_insertion(model_fn, x.numpy(), y.numpy(), maps)
    # the share of images some removal moved off their decision: 0 makes the gap 0 whatever the maps (a report says so)
    return maps, {"faithfulness_gap": faith["gap"], "faithfulness_changed": faith["changed"],
                  "deletion_auc": curves["deletion_auc"],
                  "insertion_auc": curves["insertion_auc"], "gini": mean_gini(maps)}


def _redo_fix(run_dir: Path, spec: CellSpec) -> str:
    return f"delete the folder {run_dir / spec.id} and rerun `qsal run` to redo that cell"


def agreement_with_fp32(group: list[CellSpec], run_dir: Path) -> dict[str, str]:
    """Add map agreement with the FP32 cell to every finished result; returns ``{cell id: problem}``."""
    from qsal.saliency.metrics import agreement

    base = run_dir / group[0].id / "saliency_maps.npy"
    if not base.is_file():
        return {}
    try:
        ref = load_npy(base, _redo_fix(run_dir, group[0]), ndim=4)
    except QsalError as e:
        return {group[0].id: str(e)}
    problems = {}
    for spec in group:
        cell = run_dir / spec.id
        if not finished(cell) or not (cell / "saliency_maps.npy").is_file():
            continue
        try:
            maps = load_npy(cell / "saliency_maps.npy", _redo_fix(run_dir, spec), ndim=4)
            if maps.shape != ref.shape:
                raise QsalError(f"{cell / 'saliency_maps.npy'} has shape {maps.shape}, FP32's {ref.shape}; "
                                f"{_redo_fix(run_dir, spec)}")
        except QsalError as e:
            problems[spec.id] = str(e)
            continue
        a = agreement(ref, maps)
        result = read_json(cell / "result.json", _redo_fix(run_dir, spec))
        result.update(agreement_spearman=a["spearman"], agreement_iou=a["topk_iou"], agreement_ssim=a["ssim"],
                      most_changed=a["most_changed"])
        write_json_atomic(cell / "result.json", defined(result))
    return problems
