"""Scoring a saved model (a checkpoint or the exported ONNX artifact) on a dataset split, as files.

``evaluate_model`` is what ``qsal evaluate`` runs: it reads the model's own dataset, positive class,
operating point and temperature from its metadata, refuses another dataset unless asked
(``other_dataset=True``, and then says so in its output), and with ``split="all"`` scores every image
(of a folder dataset: every file, not the 20 % test part of its seeded split).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qsal._atomic import write_json_atomic
from qsal.data import ImageSplit, load_split
from qsal.errors import QsalError
from qsal.provenance import environment

if TYPE_CHECKING:
    from qsal.runtime import Runtime

__all__ = ["evaluate_model", "evaluate_onnx", "artifact_row", "load_for_model", "model_metadata", "SPLITS"]

SPLITS = ("train", "val", "test", "all")


def model_metadata(path: str | os.PathLike) -> tuple[dict, dict, bool]:
    """``(data, decision, is_artifact)`` recorded in a checkpoint sidecar or an ONNX file's metadata."""
    if Path(path).suffix.lower() == ".onnx":
        from qsal.runtime import read_metadata

        meta = read_metadata(path)
        return meta.get("data") or {}, meta.get("decision") or {}, True
    from qsal.checkpoint import read_meta

    meta = read_meta(path)
    # qsal.train.fit records "data" (name, source, counts); the pipeline "dataset" (with labels, normalisation)
    return meta.get("dataset") or meta.get("data") or {}, meta.get("decision") or {}, False


def load_for_model(name: str, split: str, *, n_channels: int, size: int | None, data_dir=None,
                   download: bool = False, seed: int = 0) -> ImageSplit:
    """One split (or ``"all"``) of dataset ``name``, with the channels and size the model takes; ``seed``: the
    model's own split seed (``pipeline.split_seed``) for a folder's or MNIST's / CIFAR-10's seeded split."""
    if split not in SPLITS:
        raise QsalError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if split == "all" and name.startswith("folder:"):
        from qsal.data.arrays import validate_arrays
        from qsal.data.folder import folder_info, folder_root, folder_split_files, read_image

        root = folder_root(name)
        info = folder_info(root, n_channels, size or 28)
        files = [f for part in folder_split_files(root).values() for f in part]
        images = np.stack([read_image(root / rel, n_channels, size or 28) for rel, _ in files])
        images, labels = validate_arrays(info, images, np.array([c for _, c in files], np.int64), str(root))
        data = ImageSplit(info, "all", images, labels, str(root))
    elif split == "all":
        parts = [load_split(name, s, data_dir, size=size, download=download, seed=seed, n_channels=n_channels)
                 for s in ("train", "val", "test")]
        data = ImageSplit(parts[0].info, "all", np.concatenate([p.images for p in parts]),
                          np.concatenate([p.labels for p in parts]), parts[0].source)
    else:
        data = load_split(name, split, data_dir, size=size, download=download, seed=seed, n_channels=n_channels)
    return data.with_channels(n_channels)


def _align_labels(data: ImageSplit, model_labels: list[str]) -> ImageSplit:
    """Renumber ``data``'s labels to the model's class ids when both name the same classes in another order."""
    from dataclasses import replace

    names = [str(n) for n in data.info.labels]
    if names == model_labels or sorted(names) != sorted(model_labels) or data.info.task.startswith("multi-label"):
        return data
    mapping = np.array([model_labels.index(n) for n in names])
    info = replace(data.info, labels=tuple(model_labels))
    return replace(data, info=info, labels=mapping[data.labels])


def evaluate_onnx(onnx_path: str | os.PathLike, split: ImageSplit, n_bootstrap: int = 1000, seed: int = 0):
    """``Metrics`` of the deployed artifact itself (onnxruntime, the exported preprocessing, its stored
    positive class, operating point and temperature) on ``split``."""
    return score_onnx(onnx_path, split, n_bootstrap, seed)[0]


