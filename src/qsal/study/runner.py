"""``qsal run CONFIG.yaml``: a study grid as independent, resumable cells.

A cell is one model: (dataset, model, seed, method). Cells of one (dataset, model, seed) form a group
that runs in order in one worker (the FP32 and SGT parents first); groups run in parallel on local
processes (``workers``) or on a Ray cluster. Each cell folder holds its config, checkpoint, ONNX
artifact + model card, ``result.json`` (metrics, size, latency, saliency metrics), saliency maps and a
log; a finished cell is skipped on rerun, a killed one resumes its training, a failed one records
``error.json`` and the others go on. One ``qsal run`` holds a run folder at a time (``rundir.run_lock``);
``qsal run`` exits non-zero when a cell failed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qsal._atomic import write_json_atomic
from qsal.errors import QsalError
from qsal.provenance import usable_cpus
from qsal.study.config import RunConfig, load_run_config, parse_run_config
from qsal.study.redo import cells_to_redo, clear_cell, finished, parent_made_at, read_results
from qsal.study.rundir import load_npy, read_json, run_lock

__all__ = ["CellSpec", "plan_groups", "run_study", "explanation_measures"]


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

    @property
    def parent(self) -> str | None:
        """Label of the float cell a quantized cell starts from (SGT+PACT: the SGT model); None for fp32/sgt."""
        return None if self.kind in ("fp32", "sgt") else "sgt" if self.kind == "sgt+pact" else "fp32"


def plan_groups(cfg: RunConfig) -> list[list[CellSpec]]:
    """Cells grouped by (dataset, model, seed), each parent before its children and the FP32 family first:
    SGT's long training comes after the quick quantized cells of FP32, so a run stopped early (a time
    limit) has finished as many cells as it could."""
    groups = []
    for ds in cfg.datasets:
        for model in cfg.models:
            for seed in cfg.seeds:
                cells = [CellSpec(ds, model, seed, "fp32")]
                if "ptq" in cfg.methods:
                    cells += [CellSpec(ds, model, seed, "ptq", 8, o) for o in cfg.observers]
                if "qat" in cfg.methods:
                    cells.append(CellSpec(ds, model, seed, "qat"))
                if "pact" in cfg.methods:
                    cells += [CellSpec(ds, model, seed, "pact", b) for b in cfg.bits]
                if "sgt" in cfg.methods or "sgt+pact" in cfg.methods:
                    cells.append(CellSpec(ds, model, seed, "sgt"))
                if "sgt+pact" in cfg.methods:
                    cells += [CellSpec(ds, model, seed, "sgt+pact", b) for b in cfg.bits]
                groups.append(cells)
    return groups


def quant_config(spec: CellSpec, cfg: RunConfig):
    """The quantization config a study makes its cell ``spec`` with (``None`` for FP32 and SGT parents)."""
    from qsal.quant import PTQConfig, QATConfig

    if spec.kind in ("fp32", "sgt"):
        return None
    if spec.kind == "ptq":
        return PTQConfig(observer=spec.observer)
    return QATConfig() if spec.kind == "qat" else cfg.pact_config(spec.bits)


def expected_configs(specs: list[CellSpec], cfg: RunConfig) -> dict[str, dict]:
    """``{label: quant config to_dict()}`` of a group's quantized cells, for ``redo.cells_to_redo``."""
    return {s.label: quant_config(s, cfg).to_dict() for s in specs if s.parent is not None}


