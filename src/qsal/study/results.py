"""A finished (or partly finished) ``qsal run`` folder read back: every cell's result validated, rows
aggregated over seeds (mean and std), and ``qsal report RUN_DIR``'s inputs (predictions, saliency maps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from qsal.errors import QsalError
from qsal.study.arrays import dataset_facts, report_arrays, seed_mean_cis
from qsal.study.rundir import load_npy, read_json, redo_fix

__all__ = ["collect_results", "report_run"]


# b64 img/s before this time (UTC, as result.json's environment records it): the batch over the median call, which
# reads higher on a busy CPU; from it, the images scored over the total time the timed calls took (commit 8fc2cb4)
THROUGHPUT_REDEFINED = "2026-11-28T10:27"

# what a quantized cell ran on where onnxruntime's fast integer kernels saturate (x86-64 without VNNI): the exact
# u8 x u8 kernels for its 8-bit layers (runtime.session_options); cells scored by qsal from commit bf959da (2026-11-29)
# to the change that brought those kernels ran the dequantized float graph there instead (they record
# integer_kernels_off)
U8U8_HERE = "integer, exact u8u8 (no VNNI)"
SATURATING_HERE = "integer, saturating (no VNNI, QSAL_INTEGER_KERNELS=1)"
DEQUANTIZED_HERE = "float, dequantized (no VNNI)"


def kernels_here(record: dict, recorded: str | None) -> str | None:
    """What a cell or bench record's file ran on where it was scored (``recorded``: export's label, ``kernels_label``):
    the export's label, but for the kernels a CPU without VNNI needed instead."""
    return U8U8_HERE if record.get("u8u8_kernels") else SATURATING_HERE if record.get("saturating_kernels") else \
        DEQUANTIZED_HERE if record.get("integer_kernels_off") else recorded

_RESULT_KEYS = ("id", "dataset", "model", "kind", "bits", "observer", "seed", "label")
# the measured fields a report averages, plots or divides by: each is null or a finite number (size_bytes above 0)
_NUMBER_KEYS = ("test_auc", "test_acc", "sensitivity", "specificity", "sensitivity_at_op", "specificity_at_op", "ece",
                "pytorch_acc", "size_bytes", "latency_b1_ms", "throughput_b64", "faithfulness_gap", "deletion_auc",
                "insertion_auc", "agreement_spearman", "gini", "val_auc", "faithfulness_changed")


def _read_result(path: Path, run_dir: Path) -> dict:
    return check_result(read_json(path, redo_fix(path.parent, run_dir)), path, run_dir)


def check_result(result: dict, path: Path, run_dir: Path) -> dict:
    """``result`` (read from ``path``) as a report uses it, if it is a cell result, else ``QsalError``: its identifying
    fields present and typed, its measurements null or finite numbers (a NaN or inf an older qsal wrote reads as null,
    ``defined``). ``qsal run`` counts only such a cell finished."""
    result, fix = defined(result), redo_fix(path.parent, run_dir)
    missing = [k for k in _RESULT_KEYS if k not in result]
    if missing or result.get("kind") not in ("fp32", "sgt", "ptq", "qat", "pact", "sgt+pact"):
        raise QsalError(f"{path} is not a qsal cell result (missing {missing or ['a known kind']}); {fix}")
    wrong = [k for k in _RESULT_KEYS if not isinstance(result[k], int if k in ("bits", "seed") else str)
             or isinstance(result[k], bool)]
    if wrong:
        raise QsalError(f"{path} has fields of the wrong type ({', '.join(wrong)}); {fix}")
    bad = [f"{k}={result[k]!r}"[:40] for k in _NUMBER_KEYS if result.get(k) is not None and not _measured(k, result[k])]
    if bad:
        raise QsalError(f"{path} has measurements that are not finite numbers or out of their range "
                        f"({', '.join(bad)}); {fix}")
    return result


# fractions: an AUC of 1.7 or a sensitivity of -0.2 is a damaged file, not a result
_FRACTIONS = ("test_auc", "test_acc", "sensitivity", "specificity", "sensitivity_at_op", "specificity_at_op", "ece",
              "pytorch_acc", "val_auc", "gini", "deletion_auc", "insertion_auc", "faithfulness_changed")


def _measured(key: str, value) -> bool:
    """A finite number; a fraction in [0, 1]; a size, latency or throughput above 0."""
    from qsal.errors import is_finite_number

    if not is_finite_number(value):
        return False
    if key in _FRACTIONS:
        return 0 <= value <= 1
    return key not in ("size_bytes", "latency_b1_ms", "throughput_b64") or value > 0