def score_onnx(artifact: str | os.PathLike | Runtime, split: ImageSplit, n_bootstrap: int = 1000, seed: int = 0):
    """``(Metrics, probabilities (N, K))`` of the artifact on ``split`` from one inference pass: the metrics as
    ``evaluate_onnx``, the class probabilities (at the stored temperature, as ``Runtime.predict_proba``) for the
    report's confusion matrix, ROC and reliability figures.
    ``artifact``: the file, or a ``qsal.runtime.Runtime`` already open on it (scoring several splits opens it once)."""
    from qsal.metrics import compute_metrics, scores_from_logits
    from qsal.runtime import Runtime

    rt = artifact if isinstance(artifact, Runtime) else Runtime(artifact)
    decision = rt.decision
    logits = rt.predict_logits(split.images)
    metrics = compute_metrics(split.labels, logits, split.info.task, class_names=rt.labels or split.info.labels,
                              positive_label=decision.get("positive_label", split.info.positive_label),
                              operating_point=decision.get("operating_point"),
                              temperature=decision.get("temperature") or 1.0, n_bootstrap=n_bootstrap, seed=seed,
                              artifact=True)
    # scored on the exact u8 x u8 kernels where this CPU's fast ones saturate (runtime.SATURATION_NOTE), or on the
    # fast ones by the user's choice: the result says which
    metrics.kernel_notes = dict(rt.kernel_notes)
    # the probabilities the deployed file outputs (at its stored temperature): its threshold was chosen on these,
    # so a confusion matrix or caption at the operating point must decide on them too
    return metrics, scores_from_logits(logits, split.info.task, decision.get("temperature") or 1.0)


