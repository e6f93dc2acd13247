"""Quantization benchmark: FP32 vs PTQ-INT8 (4 observers), QAT-INT8, PACT 8/4/3/2-bit and onnxruntime's own
``quantize_static``, on PneumoniaMNIST, BreastMNIST and RetinaMNIST, measured as deployed ONNX artifacts.

Every accuracy figure in the table is the *artifact's* (onnxruntime on the test split); the fake-quant
PyTorch model's is in the JSON beside it, with the max logit difference between the two. Latency: all
artifacts of a cell in one process, interleaved rounds, median of per-round medians, 1 thread, default
onnxruntime sessions (``qsal.export.bench.interleaved_latency``); the dedicated latency/size table with
Brevitas and all-core figures is ``benchmarks/quantization_latency.py``.

    python benchmarks/quantization.py [--data-dir ../shared/data] [--models small_cnn edge_mbv2 resnet18]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, data_dir, what_changed, written_by  # noqa: E402

from qsal._atomic import write_json_atomic, write_text_atomic  # noqa: E402
from qsal.checkpoint import load_checkpoint  # noqa: E402
from qsal.metrics import compute_metrics, predict_logits  # noqa: E402
from quantization_latency import EAGER, _adopt_metadata, _ort_peer, time_artifacts  # noqa: E402
from qsal.pipeline import export_checkpoint, load_splits, quantize_checkpoint, train_model  # noqa: E402
from qsal.provenance import environment  # noqa: E402
from qsal.quant import PACTConfig, PTQConfig, QATConfig  # noqa: E402
from qsal.study.report import results_table  # noqa: E402
from qsal.runtime import Runtime  # noqa: E402
from qsal.train import TrainConfig  # noqa: E402

CACHE = Path(__file__).resolve().parents[1] / "runs" / "bench"
# FP32 epochs, and fine-tuning epochs for QAT / PACT, per (dataset, model): shortened to fit a 2-core CPU.
SCHEDULE = {
    ("pneumoniamnist", "small_cnn"): (20, 2, 4), ("pneumoniamnist", "edge_mbv2"): (15, 1, 2),
    ("pneumoniamnist", "resnet18"): (2, 1, 1),
    ("breastmnist", "small_cnn"): (60, 5, 10), ("breastmnist", "edge_mbv2"): (60, 5, 10),
    ("breastmnist", "resnet18"): (25, 2, 3),
    ("retinamnist", "small_cnn"): (50, 4, 8), ("retinamnist", "edge_mbv2"): (40, 4, 8),
    ("retinamnist", "resnet18"): (15, 1, 2),
}
# ResNet-18 fine-tunes (QAT/PACT) on a seeded subset of the training images: the CPU-time budget.
FINETUNE_SUBSET = {"resnet18": 1200}
# Fine-tune learning rates (Adam). PACT used 5e-4 before issue 9; with BatchNorm folded before the fine-tune (so the
# trained codes are the deployed codes) 5e-4 collapses deep nets (method_fixes.md), so PACT now uses 1e-4, the
# default of `qsal quantize` and the study runner. QAT always used 1e-4.
FINETUNE_LR = {"ptq": None, "qat": 1e-4, "pact": 1e-4}
BEFORE = RESULTS / "pre_issue9" / "quantization.json"


def _artifact_metrics(onnx_path: Path, test, ref_logits: np.ndarray | None) -> dict:
    logits = Runtime(onnx_path).predict_logits(test.images)
    m = compute_metrics(test.labels, logits, test.info.task, class_names=test.info.labels,
                        positive_label=test.info.positive_label, n_bootstrap=500)
    out = {"test_auc": m.auc, "test_acc": m.acc, "auc_ci": m.ci["auc"], "acc_ci": m.ci["acc"],
           "positive_class": m.positive_class, "sensitivity": m.sensitivity, "specificity": m.specificity,
           "balanced_accuracy": m.balanced_accuracy}
    if ref_logits is not None:
        out["parity_max_abs_logit_diff"] = float(np.abs(logits - ref_logits).max())
        out["parity_argmax_agreement"] = float(np.mean(logits.argmax(1) == ref_logits.argmax(1)))
    return out


def _torch_logits(ckpt: str, test) -> tuple[np.ndarray, dict]:
    model, _ = load_checkpoint(ckpt)
    x, y = test.tensors()
    logits = predict_logits(model, x)
    m = compute_metrics(y.numpy(), logits, test.info.task, n_bootstrap=0)
    return logits, {"torch_test_auc": m.auc, "torch_test_acc": m.acc}


def _ort_static_peer(fp32_onnx: Path, out: Path, train) -> Path:
    """onnxruntime's own recommended PTQ on the FP32 export: quant_pre_process, then quantize_static (QDQ,
    per-channel INT8 weights), the same 512 calibration images; qsal's preprocessing metadata copied over."""
    calib = Runtime(fp32_onnx).preprocess(train.subset(512).images)
    return _adopt_metadata(_ort_peer(fp32_onnx, out, calib), fp32_onnx, "onnxruntime quantize_static")