def _log(cell_dir: Path, message: str) -> None:
    with open(cell_dir / "log.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def _run_cell(spec: CellSpec, cfg: RunConfig, run_dir: Path, progress: bool) -> dict:
    from qsal.pipeline import export_checkpoint, load_splits, quantize_checkpoint, train_model, write_card
    from qsal.provenance import environment
    from qsal.runtime import Runtime
    from qsal.saliency import SaliencyGuidedStep
    from qsal.scoring import artifact_row, score_onnx
    from qsal.train import resolve_device

    cell = run_dir / spec.id
    cell.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cell / "config.json", {"cell": asdict(spec), "label": spec.label, "study": cfg.to_dict()})
    _log(cell, f"start {spec.id}")
    t0 = time.perf_counter()
    train, val, test = load_splits(spec.dataset, cfg.data_dir, seed=spec.seed)
    sgt = SaliencyGuidedStep(train.info.task, k=cfg.sgt.k, lam=cfg.sgt.lam, seed=spec.seed, target=cfg.sgt.target)
    train_cfg, finetune_cfg = cfg.train_configs(spec.dataset, spec.model, spec.seed, progress)
    if spec.kind in ("fp32", "sgt"):
        train_model(spec.dataset, spec.model, train_cfg, cell, data_dir=cfg.data_dir, saliency_guided=spec.kind == "sgt",
                    sgt_k=cfg.sgt.k, sgt_lambda=cfg.sgt.lam, sgt_target=cfg.sgt.target,
                    resume=True)  # the study's own check guards mixing
    else:
        qcfg = quant_config(spec, cfg)
        quantize_checkpoint(str(cell.parent / spec.parent / "best.safetensors"), qcfg, cell, data_dir=cfg.data_dir,
                            seed=spec.seed, progress=progress, step=sgt if spec.kind == "sgt+pact" else None,
                            train_config=finetune_cfg, resume=True)
    seconds = time.perf_counter() - t0
    _log(cell, f"trained/quantized in {seconds:.1f} s")
    ckpt = cell / "best.safetensors"
    metrics = read_json(cell / "metrics.json", "rerun `qsal run` to redo this cell")["test"]
    exp = export_checkpoint(str(ckpt), cell / "model.onnx", card=False, force=True)  # the cell owns its files
    deployed = Runtime(cell / "model.onnx")  # one session scores both splits
    art, probs = score_onnx(deployed, test, seed=spec.seed)
    on_val = score_onnx(deployed, val, n_bootstrap=0, seed=spec.seed)[0].to_dict()
    del deployed
    result = {"id": spec.id, **asdict(spec), "label": spec.label, **artifact_row(art, metrics),
              # the artifact on the validation split: what a choice among cells (benchmarks/targets.py) may look at
              "val_auc": on_val.get("auc"), "val_acc": on_val.get("acc"),
              "acc_ci": art.ci.get("acc"), "train_s": seconds, "size_bytes": exp["size_bytes"],
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
    if cfg.measure.latency:
        write_card(str(ckpt), cell / "model.onnx", bench, metrics=art.to_dict(), explanations={  # scored above
            k: result[k] for k in ("faithfulness_gap", "deletion_auc", "insertion_auc", "gini") if k in result} or None, data_dir=cfg.data_dir)
    result["environment"] = environment()
    _log(cell, f"done {json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float))})}")
    write_json_atomic(cell / "result.json", result)
    return result


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
    from qsal.saliency.metrics import deletion_insertion, faithfulness_curve, gini

    model = model.to(device)
    maps = explain(model, x, "gradient_abs", target=y).numpy()
    model_fn = lambda a: predict_logits(model, torch.from_numpy(a), device=device)  # noqa: E731
    faith = faithfulness_curve(model_fn, x.numpy(), y.numpy(), maps, seed=seed)
    curves = deletion_insertion(model_fn, x.numpy(), y.numpy(), maps)
    return maps, {"faithfulness_gap": faith["gap"], "deletion_auc": curves["deletion_auc"],
                  "insertion_auc": curves["insertion_auc"], "gini": float(np.mean(gini(maps)))}


def _redo_fix(run_dir: Path, spec: CellSpec) -> str:
    return f"delete the folder {run_dir / spec.id} and rerun `qsal run` to redo that cell"


def _agreement_with_fp32(group: list[CellSpec], run_dir: Path) -> dict[str, str]:
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
        write_json_atomic(cell / "result.json", result)
    return problems


def run_group(group: list[dict], run_dir: str, cfg_dict: dict, threads: int, progress: bool) -> list[dict]:
    """Run one group's cells in order; returns ``{"id", "status"}`` per cell. Never raises for a cell."""
    import torch

    torch.set_num_threads(threads)
    cfg = parse_run_config(cfg_dict)
    run_path = Path(run_dir)
    specs = [CellSpec(**g) for g in group]
    statuses = []
    # kept current below: only the cell being run changes its result.json (the agreement step after it rewrites the
    # same file with map-agreement fields, none of which a redo decision reads)
    results = read_results(specs, run_path)
    expected = expected_configs(specs, cfg)
    for spec in specs:
        cell = run_path / spec.id
        try:
            # asked as each cell is reached: a child is redone once its parent has been retrained, not before
            redo = cells_to_redo(specs, run_path, results, expected).get(spec.label)
            if redo is not None and not redo.after_parent:
                results[spec.label] = None  # first: a clear_cell that fails half-way has removed result.json
                clear_cell(cell)  # its run.json may name another parent path or method version: start afresh
                _log(cell, redo.reason)
            elif results[spec.label] is not None:
                statuses.append({"id": spec.id, "status": "skipped (finished earlier)"})
                continue
            try:
                _run_cell(spec, cfg, run_path, progress)
            finally:  # finished, or failed (no result.json: a failed retrain leaves its children alone)
                results[spec.label] = read_results([spec], run_path)[spec.label]
            (cell / "error.json").unlink(missing_ok=True)
            if spec.kind != "fp32":  # now, not only at the group's end: a run stopped by a time limit keeps it
                _agreement_with_fp32([specs[0], spec], run_path)
            statuses.append({"id": spec.id, "status": "done"})
        except Exception as e:  # noqa: BLE001 - a failed cell is recorded and the study goes on
            cell.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cell / "error.json", {"error": str(e), "type": type(e).__name__,
                                                     "traceback": traceback.format_exc()})
            statuses.append({"id": spec.id, "status": f"failed: {type(e).__name__}: {e}"})
    problems = _agreement_with_fp32(specs, run_path)
    for s in statuses:
        if s["id"] in problems:
            s["status"] = f"failed: QsalError: {problems[s['id']]}"
    return statuses


def group_name(group: list[CellSpec]) -> str:
    """``dataset/model/seedN``: the name ``--only`` patterns match (a cell's id without its label)."""
    return group[0].id.rsplit("/", 1)[0]