def evaluate_model(model_path: str | os.PathLike, *, dataset: str | None = None, split: str = "test", data_dir=None,
                   size: int | None = None, other_dataset: bool = False, n_bootstrap: int = 1000,
                   out: str | os.PathLike | None = None, reliability_png: str | os.PathLike | None = None,
                   download: bool = False) -> dict:
    """Metrics of a checkpoint (``.safetensors``) or an exported ``.onnx`` on one split (or ``"all"``).

    Returns a JSON-safe dict: the ``Metrics`` fields plus ``model``, ``dataset``, ``split``, ``artifact``
    and, when scored on another dataset, ``dataset_mismatch``.
    """
    path = Path(model_path)
    if reliability_png is not None and Path(reliability_png).suffix.lower() != ".png":
        raise QsalError(f"--reliability {reliability_png}: the diagram is a PNG figure; name the file .png")
    for what, target in (("--reliability", reliability_png), ("--out", out)):  # before the work, not after it
        if target is None:
            continue
        if Path(target).is_dir():
            raise QsalError(f"{what} {target} is a folder; name the file to write")
        above = next(p for p in Path(target).absolute().parents if p.exists())  # the folders below it are made
        if not above.is_dir():
            raise QsalError(f"{what} {target}: {above} is a file, not a folder; choose another path")
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise QsalError(f"model file {path} not found; pass a .safetensors checkpoint or an .onnx file written by qsal")
    else:
        from qsal.checkpoint import resolve_checkpoint_path

        path = resolve_checkpoint_path(path)  # pickles refused by name; a weights file needs its JSON
    data_meta, decision, is_artifact = model_metadata(path)
    from qsal.data import dataset_key

    own = data_meta.get("name")
    name = dataset or own
    if not name:
        raise QsalError(f"{path} does not name its dataset; pass --dataset")
    # a folder by its absolute path: the same folder spelled otherwise is the model's own data, another is not
    own, name = (dataset_key(own) if own else own), dataset_key(name)
    if own and name != own and not other_dataset:
        raise QsalError(f"{path} was trained on {own}; scoring it on {name} needs --other-dataset (the output "
                        "then says so)")
    if not is_artifact:  # the class and channel counts of the model against the dataset, before loading images
        from qsal.checkpoint import check_model_fits_data, read_meta
        from qsal.pipeline import dataset_info

        arch = read_meta(path)["arch"]
        check_model_fits_data(arch, dataset_info(name, arch.get("in_channels")), str(path))
    trained_size = data_meta.get("image_size")
    if size is not None and trained_size is not None and int(size) != int(trained_size):  # the model's input size
        raise QsalError(f"{path} was trained on {trained_size} px images; --size {size} would feed it images of "
                        f"another size (a checkpoint's layers fail on them, or score them unlike deployment): drop "
                        "--size")
    n_channels = int(data_meta.get("n_channels") or 1)
    from qsal.checkpoint import read_meta
    from qsal.pipeline import split_seed

    # the model's own split: a folder's test part under another seed holds images it trained on
    seed = split_seed({"dataset": data_meta, "seed": None if is_artifact else read_meta(path).get("seed")}) \
        if name == own else 0
    data = load_for_model(name, split, n_channels=n_channels, size=size or data_meta.get("image_size"),
                          data_dir=data_dir, download=download, seed=seed)
    if name == own and split != "all":  # "all" scores every file, whatever the split drawn
        from qsal.data.folder import check_same_listing

        check_same_listing(data, data_meta.get("listing_sha256"), str(path))
    model_labels = [str(n) for n in data_meta.get("labels") or data.info.labels]
    if len(model_labels) != data.info.num_classes:
        raise QsalError(f"{name} has {data.info.num_classes} classes but {path} was built for {len(model_labels)}; "
                        "pass the dataset it was trained on")
    data = _align_labels(data, model_labels)
    if is_artifact:
        metrics = score_onnx(path, data, n_bootstrap=n_bootstrap)[0]  # it records the kernels it ran on
    else:
        from qsal.checkpoint import load_checkpoint
        from qsal.metrics import evaluate

        model, meta = load_checkpoint(path)
        # the bootstrap drawn with the run's seed, as train / quantize drew it: the same model, split and CIs
        metrics = evaluate(model, data, decision=decision, n_bootstrap=n_bootstrap, seed=int(meta.get("seed") or 0))
    result = {"model": str(path), "dataset": name, "split": split,
              # which draw of a folder's (or MNIST's / CIFAR-10's validation) split these images are
              **({"split_seed": data.split_seed} if data.split_seed is not None else {}), **metrics.to_dict()}
    if own and name != own:
        result["dataset_mismatch"] = f"model trained on {own}, scored on {name} (--other-dataset)"
        op = result.get("operating_point")
        if isinstance(op, dict) and op.get("chosen_on") not in (None, "fixed", "fixed default"):
            # "chosen on the validation split" beside another set's scores reads as that set's split: name the set
            result["operating_point"] = {**op, "dataset": own}
        theirs = [str(n) for n in data.info.labels]
        if theirs != model_labels:  # the same class ids, other meanings: name each side's
            result["dataset_mismatch"] += ("; class ids compared as numbers: " + ", ".join(
                f"{i} is {m!r} to the model, {t!r} in {name}" for i, (m, t) in enumerate(zip(model_labels, theirs))))
            if isinstance(result.get("per_class_recall"), dict):  # recall is per true class: the data's names
                result["per_class_recall"] = dict(zip(theirs, result["per_class_recall"].values()))
            i = result.get("positive_label")
            if isinstance(i, int) and 0 <= i < len(theirs):
                result["positive_class"] = f"{model_labels[i]} (label {i}; {theirs[i]!r} in {name})"
    if name.startswith("folder:") and split != "all":
        from qsal.data.folder import describe_split, folder_root

        drawn = f"drawn with seed {data.split_seed}, " if data.split_seed is not None else ""
        result["note"] = (f"scored the {split} part of {describe_split(folder_root(name))} ({drawn}{metrics.n} images); "
                          "--split all scores every image")
    in_sample = {"train": "the model was trained on these images",
                 "val": "the validation split chose this model's operating point (and, where it trained, its best epoch)",
                 "all": "these include the images the model was trained on and those that chose its operating point"}
    if split in in_sample and (not own or name == own):  # measured where they were fitted: they read better
        result["in_sample"] = f"{in_sample[split]}: optimistic numbers; quote --split test"
    if reliability_png:
        from qsal.metrics import save_reliability_diagram

        save_reliability_diagram({path.name: metrics.reliability}, reliability_png,
                                 title=f"{name} {split}: ECE {metrics.ece:.3f}")
        result["reliability_png"] = str(reliability_png)
    if out:
        try:
            write_json_atomic(out, {**result, "environment": environment()})
        except BaseException:
            if reliability_png:  # no half of a result: the diagram goes with the JSON that failed
                Path(reliability_png).unlink(missing_ok=True)
            raise
    return result


def artifact_row(art, torch_metrics: dict) -> dict:
    """A results row's metric columns: the ONNX artifact's (``artifact: True``), with the PyTorch model's
    AUC/ACC beside them for comparison. Sensitivity/specificity are about ``positive_class``."""
    keys = ("positive_class", "positive_label", "sensitivity", "specificity", "operating_point", "sensitivity_at_op",
            "specificity_at_op", "ppv_at_op", "npv_at_op", "accuracy_at_op", "prevalence", "ece", "temperature",
            "per_class_recall", "artifact")
    d = art.to_dict()
    return {"test_auc": d["auc"], "test_acc": d["acc"], "auc_ci": d["ci"].get("auc"), **{k: d[k] for k in keys},
            "ci": d["ci"], "pytorch_auc": torch_metrics["auc"], "pytorch_acc": torch_metrics["acc"]}