def _latency(rows: list[dict], fp32_ckpt: Path, test, rounds: int) -> dict:
    """Interleaved 1-thread latency (b1, b64) of every artifact of a cell and of PyTorch eager FP32."""
    args = argparse.Namespace(rounds=rounds, b1_calls=20, b64_calls=3)
    named = [{"artifact": r["method"], "onnx": Path(r["onnx"])} for r in rows]
    return time_artifacts(named, fp32_ckpt, test, 1, args)


def run_cell(ds: str, model: str, root: str, seed: int, bench_rounds: int, log) -> list[dict]:
    fp32_epochs, qat_epochs, pact_epochs = SCHEDULE[(ds, model)]
    train, val, test = load_splits(ds, root, seed=seed)
    cell = CACHE / f"{ds}_{model}"
    fp32_ckpt = cell / "fp32" / "best.safetensors"
    t0 = time.perf_counter()
    if not fp32_ckpt.is_file():
        train_model(ds, model, TrainConfig(epochs=fp32_epochs, seed=seed, progress=False), cell / "fp32", data_dir=root)
    fp32_seconds = time.perf_counter() - t0
    variants = [("fp32", None, 0)] + [(f"ptq-int8-{o}", PTQConfig(observer=o), 0) for o in ("minmax", "percentile", "mse", "entropy")]
    variants += [("qat-int8", QATConfig(), qat_epochs)] + [(f"pact-{b}", PACTConfig(bits=b), pact_epochs) for b in (8, 4, 3, 2)]
    rows = []
    for name, cfg, epochs in variants:
        t0 = time.perf_counter()
        ckpt = str(fp32_ckpt)
        if cfg is not None:
            ckpt = quantize_checkpoint(str(fp32_ckpt), cfg, cell / name, epochs=epochs, lr=FINETUNE_LR[name.split("-")[0]] or 1e-4,
                                       data_dir=root, seed=seed, progress=False,
                                       train_subset=FINETUNE_SUBSET.get(model), force=True)["checkpoint"]
        seconds = time.perf_counter() - t0 if cfg is not None else fp32_seconds
        onnx_path = cell / name / "model.onnx"
        export_checkpoint(ckpt, onnx_path, force=True)  # a rerun of a killed cell redoes it
        ref_logits, torch_metrics = _torch_logits(ckpt, test)
        row = {"dataset": ds, "model": model, "method": name, "fine_tune_epochs": epochs if cfg else fp32_epochs,
               "fine_tune_images": (min(FINETUNE_SUBSET.get(model) or len(train), len(train)) if epochs and cfg else None),
               "quantize_or_train_s": seconds, "quant_config": cfg.to_dict() if cfg else None,
               "fine_tune_lr": FINETUNE_LR[name.split("-")[0]] if cfg else None, **_artifact_metrics(onnx_path, test, ref_logits), **torch_metrics,
               "onnx": str(onnx_path)}
        rows.append(row)
        log(f"  {ds} {model} {name}: artifact AUC {row['test_auc']:.3f} ACC {row['test_acc']:.3f} "
            f"(torch {torch_metrics['torch_test_auc']:.3f}/{torch_metrics['torch_test_acc']:.3f})")
    peer = _ort_static_peer(cell / "fp32" / "model.onnx", cell / "ort_quantize_static.onnx", train)
    rows.append({"dataset": ds, "model": model, "method": "onnxruntime quantize_static (peer)", "fine_tune_epochs": 0,
                 **_artifact_metrics(peer, test, None), "onnx": str(peer)})
    # Latency: all artifacts of this cell in one process, interleaved rounds, 1 thread.
    timing = _latency(rows, fp32_ckpt, test, bench_rounds)
    for row in rows:
        row.update(size_bytes=Path(row["onnx"]).stat().st_size, latency_b1_ms=timing[1][row["method"]]["median_ms"],
                   latency_b64_ms=timing[64][row["method"]]["median_ms"],
                   throughput_b64=64e3 / timing[64][row["method"]]["median_ms"])
    eager = [{"latency_ms_p50": timing[b][EAGER]["median_ms"], "throughput_img_s": b * 1e3 / timing[b][EAGER]["median_ms"]}
             for b in (1, 64)]
    base = rows[0]
    for row in rows:
        row["size_ratio"] = row["size_bytes"] / base["size_bytes"]
        row["speedup_b64_vs_fp32_onnx"] = base["latency_b64_ms"] / row["latency_b64_ms"]
        row["speedup_b1_vs_torch_eager"] = eager[0]["latency_ms_p50"] / row["latency_b1_ms"]
        row["speedup_b64_vs_torch_eager"] = eager[1]["latency_ms_p50"] / row["latency_b64_ms"]
        row["delta_acc_vs_fp32"] = row["test_acc"] - base["test_acc"]
        row["delta_auc_vs_fp32"] = row["test_auc"] - base["test_auc"]
    rows.append({"dataset": ds, "model": model, "method": "pytorch fp32 eager", "latency_b1_ms": eager[0]["latency_ms_p50"],
                 "latency_b64_ms": eager[1]["latency_ms_p50"], "throughput_b64": eager[1]["throughput_img_s"]})
    return rows