def select_groups(groups: list[list[CellSpec]], only: list[str] | None) -> list[list[CellSpec]]:
    """The groups whose name ``dataset/model/seedN`` matches one of the shell patterns ``only``, in the order of the
    first pattern each matches (then plan order): ``["pneumoniamnist/*/seed1", "*"]`` runs every group, seed 1 of
    PneumoniaMNIST first. ``None`` keeps all. A pattern that matches no group raises ``QsalError``."""
    if not only:
        return groups
    names = [group_name(g) for g in groups]
    for pattern in only:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise QsalError(f"--only {pattern!r} matches no cell group; groups are named dataset/model/seedN "
                            f"(this study: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    rank = {n: min((i for i, p in enumerate(only) if fnmatch.fnmatchcase(n, p)), default=None) for n in names}
    chosen = [(rank[n], i) for i, n in enumerate(names) if rank[n] is not None]
    return [groups[i] for _, i in sorted(chosen)]


def run_study(config: str | Path | RunConfig, run_dir: str | Path, *, workers: int = 1, backend: str = "local",
              ray_address: str | None = None, force: bool = False, progress: bool = True,
              only: list[str] | None = None) -> list[dict]:
    """Run (or resume) every cell of a study into ``run_dir``; returns the per-cell statuses.

    ``only``: shell patterns on group names ``dataset/model/seedN`` (``select_groups``): run those groups only,
    in the patterns' order; finished cells are skipped as always, and the folder's config check is unchanged.

    ``progress``: one study bar on a terminal (cells log into their own ``log.txt``, so bars never
    nest), one plain line per finished cell otherwise. Holds the folder's lock throughout: a second run
    on the same folder raises ``QsalError`` at once.
    """
    cfg = config if isinstance(config, RunConfig) else load_run_config(config)
    run_dir = Path(run_dir)
    if backend == "ray":  # refused before the folder is touched
        try:
            import ray  # noqa: F401
        except ImportError:
            raise QsalError("the Ray backend needs ray: pip install 'qsal[ray]'") from None
    groups = select_groups(plan_groups(cfg), only)  # a bad pattern is refused before the folder is touched
    _require_data(cfg, [g for g in groups if _has_work(g, run_dir, cfg)])
    with run_lock(run_dir):
        return _run_locked(cfg, run_dir, workers, backend, ray_address, force, progress, groups)


def _has_work(group: list[CellSpec], run_dir: Path, cfg: RunConfig) -> bool:
    results = read_results(group, run_dir)
    return None in results.values() or bool(cells_to_redo(group, run_dir, results, expected_configs(group, cfg)))


def _require_data(cfg: RunConfig, groups: list[list[CellSpec]]) -> None:
    """Refuse a study whose data is not there before any cell starts (else every cell would fail alone): every
    split the cells load, of each dataset of the ``groups`` that have work left (a finished study reruns without it)."""
    from qsal.data import load_split

    for name in dict.fromkeys(g[0].dataset for g in groups):
        for split in ("train", "test"):  # val comes from train (MNIST, CIFAR-10) or beside test (MedMNIST's one file)
            load_split(name, split, cfg.data_dir)  # QsalError naming the folder searched and how to get the files


def other_config(run_dir: Path, cfg: RunConfig) -> str | None:
    """The fingerprint of the config that made ``run_dir`` when it is not ``cfg``'s (``None``: same, or no folder)."""
    stamp = run_dir / "run_config.json"
    if not stamp.is_file():
        return None
    old = read_json(stamp, "delete it to adopt the folder for this config (finished cells stay), or choose another --out")
    return None if old.get("fingerprint") == cfg.fingerprint() else str(old.get("fingerprint"))


def _run_locked(cfg: RunConfig, run_dir: Path, workers: int, backend: str, ray_address: str | None, force: bool,
                progress: bool, groups: list[list[CellSpec]]) -> list[dict]:
    from tqdm import tqdm

    stamp = run_dir / "run_config.json"
    if (old := other_config(run_dir, cfg)) is not None and not force:
        raise QsalError(f"{run_dir} was made by a different config (fingerprint {old} vs {cfg.fingerprint()}); "
                        "pass --force to reuse it, or choose another --out")
    write_json_atomic(stamp, {"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()})
    n_cells = sum(len(g) for g in groups)
    # taskset -c 0 qsal run ... trains on 1 thread; --only one/group --workers 4 gives that group every core
    threads = max(1, usable_cpus() // max(1, min(workers, len(groups))))
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
        import ray

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

        with _safe_path_env(), ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(run_group, *p, False) for p in payload]
            for f in as_completed(futures):
                finished(f.result())
    else:
        for p in payload:
            finished(run_group(*p, False))
    bar.close()
    write_json_atomic(run_dir / "statuses.json", statuses)
    return statuses


@contextlib.contextmanager
def _safe_path_env():
    """Where worker processes start a fresh interpreter (spawn/forkserver: macOS, Windows, Python >= 3.14),
    ``PYTHONSAFEPATH`` keeps the working directory off its import path while it boots."""
    old = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = old
