"""``qsal run CONFIG.yaml``: a study grid as independent, resumable cells.

A cell is one model: (dataset, model, seed, method). Cells of one (dataset, model, seed) form a group
that runs in order in one worker (the FP32 and SGT parents first); groups run in parallel on local
processes (``workers``) or on a Ray cluster. Each cell folder holds its config, checkpoint, ONNX
artifact + model card, ``result.json`` (metrics, size, latency, saliency metrics), saliency maps and a
log; a finished cell is skipped on rerun, a killed one resumes its training, a failed one records
``error.json`` and the others go on.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qsal._atomic import write_json_atomic
from qsal.errors import QsalError
from qsal.study.config import RunConfig, load_run_config, parse_run_config

__all__ = ["CellSpec", "plan_groups", "run_study", "collect_results", "report_run"]


@dataclass(frozen=True)
class CellSpec:
    dataset: str
    model: str
    seed: int
    kind: str  # fp32 | sgt | ptq | qat | pact | sgt+pact
    bits: int = 8
    observer: str = ""

    @property
    def label(self) -> str:
        return {"fp32": "fp32", "sgt": "sgt", "ptq": f"ptq-int8-{self.observer}", "qat": "qat-int8",
                "pact": f"pact-{self.bits}", "sgt+pact": f"sgt+pact-{self.bits}"}[self.kind]

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.model}/seed{self.seed}/{self.label}"


def plan_groups(cfg: RunConfig) -> list[list[CellSpec]]:
    """Cells grouped by (dataset, model, seed), parents first."""
    groups = []
    for ds in cfg.datasets:
        for model in cfg.models:
            for seed in cfg.seeds:
                cells = [CellSpec(ds, model, seed, "fp32")]
                if "sgt" in cfg.methods or "sgt+pact" in cfg.methods:
                    cells.append(CellSpec(ds, model, seed, "sgt"))
                if "ptq" in cfg.methods:
                    cells += [CellSpec(ds, model, seed, "ptq", 8, o) for o in cfg.observers]
                if "qat" in cfg.methods:
                    cells.append(CellSpec(ds, model, seed, "qat"))
                for kind in ("pact", "sgt+pact"):
                    if kind in cfg.methods:
                        cells += [CellSpec(ds, model, seed, kind, b) for b in cfg.bits]
                groups.append(cells)
    return groups


def _log(cell_dir: Path, message: str) -> None:
    with open(cell_dir / "log.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def _run_cell(spec: CellSpec, cfg: RunConfig, run_dir: Path, progress: bool) -> dict:
    import torch

    from qsal.evaluate import predict_logits
    from qsal.pipeline import export_checkpoint, load_splits, quantize_checkpoint, train_model, write_card
    from qsal.study.files import score_artifact
    from qsal.provenance import environment
    from qsal.quant import PACTConfig, PTQConfig, QATConfig
    from qsal.saliency import SaliencyGuidedStep
    from qsal.train import TrainConfig

    cell = run_dir / spec.id
    cell.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cell / "config.json", {"cell": asdict(spec), "label": spec.label, "study": cfg.to_dict()})
    _log(cell, f"start {spec.id}")
    parent = lambda label: str(run_dir / spec.dataset / spec.model / f"seed{spec.seed}" / label / "best.safetensors")  # noqa: E731
    t0 = time.perf_counter()
    train, val, test = load_splits(spec.dataset, cfg.data_dir, seed=spec.seed)
    sgt = SaliencyGuidedStep(train.info.task, k=cfg.sgt.k, lam=cfg.sgt.lam, seed=spec.seed)
    if spec.kind in ("fp32", "sgt"):
        tc = TrainConfig(epochs=cfg.epochs.fp32, lr=cfg.lr.fp32, seed=spec.seed, progress=progress)
        train_model(spec.dataset, spec.model, tc, cell, data_dir=cfg.data_dir, saliency_guided=spec.kind == "sgt",
                    sgt_k=cfg.sgt.k, sgt_lambda=cfg.sgt.lam)
    else:
        qcfg = {"ptq": lambda: PTQConfig(observer=spec.observer), "qat": QATConfig,
                "pact": lambda: PACTConfig(bits=spec.bits), "sgt+pact": lambda: PACTConfig(bits=spec.bits)}[spec.kind]()
        quantize_checkpoint(parent("sgt" if spec.kind == "sgt+pact" else "fp32"), qcfg, cell, epochs=cfg.epochs.finetune,
                            lr=cfg.lr.finetune, data_dir=cfg.data_dir, seed=spec.seed, progress=progress,
                            step=sgt if spec.kind == "sgt+pact" else None)
    seconds = time.perf_counter() - t0
    _log(cell, f"trained/quantized in {seconds:.1f} s")
    ckpt = cell / "best.safetensors"
    metrics = json.loads((cell / "metrics.json").read_text())["test"]
    result = {"id": spec.id, **asdict(spec), "label": spec.label, "test_auc": metrics["auc"], "test_acc": metrics["acc"],
              "auc_ci": metrics["ci"].get("auc"), "acc_ci": metrics["ci"].get("acc"), "sensitivity": metrics.get("sensitivity"),
              "specificity": metrics.get("specificity"), "train_s": seconds}
    exp = export_checkpoint(str(ckpt), cell / "model.onnx", card=False)
    art, probs = score_artifact(cell / "model.onnx", test, spec.seed)
    np.save(cell / "test_probs.npy", probs)  # the report's confusion matrix, ROC and reliability figures
    np.save(cell / "test_labels.npy", test.labels)
    result.update(onnx_auc=art["auc"], onnx_acc=art["acc"], onnx_acc_ci=art["ci"].get("acc"), size_bytes=exp["size_bytes"])
    if cfg.measure.latency:
        from qsal.export.bench import bench_onnx

        bench = bench_onnx(cell / "model.onnx", threads=(1,), batches=(1, 64), seconds=1.0)
        b1, b64 = bench["runs"]
        result.update(latency_b1_ms=b1["latency_ms_p50"], latency_b1_p95_ms=b1["latency_ms_p95"],
                      throughput_b64=b64["throughput_img_s"])
    if cfg.measure.saliency:
        from qsal.checkpoint import load_checkpoint
        from qsal.saliency import explain
        from qsal.saliency.metrics import faithfulness_curve, gini
        from qsal.saliency.plot import to_display

        model, _ = load_checkpoint(ckpt)
        sub = test.subset(cfg.measure.n_explain, 0)  # the same images in every cell
        x, y = sub.tensors()
        maps = explain(model, x, "gradient_abs", target=y).numpy()
        np.save(cell / "saliency_maps.npy", maps)
        if spec.kind == "fp32":
            np.save(cell / "explain_images.npy", to_display(x.numpy(), sub.info.mean, sub.info.std))
            np.save(cell / "explain_indices.npy", test.subset_indices(cfg.measure.n_explain, 0))

        faith = faithfulness_curve(lambda a: predict_logits(model, torch.from_numpy(a)), x.numpy(), y.numpy(), maps, seed=spec.seed)
        result.update(faithfulness_gap=faith["gap"], gini=float(np.mean(gini(maps))))
    if cfg.measure.latency:
        write_card(str(ckpt), cell / "model.onnx", bench, explanations={
            k: result[k] for k in ("faithfulness_gap", "gini") if k in result} or None, data_dir=cfg.data_dir)
    result["environment"] = environment()
    _log(cell, f"done {json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float))})}")
    write_json_atomic(cell / "result.json", result)
    return result


def _agreement_with_fp32(group: list[CellSpec], run_dir: Path) -> None:
    from qsal.saliency.metrics import agreement

    base = run_dir / group[0].id / "saliency_maps.npy"
    if not base.is_file():
        return
    ref = np.load(base)
    for spec in group:
        cell = run_dir / spec.id
        if not (cell / "result.json").is_file() or not (cell / "saliency_maps.npy").is_file():
            continue
        a = agreement(ref, np.load(cell / "saliency_maps.npy"))
        result = json.loads((cell / "result.json").read_text())
        result.update(agreement_spearman=a["spearman"], agreement_iou=a["topk_iou"], agreement_ssim=a["ssim"],
                      most_changed=a["most_changed"])
        write_json_atomic(cell / "result.json", result)


def run_group(group: list[dict], run_dir: str, cfg_dict: dict, threads: int, progress: bool) -> list[dict]:
    """Run one group's cells in order; returns ``{"id", "status"}`` per cell. Never raises for a cell."""
    import torch

    torch.set_num_threads(threads)
    cfg = parse_run_config(cfg_dict)
    run_path = Path(run_dir)
    specs = [CellSpec(**g) for g in group]
    statuses = []
    for spec in specs:
        cell = run_path / spec.id
        if (cell / "result.json").is_file():
            statuses.append({"id": spec.id, "status": "skipped (finished earlier)"})
            continue
        try:
            _run_cell(spec, cfg, run_path, progress)
            (cell / "error.json").unlink(missing_ok=True)
            statuses.append({"id": spec.id, "status": "done"})
        except Exception as e:  # noqa: BLE001 - a failed cell is recorded and the study goes on
            cell.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cell / "error.json", {"error": str(e), "type": type(e).__name__,
                                                     "traceback": traceback.format_exc()})
            statuses.append({"id": spec.id, "status": f"failed: {type(e).__name__}: {e}"})
    _agreement_with_fp32(specs, run_path)
    return statuses


