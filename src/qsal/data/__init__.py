"""Datasets: the table (``DATASETS``), loaders for MedMNIST, MNIST, CIFAR-10 and image folders.

``load_split(name, split)`` is the one entry point; it finds the data root (explicit argument,
then ``$QSAL_DATA_DIR``, then ``~/.medmnist``) and returns a validated ``ImageSplit``.
"""

from __future__ import annotations

import os
from pathlib import Path

from dataclasses import replace

from qsal.data.arrays import ImageSplit, data_meta
from qsal.data.cifar import find_cifar10_dir, load_cifar10
from qsal.data.folder import dataset_key, folder_info, folder_root, load_folder
from qsal.data.medmnist import find_medmnist, load_medmnist
from qsal.data.mnist import load_mnist
from qsal.data.registry import (DATASETS, TASK_BINARY, TASK_MULTICLASS, TASK_MULTILABEL, TASK_ORDINAL,
                                DatasetInfo, get_info, list_datasets, resolve_data_dir)
from qsal.errors import QsalError

__all__ = ["ImageSplit", "data_meta", "DatasetInfo", "DATASETS", "get_info", "list_datasets", "resolve_data_dir",
           "load_split", "dataset_key", "describe_splits", "dataset_status", "dataset_status_table", "split_validation", "VAL_FRACTION", "held_out_count",
           "TASK_BINARY", "TASK_MULTICLASS", "TASK_MULTILABEL", "TASK_ORDINAL"]


# MNIST and CIFAR-10 have no official validation split: this fraction of train is held out for it
VAL_FRACTION = 0.1


def held_out_count(n_train: int, val_fraction: float = VAL_FRACTION) -> int:
    """How many of ``n_train`` official training images ``split_validation`` holds out for validation."""
    return int(round(n_train * val_fraction))


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None, size: int | None = None,
               download: bool = False, verify: bool = True, val_fraction: float = VAL_FRACTION,
               seed: int = 0, n_channels: int | None = None) -> ImageSplit:
    """Load one split of a dataset.

    Args:
        name: a table name (``breastmnist``, ``mnist``, ``cifar10``...) or ``folder:PATH``.
        split: ``train``, ``val`` or ``test``. MNIST and CIFAR-10 have no official val split: it is the
            last ``val_fraction`` of a seeded shuffle of train, and ``train`` is the rest.
        data_dir: data root; ``None`` resolves ``$QSAL_DATA_DIR`` then ``~/.medmnist``.
        size: image size in pixels (MedMNIST: 28, 64, 128 or 224).
        n_channels: a folder dataset's channels (a model's, read as it was trained); ``None``: as its images are.
    """
    if name.startswith("folder:"):
        if not name[len("folder:"):].strip():  # Path("") is the working directory: its sub-folders are not classes
            raise QsalError("--dataset folder: needs the path of a folder of class sub-folders, e.g. folder:scans/")
        return load_folder(folder_root(name), split, n_channels=n_channels, size=size or 28, seed=seed)
    info = get_info(name)
    root = resolve_data_dir(data_dir, must_exist=not download)
    if info.family == "medmnist":
        return load_medmnist(info, split, root, size or 28, download=download, verify=verify)
    if size not in (None, info.image_size):
        raise QsalError(f"{info.name} images are {info.image_size} px; drop --size or pass {info.image_size}")
    if info.family in ("mnist", "cifar10"):
        if split == "test":
            return _load_official(info, "test", root, download, verify)
        return split_validation(_load_official(info, "train", root, download, verify), split, val_fraction, seed)
    raise QsalError(f"no loader for dataset family {info.family!r}")


def describe_splits(name: str) -> str:
    """Where a dataset's train/validation/test images come from, in words (model cards): a table set's official
    splits (MNIST and CIFAR-10: validation held out of the official training set), a folder's own or drawn split."""
    if name.startswith("folder:"):
        from qsal.data.folder import describe_split

        root = folder_root(name)
        return describe_split(root) if root.is_dir() else f"a split of the image folder {root} (no longer there)"
    try:
        info = get_info(name)
    except QsalError:
        return "the splits it was trained with (not a dataset this qsal knows)"
    if info.family in ("mnist", "cifar10"):
        return (f"the official training and test sets, validation a seeded {VAL_FRACTION:.0%} of the training images "
                "(held out of training)")
    return "the official train/validation/test splits"


def _load_official(info: DatasetInfo, split: str, root: Path, download: bool, verify: bool) -> ImageSplit:
    if info.family == "mnist":
        return load_mnist(info, split, root, download=download, verify=verify)
    return load_cifar10(info, split, root)


def split_validation(train: ImageSplit, split: str, val_fraction: float, seed: int) -> ImageSplit:
    """Carve a seeded validation split out of an official train split."""
    import numpy as np

    if split not in ("train", "val"):
        raise QsalError(f"unknown split {split!r}; use train, val or test")
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = held_out_count(len(train), val_fraction)
    idx = np.sort(order[:n_val] if split == "val" else order[n_val:])
    return replace(train, split=split, images=train.images[idx], labels=train.labels[idx], split_seed=int(seed))


def dataset_status(data_dir: str | os.PathLike | None = None, verify: bool = True) -> list[dict]:
    """For each table entry, a JSON-ready row: ``name``, ``task``, ``channels``, ``classes`` (count), ``labels``
    (class names by id), ``positive_class`` / ``positive_label`` (what sensitivity is about; null for non-binary
    sets), ``splits`` (``{"train", "val", "test"}`` image counts; MNIST and CIFAR-10 draw validation from
    training: 0), ``path`` (the 28 px or native file found, else null) and ``md5``: ``"ok"``, ``"mismatch"``,
    ``"not checked"`` (``verify`` False, or a format without an official checksum) or null (not found)."""
    from qsal.data.download import md5_of

    root = resolve_data_dir(data_dir, must_exist=True)
    rows = []
    for name in list_datasets():
        info = DATASETS[name]
        if info.family == "medmnist":
            path = find_medmnist(info, 28, root)
        elif info.family == "cifar10":
            path = find_cifar10_dir(root)
        else:
            from qsal.data.mnist import _locate

            path = _locate(root, "t10k-images-idx3-ubyte")
        expected = (info.md5.get("28") if info.family == "medmnist" else
                    info.md5.get(path.name) if path and info.family == "mnist" else None)
        checksum = None if not path else "not checked" if not (verify and expected) else \
            "ok" if md5_of(path) == expected else "mismatch"
        rows.append({"name": name, "task": info.task, "channels": info.n_channels, "classes": info.num_classes,
                     "labels": list(info.labels),
                     # what sensitivity and specificity are about (binary sets): the dataset table's, e.g. malignant
                     "positive_class": info.positive_class or None,
                     "positive_label": info.labels.index(info.positive_class) if info.positive_class else None,
                     "splits": {s: int(info.n_samples.get(s, 0)) for s in ("train", "val", "test")},
                     "path": str(path) if path else None, "md5": checksum})
    return rows


def dataset_status_table(rows: list[dict]) -> list[dict]:
    """``dataset_status`` rows as the terminal table shows them (``qsal datasets``; ``--json`` prints the rows)."""
    return [{"name": r["name"], "task": r["task"], "channels": r["channels"], "classes": r["classes"],
             "positive class": f"{r['positive_class']} (label {r['positive_label']})" if r["positive_class"] else "—",
             "train/val/test": "/".join(str(r["splits"][s]) for s in ("train", "val", "test")),
             "found": r["path"] or "not found",
             "md5": "MISMATCH" if r["md5"] == "mismatch" else r["md5"] or "-"} for r in rows]  # a bad file stands out
