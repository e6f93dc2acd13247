"""The arrays a report reads from a run folder's cells: each row's test predictions (its first seed's, for the
confusion matrix, ROC and reliability figures), the saliency payload of a one-group study, and each row's 95 % CIs
of AUC and ACC: of its one seed, or of the mean over its seeds (``seed_mean_cis``), as the ACC and AUC columns are."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qsal.errors import QsalError
from qsal.study.rundir import load_npy, redo_fix

__all__ = ["dataset_facts", "report_arrays", "seed_mean_cis", "read_test_predictions"]


def dataset_facts(dataset: str, result: dict) -> tuple[str, list[str], str] | None:
    """``(name as the report heads it, class names, task)`` of a study dataset: the table's, or for a study's own
    folder (``qsal.study.folders``) as its cell recorded it (``data_source``, ``class_names``); ``None`` for neither."""
    from qsal.data import TASK_BINARY, TASK_MULTICLASS, get_info

    source, names = str(result.get("data_source") or ""), result.get("class_names")
    if source.startswith("folder:") and names:
        return (f"{dataset} (image folder {source[len('folder:'):]})", list(names),
                TASK_BINARY if len(names) == 2 else TASK_MULTICLASS)
    try:
        info = get_info(dataset)
    except QsalError:
        return None
    return info.name, list(info.labels), info.task


def read_test_predictions(cell: Path, run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """``(labels (N,) or (N, L), probabilities (N, K))`` a cell's ONNX artifact gave its test split, checked to
    describe the same images; ``None`` where the cell saved none (cells from before the files)."""
    if not ((cell / "test_probs.npy").is_file() and (cell / "test_labels.npy").is_file()):
        return None
    fix = redo_fix(cell, run_dir)
    y_true, probs = load_npy(cell / "test_labels.npy", fix, ndim=(1, 2)), load_npy(cell / "test_probs.npy", fix, ndim=2)
    if len(y_true) != len(probs) or not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise QsalError(f"{cell}: test_probs.npy ({probs.shape}) and test_labels.npy ({y_true.shape}) do not "
                        f"describe the same test images with probabilities in [0, 1]; {fix}")
    return y_true, probs


def seed_mean_cis(run_dir: Path, keys: dict, rows: list[dict]) -> dict:
    """Set each row's ``auc_ci`` / ``acc_ci`` to the percentile-bootstrap 95 % CI of its value: the mean over its
    seeds' ONNX artifacts on their test splits (``metrics.bootstrap.bootstrap_ci``; a shared test set resampled image
    for image, 1,000 resamples, seed 0), and ``ci_seeds`` to the number of seeds it covers. A row of one seed keeps
    the CI its cell recorded; a row where a seed saved no predictions keeps its first seed's (``ci_seeds`` 1).
    Returns ``{cell id: read_test_predictions}`` of the cells read, for ``report_arrays`` not to read them again."""
    from qsal.metrics.bootstrap import bootstrap_ci

    read = {}
    for row, ((ds, _, _), rs) in zip(rows, keys.items()):
        row["ci_seeds"] = 1
        if len(rs) < 2 or (facts := dataset_facts(ds, rs[0])) is None:
            continue
        samples = [read_test_predictions(run_dir / r["id"], run_dir) for r in rs]
        read.update({r["id"]: found for r, found in zip(rs, samples)})
        if any(s is None for s in samples):
            continue
        ci = bootstrap_ci(samples, facts[2])
        row["auc_ci"], row["acc_ci"], row["ci_seeds"] = ci["auc"], ci["acc"], len(rs)
    return read


def report_arrays(run_dir: Path, keys: dict, multi: bool, read: dict | None = None) -> dict:
    """Test probabilities (first seed) per row, and for a one-group study the saliency payload of the report.
    ``read``: ``{cell id: read_test_predictions}`` already read (``seed_mean_cis``'s)."""
    predictions, cells, read = {}, {}, read or {}
    for (ds, model, label), rs in keys.items():
        cell = run_dir / rs[0]["id"]
        name = f"{ds}/{model}/{label}" if multi else label
        cells[name] = cell
        found = read[rs[0]["id"]] if rs[0]["id"] in read else read_test_predictions(cell, run_dir)
        if found is not None:
            y_true, probs = found
            predictions[name] = {"y_true": y_true, "probs": probs, "scored": f"ONNX artifact, seed {rs[0]['seed']}",
                                 "ece": rs[0].get("ece")}  # these probabilities' ECE, not the seeds' mean
    datasets = {ds for ds, _, _ in keys}
    facts = dataset_facts(next(iter(datasets)), next(iter(keys.values()))[0]) if len(datasets) == 1 else None
    extra = {"predictions": predictions}
    if facts is not None:
        extra.update(class_names=facts[1], dataset_name=facts[0])
        if predictions:
            extra["n_test"] = len(next(iter(predictions.values()))["y_true"])
    elif predictions:  # several datasets, each its own test split: the report's header gives each one's size
        per: dict[str, int] = {}
        for name, found in predictions.items():
            per.setdefault(name.split("/")[0], len(found["y_true"]))
        extra["n_test_per_dataset"] = per
    ref = cells.get("fp32")
    if multi or ref is None or not (ref / "explain_images.npy").is_file() or not (ref / "explain_indices.npy").is_file():
        return extra
    fix = "delete that cell's folder and rerun `qsal run` to redo it"
    idx = load_npy(ref / "explain_indices.npy", fix, ndim=1)
    n_test = len(predictions["fp32"]["y_true"]) if "fp32" in predictions else None
    if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or (n_test is not None and idx.max() >= n_test):
        raise QsalError(f"{ref / 'explain_indices.npy'} holds {idx.dtype} values {idx.min()}..{idx.max()}, not indices "
                        f"of the {n_test or 'test'} test images; {fix}")
    maps = {n: load_npy(c / "saliency_maps.npy", fix, ndim=4) for n, c in cells.items() if (c / "saliency_maps.npy").is_file()}
    extra["saliency"] = {"images": load_npy(ref / "explain_images.npy", fix, ndim=(3, 4)), "maps": maps,
                         "y_true": predictions["fp32"]["y_true"][idx] if "fp32" in predictions else None,
                         "probs": {n: p["probs"][idx] for n, p in predictions.items() if n in maps},
                         "task": facts[2] if facts is not None else None,
                         "class_names": extra.get("class_names"), "method": "|input gradient|",
                         "indices": idx.tolist(), "reference": "fp32"}
    return extra