def _read_error(path: Path, run_dir: Path) -> dict:
    """A failed cell's ``error.json`` as the report lists it: ``error`` and ``type`` always strings (a hand-edited or
    truncated file reads as what it holds, never stops the report halfway through its figures)."""
    try:
        err = read_json(path, "")
    except QsalError as e:
        err = {"error": str(e), "type": "QsalError"}
    return {"error": str(err.get("error", "no message recorded")), "type": str(err.get("type", "unknown error")),
            "id": str(path.parent.relative_to(run_dir))}


def collect_results(run_dir: str | Path, grids: bool = True) -> dict:
    """Aggregate finished cells: one row per (dataset, model, method), mean and std over seeds.
    ``grids=False`` only reads (no saliency-grid PNG is drawn into the folder)."""
    from qsal.quant.config import canonical_config
    from qsal.study.folders import stale_advice
    from qsal.study.redo import recorded_quant_config, stale_results

    run_dir = Path(run_dir)
    if not (run_dir / "run_config.json").is_file():
        raise QsalError(f"{run_dir} is not a qsal run directory (no run_config.json); pass the --out of `qsal run`")
    order = {k: i for i, k in enumerate(("fp32", "sgt", "ptq", "qat", "pact", "sgt+pact"))}
    cfg, groups = _study_plan(run_dir)
    planned = {s.id for g in groups for s in g} if groups is not None else None
    finished = {str(p.parent.relative_to(run_dir)): p for p in run_dir.glob("*/*/seed*/*/result.json")}
    # cells the study's config no longer plans (a seed, method, model or dataset dropped, rerun with --force) are left
    # out, by name: a row's mean must be over the seeds the report's config names
    left_out = sorted(c for c in finished if planned is not None and c not in planned)
    # and finished cells that are not what the config makes now (another schedule, method options or version,
    # measure settings, or a parent trained again): a rerun redoes them; until then they are named, not averaged
    stale = stale_results(groups, run_dir, cfg) if groups is not None else {}
    results = sorted((_read_result(p, run_dir) for c, p in finished.items() if c not in left_out and c not in stale),
                     key=lambda r: (r["dataset"], r["model"], order[r["kind"]], -r["bits"], r["observer"], r["seed"]))
    failed = [_read_error(p, run_dir) for p in sorted(run_dir.glob("*/*/seed*/*/error.json"))
              if str(p.parent.relative_to(run_dir)) not in left_out]
    failed_ids = {f["id"] for f in failed}
    # planned cells with no result yet (running, queued, or never run with this config): named, so a table of some
    # seeds does not read as the study's
    unfinished = [s.id for g in groups or [] for s in g if s.id not in finished and s.id not in failed_ids]
    if not results and failed:
        raise QsalError(f"none of the cells in {run_dir} finished: {len(failed)} failed (first, {failed[0]['id']}: "
                        f"{str(failed[0].get('error'))[:200]}); fix the cause and rerun `qsal run`")
    if not results:
        from qsal.study.rundir import run_holder

        holder = run_holder(run_dir)
        if stale:  # finished, but none is what the config makes now
            first = next(iter(stale))
            raise QsalError(f"none of the {len(stale)} finished cells in {run_dir} is what its study config makes now "
                            f"(first, {first}: {stale[first]}); {stale_advice(stale)}")
        raise QsalError(f"{run_dir} has no finished cells yet; " + (
            f"a `qsal run` (pid {holder}) is working on it: report it once a cell has finished" if holder
            else "run `qsal run` first"))
    keys = {}
    for r in results:
        keys.setdefault((r["dataset"], r["model"], r["label"]), []).append(r)
    multi = len({r["dataset"] for r in results}) > 1 or len({r["model"] for r in results}) > 1
    rows = []
    for (ds, model, label), rs in keys.items():
        # "model" names the row (the method alone in a study of one dataset and one network); the three parts too
        row = {"model": f"{ds}/{model}/{label}" if multi else label, "dataset": ds, "network": model, "method": label,
               "seeds": len(rs), "seed_ids": ", ".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))}
        # one network and method: the same for every seed. An FP32 file runs on float kernels by construction; a
        # quantized cell made before qsal recorded it is unknown, and a row where only some seeds say is marked so
        per_seed = [r.get("kernels") or ("float" if r.get("kind") in ("fp32", "sgt") else None) for r in rs]
        # scored and timed on other kernels on a CPU without VNNI (runtime.SATURATION_NOTE): not plain "integer"
        per_seed = [kernels_here(r, k) for r, k in zip(rs, per_seed)]
        kernels = {k for k in per_seed if k}
        if kernels:
            known = sum(k is not None for k in per_seed)
            row["kernels"] = " / ".join(sorted(kernels)) + (f" ({known} of {len(rs)} seeds recorded)"
                                                            if known < len(rs) else "")
        for k in ("test_auc", "test_acc", "sensitivity", "specificity", "sensitivity_at_op", "specificity_at_op", "ece",
                  "pytorch_acc", "size_bytes", "latency_b1_ms", "throughput_b64", "faithfulness_gap",
                  "faithfulness_changed", "deletion_auc", "insertion_auc", "agreement_spearman", "gini"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                # timings: the median over seeds (the seeds run one network, so they differ by noise only, and one
                # seed timed on a busy CPU moved a 3-seed mean off the latency front); measurements of the models:
                # the mean
                row[k] = float(np.median(vals) if k in ("latency_b1_ms", "throughput_b64") else np.mean(vals))
                if len(rs) > 1 and k in ("test_auc", "test_acc", "sensitivity_at_op", "specificity_at_op",
                                         "faithfulness_gap"):
                    row[k + "_std"] = float(np.std(vals))
        # throughput's definition changed at THROUGHPUT_REDEFINED: each seed's by when it was measured
        defined = {"median" if str((r.get("environment") or {}).get("utc") or "") < THROUGHPUT_REDEFINED else "total"
                   for r in rs if r.get("throughput_b64") is not None}
        if defined:
            row["throughput_definition"] = defined.pop() if len(defined) == 1 else "mixed"
        # latency is comparable within one CPU only: a row whose seeds were timed on several says how many
        timed_on = {(r.get("environment") or {}).get("cpu") for r in rs if r.get("latency_b1_ms") is not None}
        row["latency_cpus"] = len(timed_on)
        # per seed, for paired comparisons (a quantized seed against its own seed's float model)
        row["test_acc_by_seed"] = {f"seed{r['seed']}": r["test_acc"] for r in rs if r.get("test_acc") is not None}
        # validation AUC of each seed's artifact (None: made before result.json recorded it), for choosing on validation
        row["val_auc_by_seed"] = {f"seed{r['seed']}": r.get("val_auc") for r in rs}
        row["cells"] = [r["id"] for r in rs]  # each seed's folder, relative to the run folder
        row["machines"] = _machines(rs)  # where this row's cells ran
        # the cell's bootstrap CI; a row of several seeds gets its mean's below (arrays.seed_mean_cis)
        row["auc_ci"], row["acc_ci"] = rs[0].get("auc_ci"), rs[0].get("acc_ci")
        row["positive_class"], row["artifact"] = rs[0].get("positive_class"), rs[0].get("artifact")
        if rs[0].get("artifact") is not None:  # the table's "scored as": what the metrics columns measured
            row["scored"] = "onnx" if rs[0]["artifact"] else "pytorch"
        # the first seed's decision (its plots and captions are the first seed's predictions) and its dataset's classes:
        # a study's sets differ, and an unnamed positive label would read as label 1
        row["positive_label"], row["operating_point"] = rs[0].get("positive_label"), rs[0].get("operating_point")
        row["class_names"] = facts[1] if (facts := dataset_facts(ds, rs[0])) is not None else None
        row["data_source"] = rs[0].get("data_source")  # folder:PATH for a study's own folder
        # seeds that recorded the share of decisions removal moved: a report's note on a stuck gap needs every seed's
        row["faithfulness_changed_seeds"] = sum(r.get("faithfulness_changed") is not None for r in rs)
        # the seeds that drew the row's seeded splits (one: its seeds share a test set; none recorded: made before)
        row["split_seeds"] = sorted({r["split_seed"] for r in rs if isinstance(r.get("split_seed"), int)})
        row["most_changed"] = rs[0].get("most_changed", [])
        # as read back: a field added later counts as its default (the old behaviour), not as a difference; a cell
        # from before result.json recorded its config has it in best.json (redo.recorded_quant_config)
        recorded = [q for r in rs if (q := recorded_quant_config(run_dir / ds / model / f"seed{r['seed']}" / label, r))
                    is not None]
        configs = {json.dumps(canonical_config(q) or q, sort_keys=True) for q in recorded}
        if len(configs) > 1:  # cells whose config is recorded nowhere cannot be told apart: not flagged
            row["mixed_configs"] = True  # e.g. a study resumed across a method fix: its seeds are not one method
        rows.append(row)
    fp32 = {r["model"]: r for r in rows}
    for r in rows:
        base = fp32.get(r["model"].rsplit("/", 1)[0] + "/fp32" if multi else "fp32")
        if base and r.get("size_bytes"):
            r["size_ratio"] = r["size_bytes"] / base["size_bytes"]
    read = seed_mean_cis(run_dir, keys, rows)
    # checked before any grid PNG is drawn: a damaged folder writes nothing
    arrays = report_arrays(run_dir, keys, multi, read)
    grid_paths = []
    for img_path in sorted(run_dir.glob("*/*/seed*/fp32/explain_images.npy")) if grids else []:
        group = img_path.parents[1]
        found = {p.parent.name: p for p in group.glob("*/saliency_maps.npy")}
        # this group's reported cells only: a left-out cell (a seed or method the config no longer plans) is in no figure
        labels = [r["label"] for r in results if r["label"] in found and r["id"] == f"{group.relative_to(run_dir)}/{r['label']}"]
        if "fp32" not in labels:
            continue
        fix = "delete that cell's folder and rerun `qsal run` to redo it"
        maps = {label: load_npy(found[label], fix, ndim=4)[:6] for label in dict.fromkeys(labels)}
        images = load_npy(img_path, fix, ndim=(3, 4))[:6]
        if any(len(m) != len(images) or m.shape[-2:] != images.shape[1:3] for m in maps.values()):
            raise QsalError(f"the saliency maps in {group} do not match {img_path.name} in count or size; {fix}")
        from qsal.saliency.plot import save_saliency_grid

        grid_paths.append(str(save_saliency_grid(images, maps, group / "saliency_grid.png",
                                            title=f"{group.relative_to(run_dir)}: |input gradient|, every model")))
    from qsal.study.rundir import run_holder

    out = {"rows": rows, "failed": failed, "grids": grid_paths, "n_cells": len(results), "machines": _machines(results),
           "left_out": left_out, "stale": stale, "unfinished": unfinished, "running": run_holder(run_dir),
           "study_datasets": list(cfg.datasets) if cfg is not None else sorted({r["dataset"] for r in results})}
    out.update(arrays)
    return out


def _study_plan(run_dir: Path):
    """``(RunConfig, planned groups)`` of the study config the folder records; ``(None, None)`` when it records none
    this qsal can read (then every finished cell is reported, none is judged stale)."""
    from qsal.study.config import parse_run_config
    from qsal.study.grid import plan_groups

    try:
        raw = read_json(run_dir / "run_config.json", "").get("config")
        if not isinstance(raw, dict):
            return None, None
        cfg = parse_run_config(raw)
        return cfg, plan_groups(cfg)
    except (QsalError, AttributeError):
        return None, None


def _machines(results: list[dict]) -> list[dict]:
    """Where the cells ran (from each result's ``environment``): training device, the CPU that scored the ONNX
    artifact and timed it, torch version; with the cells' count. A study can span machines (a lent GPU, then a
    CPU resuming it), and its latency columns are only comparable within one CPU."""
    found: dict[tuple, list[str]] = {}
    for r in results:
        env = r.get("environment") or {}
        key = (env.get("gpu") or "CPU", env.get("cpu") or "?", (env.get("versions") or {}).get("torch") or "?",
               env.get("torch_threads"))
        found.setdefault(key, []).append(r["id"] if "id" in r else r["label"])
    return [{"trained_on": k[0], "cpu": k[1], "torch": k[2], "torch_threads": k[3], "cells": len(ids),
             "datasets": sorted({i.split("/")[0] for i in ids})} for k, ids in found.items()]


def _cells_done(n_done: int, cfg: dict) -> str:
    """``"51 cells"``, or ``"5 of 24 cells finished"`` while the study's plan has more: a half-finished run's table
    says so where its source is named (the plan from the config the folder records; without one, the count)."""
    from qsal.study.config import parse_run_config
    from qsal.study.grid import plan_groups

    try:
        planned = sum(len(g) for g in plan_groups(parse_run_config(cfg))) if cfg else None
    except QsalError:
        planned = None
    return f"{n_done} of {planned} cells finished" if planned and planned > n_done else f"{n_done} cells"


def report_run(run_dir: str | Path) -> dict:
    """Write ``report.md`` / ``report.html`` for a run directory; returns their paths and the table."""
    from qsal.provenance import environment
    from qsal.study.report import write_report

    stamp = Path(run_dir) / "run_config.json"
    cfg = read_json(stamp, "rerun `qsal run` on this folder to rewrite it") if stamp.is_file() else {}
    collected = collect_results(run_dir)  # before any file is written: a damaged folder writes nothing
    cfg = cfg.get("config") if isinstance(cfg.get("config"), dict) else {}
    name = str(cfg.get("name", Path(run_dir).name))
    # the study's datasets, finished or not: a report of one set's cells must not read as the study's
    study_sets = collected["study_datasets"]
    folders = cfg.get("folders") if isinstance(cfg.get("folders"), dict) else {}
    # a study's own folder by its path too: the short name is the study's, not a set a reader can look up
    datasets = ", ".join(f"{d} (image folder {folders[d]['path']})" if isinstance(folders.get(d), dict)
                         and folders[d].get("path") else d for d in study_sets)
    dataset = datasets or name
    if "dataset_name" in collected:  # the rows are of one set (its classes and test count head the report)
        dataset = collected["dataset_name"] + (f" (of the study's {datasets}: the others have no cell in these tables yet)"
                                               if len(study_sets) > 1 else "")
    schedule = _schedule_words(cfg)
    results = {"dataset": dataset, "rows": collected["rows"], "failed": collected["failed"],
               "environment": environment(), "source": f"qsal run ({_cells_done(collected['n_cells'], cfg)}, config {name})",
               **{k: collected[k] for k in ("predictions", "class_names", "n_test", "n_test_per_dataset", "saliency",
                                            "machines", "left_out",
                                            "stale", "unfinished", "running") if k in collected}}
    if schedule:
        results["schedule"] = schedule
    measure = cfg.get("measure") if isinstance(cfg.get("measure"), dict) else {}
    if measure.get("saliency", True) and isinstance(measure.get("n_explain"), int):
        # the explanation columns are measured on a sample, on the PyTorch model: the header says which
        results["explanations"] = (f"{measure['n_explain']} test images per cell (or its whole test split if smaller), "
                                   "each cell's PyTorch model, |input gradient| maps")
    if "saliency" not in results:
        results["saliency_grids"] = collected["grids"]
    return {**write_report(run_dir, results), "status_notes": _status_notes(collected)}


def _status_notes(collected: dict) -> list[str]:
    """What the tables leave out, in one line each, for the terminal (the report lists the cells)."""
    from qsal.study.folders import stale_advice

    notes = []
    if collected.get("stale"):
        notes.append(f"{len(collected['stale'])} finished cells are out of date for the study's config and left out "
                     f"of the tables ({stale_advice(collected['stale'])}): {', '.join(collected['stale'])}")
    if collected.get("unfinished"):
        notes.append(f"{len(collected['unfinished'])} cells of the study's config have no result yet"
                     + (f" (a `qsal run`, pid {collected['running']}, is working on this folder)"
                        if collected.get("running") else "") + "; the report lists them")
    return notes


def _schedule_words(cfg: dict) -> str | None:
    """How the study's models were trained, from its recorded config: ``FP32/SGT 180 epochs (sgd, lr 0.1, batch 128);
    fine-tunes 30 epochs (sgd, lr 0.01, batch 128)``, per dataset/model where they differ (``None``: unreadable)."""
    from qsal.study.config import FINE_TUNED, parse_run_config

    try:
        study = parse_run_config(cfg)
    except QsalError:
        return None

    fine_tuned = bool(FINE_TUNED & set(study.methods))
    guided = any(m in study.methods for m in ("sgt", "sgt+pact"))
    trained = "/".join(k for k, used in (("FP32", "fp32" in study.methods), ("SGT", guided)) if used) or "FP32"
    per = {}
    for ds in study.datasets:
        for model in study.models:
            train, finetune = study.train_configs(ds, model, 0, progress=False)
            per[f"{ds}/{model}"] = f"{trained} {train.describe()}" + (
                f"; fine-tunes {finetune.describe()}" if fine_tuned else "")
    kinds = set(per.values())
    words = kinds.pop() if len(kinds) == 1 else "; ".join(f"{k}: {v}" for k, v in per.items())
    if guided:  # the saliency guidance's own settings (Ismail et al. 2021)
        words += f"; SGT k {study.sgt.k:g}, lambda {study.sgt.lam:g}, target {study.sgt.target}"
    if study.pact and any(m in study.methods for m in ("pact", "sgt+pact")):  # PACTConfig options per bit-width
        words += "; PACT options " + ", ".join(f"{b}-bit: " + ", ".join(f"{k} {v}" for k, v in o.items())
                                               for b, o in sorted(study.pact.items()))
    return words


def defined(result: dict) -> dict:
    """``result`` with each top-level measurement that is not a finite number (a Spearman correlation of maps that
    are constant: NaN) written as null and named under ``undefined``: a report shows it as missing, and neither the
    report nor the runner's finished-cell check (``results.check_result``) meets a NaN."""
    bad = sorted(k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v))
    if not bad:
        return result
    return {**result, **{k: None for k in bad}, "undefined": sorted(set(result.get("undefined") or []) | set(bad))}
