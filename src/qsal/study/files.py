"""``qsal report FILE...``: a report over checkpoints and ONNX files a user names, not only a run folder.

Each input is scored *as the deployed artifact* (its ONNX file; a checkpoint without one beside it is
exported first) on its dataset's test split, with bootstrap CIs and test-set probabilities for the
diagnostic figures; timed (optional) and explained on the same test images; then laid out by
``qsal.study.report.write_report``. The first input is the reference the others' maps are compared to.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from qsal._atomic import staging_dir, write_json_atomic
from qsal.errors import QsalError
from qsal.run_folder import file_sha256
from qsal.runtime import exported_from

__all__ = ["report_files", "resolve_input"]

# Metric keys passed from a metrics dict to a report row when present (some are recorded only by newer evaluators).
_PASS_THROUGH = ("sensitivity", "specificity", "positive_class", "positive_label", "operating_point",
                 "sensitivity_at_op", "specificity_at_op", "ece", "temperature", "per_class_recall", "n")


def metrics_row(model: str, metrics: dict) -> dict:
    """A report row from a metrics dict: AUC/ACC with CIs plus whatever clinical fields it records."""
    ci = metrics.get("ci") or {}
    row = {"model": model, "test_auc": metrics["auc"], "test_acc": metrics["acc"], "auc_ci": ci.get("auc"),
           "acc_ci": ci.get("acc")}
    row.update({k: metrics[k] for k in _PASS_THROUGH if metrics.get(k) is not None})
    if metrics.get("artifact") is not None:  # recorded by evaluators that know what they scored
        row["scored"] = "onnx" if metrics["artifact"] else "pytorch"
    return row


def resolve_input(path: str | os.PathLike) -> tuple[Path | None, Path | None]:
    """``(checkpoint, onnx)`` for a ``.safetensors``/``.onnx`` file or a folder holding ``best.safetensors``
    and/or ``model.onnx``; the missing one is ``None``."""
    p = Path(path)
    if p.is_dir():
        ckpt, onnx = p / "best.safetensors", p / "model.onnx"
        if not ckpt.is_file() and not onnx.is_file():
            raise QsalError(f"{p} is not a qsal run directory (no run_config.json) and holds neither best.safetensors "
                            "nor model.onnx; pass a `qsal run` folder, or name checkpoint / ONNX files themselves")
        if ckpt.is_file() and onnx.is_file() and not exported_from(onnx, file_sha256(ckpt)):
            return ckpt, None  # the file beside it is another model's: the checkpoint is exported afresh
        return (ckpt if ckpt.is_file() else None), (onnx if onnx.is_file() else None)
    if not p.is_file():
        raise QsalError(f"{p} not found; pass checkpoints (.safetensors), ONNX files (.onnx) or a `qsal run` folder")
    if p.suffix.lower() == ".safetensors":
        beside = p.with_name("model.onnx")
        return p, (beside if beside.is_file() and exported_from(beside, file_sha256(p)) else None)
    if p.suffix.lower() == ".onnx":
        from qsal.runtime import read_metadata

        ckpt = read_metadata(p).get("checkpoint")  # a file name (no paths of the exporting machine): look beside it
        ckpt = (p.parent / Path(ckpt).name) if ckpt else None
        return (ckpt if ckpt is not None and ckpt.is_file() and exported_from(p, file_sha256(ckpt)) else None), p
    raise QsalError(f"{p}: expected a .safetensors checkpoint or an .onnx file, not {p.suffix or 'a file without suffix'}")


def _labels(inputs: list[tuple[Path | None, Path | None]]) -> list[str]:
    """Short unique names: the file stem, or its folder's name for qsal's generic stems."""
    names = []
    for ckpt, onnx in inputs:
        f = onnx or ckpt
        name = f.parent.name if f.stem in ("best", "model") and f.parent.name else f.stem
        base, k = name, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def report_files(paths: list[str | os.PathLike], out_dir: str | os.PathLike, *, data_dir=None, latency: bool = True,
                 n_explain: int = 8, seed: int = 0, progress: bool = True) -> dict:
    """Score, time and explain each input on its dataset's test split; write the report into ``out_dir`` (a new or
    empty folder, or an earlier files report, replaced whole)."""
    if not paths:
        raise QsalError("name at least one checkpoint or ONNX file")
    out = Path(out_dir).expanduser().resolve()  # a link's target, and '.' a named folder: both are swapped below
    inputs = [resolve_input(p) for p in paths]
    labels = _labels(inputs)
    _check_report_out(out, inputs)
    # Written whole into a staging folder beside --out and swapped in at the end: a refused or failed report leaves
    # --out as it was, and a second report into the same folder leaves none of the first one's figures behind.
    with staging_dir(out) as stage:
        report = _report_into(stage, out, paths, inputs, labels, data_dir=data_dir, latency=latency,
                              n_explain=n_explain, seed=seed, progress=progress)
        os.chmod(stage, 0o755)  # a folder like any other (mkdtemp makes it private)
        replaced = out.with_name(f".{out.name}.pid{os.getpid()}.replaced.tmp") if out.exists() else None
        try:
            if replaced is not None:
                os.replace(out, replaced)
            os.replace(stage, out)
        except OSError as e:
            if replaced is not None and replaced.exists() and not out.exists():
                os.replace(replaced, out)  # the earlier report back in place
            raise QsalError(f"cannot move the report into {out} ({e.strerror}); choose another --out") from None
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
    return {k: _moved(v, stage, out) for k, v in report.items()}


def _moved(value, stage: Path, out: Path):
    """A path written under the staging folder, as it reads once that folder is ``out``; anything else as it is."""
    if isinstance(value, str) and value.startswith(str(stage)):
        return str(out / Path(value).relative_to(stage))
    return value


def _provenance(ckpt: Path | None, onnx: Path, meta: dict) -> dict:
    """What made a reported model, for its row: the scored file by content, and where a checkpoint is known (named,
    or the one the file records it was exported from, while unchanged) its seed and training or fine-tune schedule."""
    from qsal.checkpoint import read_meta
    from qsal.train import TrainConfig

    row = {"onnx_sha256": file_sha256(onnx)}
    source = ckpt
    if source is None and meta.get("checkpoint") and Path(meta["checkpoint"]).is_file() and \
            file_sha256(meta["checkpoint"]) == meta.get("checkpoint_sha256"):
        source = Path(meta["checkpoint"])
    try:
        recorded = read_meta(source) if source is not None else None
    except (QsalError, OSError):
        recorded = None
    if recorded is not None:
        row["seed"] = recorded.get("seed")  # training seed (a PTQ model: its calibration draw)
        if isinstance(recorded.get("train"), dict):
            row["schedule"] = TrainConfig.describe_record(recorded["train"])
    return row


def _check_report_out(out: Path, inputs: list[tuple[Path | None, Path | None]]) -> None:
    """``--out`` of a files report: a new or empty folder, or an earlier files report (which it replaces whole); never
    another folder (a cell's, a project's: its files were mixed with the report's), nor one holding an input."""
    if out.exists() and not out.is_dir():
        raise QsalError(f"--out {out} is a file; a report writes a folder: name a new or empty one")
    here = Path.cwd().resolve()
    if out == here or out in here.parents:  # the folder is swapped whole: the shell's working folder would vanish
        raise QsalError(f"--out {out} is the current folder{'' if out == here else ' or holds it'}; a report replaces "
                        "its folder whole: name a sub-folder (e.g. --out report)")
    if out.is_dir() and any(out.iterdir()):
        try:
            earlier = json.loads((out / "results.json").read_text(encoding="utf-8"))
            ours = isinstance(earlier, dict) and str(earlier.get("source", "")).startswith("qsal report ")
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise QsalError(f"--out {out} holds other files and no earlier `qsal report` of files; name a new or empty "
                            "folder (a report replaces its folder's contents)")
        inside = [f for pair in inputs for f in pair if f is not None and out in f.resolve().parents]
        if inside:
            raise QsalError(f"{inside[0]} is inside --out {out}, which this report replaces; copy it elsewhere first, "
                            "or name another --out")


def _report_into(stage: Path, out: Path, paths, inputs, labels, *, data_dir, latency: bool, n_explain: int, seed: int,
                 progress: bool) -> dict:
    """The report of ``inputs`` written into ``stage``; file paths it records name their place in ``out``."""
    import torch

    from qsal.data import dataset_key, load_split
    from qsal.data.folder import check_same_listing
    from qsal.export.card_storage import kernels_label
    from qsal.study.results import kernels_here
    from qsal.pipeline import export_checkpoint, split_seed
    from qsal.provenance import environment
    from qsal.runtime import Runtime
    from qsal.scoring import score_onnx
    from qsal.saliency.methods import black_baseline
    from qsal.saliency.metrics import agreement, faithfulness_curve, mean_gini
    from qsal.saliency.onnx_occlusion import occlusion_numpy, occlusion_patch
    from qsal.saliency.plot import to_display
    from qsal.study.report import write_report

    use_gradients = all(ckpt is not None for ckpt, _ in inputs)  # one method for all, or the maps don't compare
    rows, predictions, maps, sal_probs = [], {}, {}, {}
    test = None
    for label, (ckpt, onnx) in zip(labels, inputs):
        if progress:
            print(f"[{label}] scoring {onnx or ckpt}", file=sys.stderr, flush=True)
        if onnx is None:
            # exported into the report's own <label>/ folder (the staging folder is new: nothing to overwrite)
            onnx = Path(export_checkpoint(str(ckpt), stage / label / "model.onnx", card=False)["onnx"])
        rt = Runtime(onnx)
        data = rt.meta.get("data") or {}
        if not data.get("name"):
            raise QsalError(f"{onnx} does not record its dataset; export it with `qsal export`")
        if test is None:
            test_seed = split_seed({"data": data})
            test = load_split(data["name"], "test", data_dir, size=data.get("image_size"),
                              seed=test_seed)  # a folder's test part is the model's own
        elif dataset_key(data["name"]) != test.info.name:
            raise QsalError(f"{label} was trained on {data['name']} but {labels[0]} on {test.info.name}; "
                            "a report compares models of one dataset")
        elif test.info.family == "folder" and split_seed({"data": data}) != test_seed:
            # another seed's test part holds images this model trained on: its numbers would be inflated
            raise QsalError(f"{label} split {data['name']} with seed {split_seed({'data': data})} but {labels[0]} with "
                            f"seed {test_seed}, so they have different test images; report each on its own, or train "
                            "them with one --seed")
        check_same_listing(test, data.get("listing_sha256"), label)
        art, probs = score_onnx(rt, test, seed=seed)  # at the artifact's stored positive class and threshold
        metrics = art.to_dict()
        row = {**metrics_row(label, metrics), "scored": "onnx",  # its AUC/ACC are the file's: not repeated
               "size_bytes": onnx.stat().st_size, "onnx": str(onnx), "checkpoint": str(ckpt) if ckpt else None,
               "quant": (rt.meta.get("quant") or {}).get("method", "fp32"),
               # what it ran on here: the export's label, but for the kernels a CPU without VNNI needed
               "kernels": kernels_here(rt.kernel_notes, kernels_label(rt.meta)), **rt.kernel_notes,
               **_provenance(ckpt, onnx, rt.meta)}
        predictions[label] = {"y_true": test.labels, "probs": probs, "scored": "ONNX artifact"}
        if latency:
            from qsal.export.bench import bench_onnx

            b1, b64 = bench_onnx(onnx, threads=(1,), batches=(1, 64), seconds=0.5)["runs"]
            row.update(latency_b1_ms=b1["latency_ms_p50"], throughput_b64=b64["throughput_img_s"])
        sub = test.subset(n_explain, seed)
        x = rt.preprocess(sub.images)
        if use_gradients:
            from qsal.checkpoint import load_checkpoint
            from qsal.saliency import explain

            model, _ = load_checkpoint(ckpt)
            xt = torch.from_numpy(x)
            maps[label] = explain(model, xt, "integrated_gradients", target=torch.from_numpy(sub.labels),
                                  baseline=black_baseline(rt.mean, rt.std)).numpy()
        else:
            maps[label] = occlusion_numpy(rt.run_normalized, x, sub.labels, baseline=black_baseline(rt.mean, rt.std))
        sal_probs[label] = probs[test.subset_indices(n_explain, seed)]
        faith = faithfulness_curve(rt.run_normalized, x, sub.labels, maps[label], seed=seed)
        row.update(faithfulness_gap=faith["gap"], faithfulness_changed=faith["changed"], gini=mean_gini(maps[label]))
        rows.append(row)
    reference = labels[0]
    fp32 = next((r for r in rows if r["quant"] == "fp32"), None)
    for r in rows:
        a = agreement(maps[reference], maps[r["model"]])
        r.update(agreement_spearman=a["spearman"], agreement_iou=a["topk_iou"], most_changed=a["most_changed"])
        if fp32:
            r["size_ratio"] = r["size_bytes"] / fp32["size_bytes"]
    info = test.info
    sub = test.subset(n_explain, seed)
    # occlusion's patch scales with the image (onnx_occlusion.occlusion_patch: 4 px at 28 px): the report says which
    explained_by = "integrated gradients (PyTorch models)" if use_gradients else \
        "occlusion (ONNX artifacts, {} px patches moved by {} px)".format(*occlusion_patch(*x.shape[-2:]))
    saliency = {"images": to_display(Runtime(rows[0]["onnx"]).preprocess(sub.images), info.mean, info.std),
                "maps": maps, "y_true": sub.labels, "probs": sal_probs, "class_names": list(info.labels),
                "method": explained_by,
                "indices": test.subset_indices(n_explain, seed).tolist(), "reference": reference, "task": info.task}
    for r in rows:  # an exported file's place once the staging folder is --out
        r["onnx"] = _moved(r["onnx"], stage, out)
    schedules = {r["model"]: r["schedule"] for r in rows if r.get("schedule")}
    results = {"dataset": info.name, "n_test": len(test), "class_names": list(info.labels),
               "positive_class": rows[0].get("positive_class"), "source": "qsal report " + " ".join(map(str, paths)),
               "schedule": "; ".join(f"{m}: {w}" for m, w in schedules.items()) or None,
               "measure": {"n_explain": n_explain, "latency": latency, "seed": seed,  # explained images, bootstrap
                           "explained": "integrated gradients" if use_gradients else "occlusion"},
               # what the explanation columns are of: the header and the terminal say it beside the table
               "explanations": f"{len(sub)} test images, {explained_by}; the removal curves run the ONNX files",
               "rows": rows, "predictions": predictions, "saliency": saliency, "environment": environment()}
    write_json_atomic(stage / "results.json", {k: v for k, v in results.items() if k not in ("predictions", "saliency")})
    return write_report(stage, results)