def run_study(config: str | Path | RunConfig, run_dir: str | Path, *, workers: int = 1, backend: str = "local",
              ray_address: str | None = None, force: bool = False, progress: bool = True) -> list[dict]:
    """Run (or resume) every cell of a study into ``run_dir``; returns the per-cell statuses.

    ``progress``: one study bar on a terminal (cells log into their own ``log.txt``, so bars never
    nest), one plain line per finished cell otherwise.
    """
    import sys

    from tqdm import tqdm

    cfg = config if isinstance(config, RunConfig) else load_run_config(config)
    run_dir = Path(run_dir)
    stamp = run_dir / "run_config.json"
    if stamp.is_file():
        old = json.loads(stamp.read_text())
        if old.get("fingerprint") != cfg.fingerprint() and not force:
            raise QsalError(f"{run_dir} was made by a different config (fingerprint {old.get('fingerprint')} vs "
                            f"{cfg.fingerprint()}); pass --force to reuse it, or choose another --out")
    write_json_atomic(stamp, {"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()})
    groups = plan_groups(cfg)
    n_cells = sum(len(g) for g in groups)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    payload = [([asdict(c) for c in g], str(run_dir), cfg.to_dict(), threads) for g in groups]
    statuses: list[dict] = []
    on_terminal = progress and sys.stderr.isatty()
    bar = tqdm(total=n_cells, desc=f"study {cfg.name}", disable=not on_terminal, unit="cell")

    def finished(res: list[dict]) -> None:
        statuses.extend(res)
        bar.update(len(res))
        if progress and not on_terminal:
            for s in res:
                print(f"[{len(statuses)}/{n_cells}] {s['status']}: {s['id']}", file=sys.stderr, flush=True)

    if backend == "ray":
        try:
            import ray
        except ImportError:
            raise QsalError("the Ray backend needs ray: pip install 'qsal[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=ray_address, num_cpus=None if ray_address else workers, include_dashboard=False,
                     log_to_driver=False)
        remote = ray.remote(run_group)
        pending = [remote.remote(*p, False) for p in payload]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            finished(ray.get(ready[0]))
    elif workers > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(run_group, *p, False) for p in payload]
            for f in as_completed(futures):
                finished(f.result())
    else:
        for p in payload:
            finished(run_group(*p, False))
    bar.close()
    write_json_atomic(run_dir / "statuses.json", statuses)
    return statuses


def collect_results(run_dir: str | Path) -> dict:
    """Aggregate finished cells: one row per (dataset, model, method), mean and std over seeds."""
    run_dir = Path(run_dir)
    if not (run_dir / "run_config.json").is_file():
        raise QsalError(f"{run_dir} is not a qsal run directory (no run_config.json); pass the --out of `qsal run`")
    order = {k: i for i, k in enumerate(("fp32", "sgt", "ptq", "qat", "pact", "sgt+pact"))}
    results = sorted((json.loads(p.read_text()) for p in run_dir.glob("*/*/seed*/*/result.json")),
                     key=lambda r: (r["dataset"], r["model"], order[r["kind"]], -r["bits"], r["observer"], r["seed"]))
    failed = [json.loads(p.read_text()) | {"id": str(p.parent.relative_to(run_dir))}
              for p in sorted(run_dir.glob("*/*/seed*/*/error.json"))]
    if not results:
        raise QsalError(f"{run_dir} has no finished cells yet; run `qsal run` first")
    keys = {}
    for r in results:
        keys.setdefault((r["dataset"], r["model"], r["label"]), []).append(r)
    multi = len({r["dataset"] for r in results}) > 1 or len({r["model"] for r in results}) > 1
    rows = []
    for (ds, model, label), rs in keys.items():
        row = {"model": f"{ds}/{model}/{label}" if multi else label, "seeds": len(rs)}
        for k in ("test_auc", "test_acc", "sensitivity", "specificity", "onnx_acc", "size_bytes", "latency_b1_ms",
                  "throughput_b64", "faithfulness_gap", "agreement_spearman", "gini"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                row[k] = float(np.mean(vals))
                if len(rs) > 1 and k in ("test_auc", "test_acc"):
                    row[k + "_std"] = float(np.std(vals))
        row["auc_ci"], row["acc_ci"] = rs[0].get("auc_ci"), rs[0].get("acc_ci")  # first seed's bootstrap CI
        row["most_changed"] = rs[0].get("most_changed", [])
        rows.append(row)
    fp32 = {r["model"]: r for r in rows}
    for r in rows:
        base = fp32.get(r["model"].rsplit("/", 1)[0] + "/fp32" if multi else "fp32")
        if base and r.get("size_bytes"):
            r["size_ratio"] = r["size_bytes"] / base["size_bytes"]
    grids = []
    for img_path in sorted(run_dir.glob("*/*/seed*/fp32/explain_images.npy")):
        group = img_path.parents[1]
        found = {p.parent.name: p for p in group.glob("*/saliency_maps.npy")}
        labels = [r["label"] for r in results if r["label"] in found]
        maps = {label: np.load(found[label])[:6] for label in dict.fromkeys(labels)}
        from qsal.saliency.plot import save_saliency_grid

        grids.append(str(save_saliency_grid(np.load(img_path)[:6], maps, group / "saliency_grid.png",
                                            title=f"{group.relative_to(run_dir)}: |input gradient|, every model")))
    out = {"rows": rows, "failed": failed, "grids": grids, "n_cells": len(results)}
    out.update(_report_arrays(run_dir, keys, multi))
    return out


def _report_arrays(run_dir: Path, keys: dict, multi: bool) -> dict:
    """Test probabilities (first seed) per row, and for a one-group study the saliency payload of the report."""
    from qsal.data import get_info

    predictions, cells = {}, {}
    for (ds, model, label), rs in keys.items():
        cell = run_dir / rs[0]["id"]
        name = f"{ds}/{model}/{label}" if multi else label
        cells[name] = cell
        if (cell / "test_probs.npy").is_file() and (cell / "test_labels.npy").is_file():
            predictions[name] = {"y_true": np.load(cell / "test_labels.npy"), "probs": np.load(cell / "test_probs.npy"),
                                 "scored": "ONNX artifact, first seed"}
    datasets = {ds for ds, _, _ in keys}
    info = get_info(next(iter(datasets))) if len(datasets) == 1 else None
    extra = {"predictions": predictions}
    if info is not None:
        extra.update(class_names=list(info.labels), dataset_name=info.name)
        if predictions:
            extra["n_test"] = len(next(iter(predictions.values()))["y_true"])
    ref = cells.get("fp32")
    if multi or ref is None or not (ref / "explain_images.npy").is_file() or not (ref / "explain_indices.npy").is_file():
        return extra
    idx = np.load(ref / "explain_indices.npy")
    maps = {n: np.load(c / "saliency_maps.npy") for n, c in cells.items() if (c / "saliency_maps.npy").is_file()}
    extra["saliency"] = {"images": np.load(ref / "explain_images.npy"), "maps": maps,
                         "y_true": predictions["fp32"]["y_true"][idx] if "fp32" in predictions else None,
                         "probs": {n: p["probs"][idx] for n, p in predictions.items() if n in maps},
                         "class_names": extra.get("class_names"), "method": "|input gradient|",
                         "indices": idx.tolist(), "reference": "fp32"}
    return extra


def report_run(run_dir: str | Path) -> dict:
    """Write ``report.md`` / ``report.html`` for a run directory; returns their paths and the table."""
    from qsal.provenance import environment
    from qsal.study.report import write_report

    collected = collect_results(run_dir)
    cfg = json.loads((Path(run_dir) / "run_config.json").read_text())["config"]
    results = {"dataset": collected.get("dataset_name", cfg["name"]), "rows": collected["rows"], "failed": collected["failed"],
               "environment": environment(), "source": f"qsal run ({collected['n_cells']} cells, config {cfg['name']})",
               **{k: collected[k] for k in ("predictions", "class_names", "n_test", "saliency") if k in collected}}
    if "saliency" not in results:
        results["saliency_grids"] = collected["grids"]
    return write_report(run_dir, results)