COLUMNS = [("dataset", "dataset"), ("model", "model"), ("method", "method"), ("fine_tune_epochs", "epochs"),
           ("test_acc", "ACC"), ("delta_acc_vs_fp32", "ΔACC"), ("test_auc", "AUC"), ("auc_ci", "AUC 95% CI"),
           ("delta_auc_vs_fp32", "ΔAUC"), ("sensitivity", "sens."), ("specificity", "spec."),
           ("size_bytes", "ONNX size"), ("size_ratio", "size vs FP32"), ("latency_b1_ms", "b1 ms"),
           ("latency_b64_ms", "b64 ms"), ("speedup_b64_vs_fp32_onnx", "b64 speed-up vs FP32 ONNX"),
           ("speedup_b64_vs_torch_eager", "b64 speed-up vs PyTorch")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir")
    ap.add_argument("--datasets", nargs="+", default=["breastmnist", "retinamnist", "pneumoniamnist"])
    ap.add_argument("--models", nargs="+", default=["small_cnn", "edge_mbv2", "resnet18"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (latency is always 1 thread)")
    ap.add_argument("--bench-rounds", type=int, default=10, help="interleaved latency rounds per cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "quantization"))
    ap.add_argument("--merge", nargs="+", help="combine result JSONs of runs split by dataset into --out")
    args = ap.parse_args()
    out = Path(args.out)
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        full = next((p for p in parts if "environment" in p), {"environment": environment()})
        merged = {**full, "rows": [r for p in parts for r in p["rows"]], "merged_from": args.merge,
                  "seconds": sum(p.get("seconds", 0.0) for p in parts)}
        return _write(out, merged, args.seed)
    torch.set_num_threads(args.threads)
    root = data_dir(args.data_dir)
    partial = out.with_suffix(".partial.json")
    rows = json.loads(partial.read_text())["rows"] if partial.is_file() else []
    done = {(r["dataset"], r["model"]) for r in rows}
    t_start = time.perf_counter()
    for ds in args.datasets:
        for model in args.models:
            if (ds, model) in done:
                continue
            print(f"[{ds} / {model}]", flush=True)
            rows += run_cell(ds, model, root, args.seed, args.bench_rounds, lambda s: print(s, flush=True))
            write_json_atomic(partial, {"rows": rows})  # a killed run resumes from the finished cells
    result = {"benchmark": "quantization", "seed": args.seed, "train_threads": args.threads, "latency_threads": 1,
              "fine_tune_lr": FINETUNE_LR, "schedule": {f"{d}/{m}": dict(zip(("fp32_epochs", "qat_epochs", "pact_epochs"), v)) for (d, m), v in SCHEDULE.items()},
              "note": "Shortened schedules (MedMNIST trains 100 epochs); ResNet-18 fine-tunes on 1200 training images. "
                      "Accuracy columns are the ONNX artifact's.",
              "environment": environment(), "seconds": time.perf_counter() - t_start, "rows": rows}
    _write(out, result, args.seed)
    partial.unlink(missing_ok=True)


def _write(out: Path, result: dict, seed: int) -> None:
    rows = result["rows"]
    write_json_atomic(out.with_suffix(".json"), result)
    table = results_table(rows, COLUMNS)
    env = result["environment"]
    text = (f"# Quantization benchmark (MedMNIST 28 px)\n\n{written_by(__file__)}\n\nCPU {env['cpu']}; latency: onnxruntime "
            f"{env['versions']['onnxruntime']}, default sessions, 1 thread, all artifacts of a cell interleaved in one process "
            "(median of per-round medians); "
            f"seed {seed}.\n**Shortened schedules** (epochs column: FP32 training epochs for fp32, fine-tuning "
            "epochs for QAT/PACT; MedMNIST trains 100; ResNet-18 fine-tunes on a seeded 1,200-image subset). Accuracy/AUC are measured on the exported ONNX artifact "
            "with onnxruntime; the fake-quant PyTorch figures and the logit parity are in quantization.json. Sensitivity "
            "and specificity (at 0.5) are about each binary set's positive class: BreastMNIST malignant (label 0), "
            "PneumoniaMNIST pneumonia (label 1).\n\n"
            f"{table}\n" + _changes(rows))
    write_text_atomic(out.with_suffix(".md"), text)
    print(text)


def _changes(rows: list[dict]) -> str:
    """Before/after against the pre-issue-9 run (same datasets, models and epochs; see FINETUNE_LR for the lr)."""
    if not BEFORE.is_file():
        return ""
    before = json.loads(BEFORE.read_text())["rows"]
    table = what_changed(before, rows, ("dataset", "model", "method"), [("test_auc", "AUC"), ("test_acc", "ACC")],
                         only=lambda r: r["method"].startswith(("fp32", "qat", "pact")))
    return ("\n## What changed against the pre-fix run\n\n"
            "Rows of the run before the issue-9 fixes ([pre_issue9/quantization.json](pre_issue9/quantization.json)) "
            "against this one, same datasets, models, epochs, subsets and seed; artifact metrics. Three things differ "
            "besides the method fixes: FP32 parents now train with bfloat16 autocast (issue 13; FP32 rows move by "
            "that alone), the model is built after seeding (issue 9, finding 10), and PACT fine-tunes at lr 1e-4 "
            "instead of 5e-4 because its BatchNorm is now folded first (see [method_fixes.md](method_fixes.md), which "
            "isolates each fix on one FP32 parent). PTQ rows are left out: their method did not change.\n\n"
            f"{table}\n")


if __name__ == "__main__":
    main()
