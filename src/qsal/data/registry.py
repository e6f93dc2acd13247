"""The dataset table: the single source of truth for every dataset's task, shape, classes and checksums.

MedMNIST entries are read from ``medmnist_info.json`` (copied from ``medmnist`` 3.0.2 ``info.py``);
MNIST and CIFAR-10 are described here. Code that branches on a task type reads it from this table.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from qsal.errors import QsalError

__all__ = [
    "DatasetInfo", "DATASETS", "get_info", "list_datasets", "resolve_data_dir",
    "TASK_BINARY", "TASK_MULTICLASS", "TASK_ORDINAL", "TASK_MULTILABEL", "MEDMNIST_SIZES", "MIN_IMAGE_SIZE",
    "MAX_IMAGE_SIZE",
]

TASK_BINARY = "binary-class"
TASK_MULTICLASS = "multi-class"
TASK_ORDINAL = "ordinal-regression"
TASK_MULTILABEL = "multi-label, binary-class"
TASKS = (TASK_BINARY, TASK_MULTICLASS, TASK_ORDINAL, TASK_MULTILABEL)
MEDMNIST_SIZES = (28, 64, 128, 224)
# The sides in px every image size setting accepts (`--size`, a study folder's `size`, a checkpoint's image_size):
# every registered model runs from 12 px (small_cnn pools twice then convolves); above 1024 px the activations of one
# image alone take gigabytes, which is a typo rather than a medical image.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 12, 1024
ENV_VAR = "QSAL_DATA_DIR"


@dataclass(frozen=True)
class DatasetInfo:
    """One row of the dataset table.

    Attributes:
        name: flag used everywhere (``breastmnist``, ``mnist``, ``cifar10``).
        family: loader family (``medmnist``, ``mnist``, ``cifar10``, ``folder``).
        task: one of the ``TASK_*`` strings; decides loss and metrics.
        n_channels: 1 (grayscale) or 3 (RGB).
        labels: class names, index = class id.
        n_samples: official split sizes ``{"train", "val", "test"}`` (``val`` may be 0).
        md5: official MD5 per image size (``"28"``, ``"64"``...) or per file name.
        mean, std: per-channel normalisation applied to pixels scaled to [0, 1].
        positive_label: for binary sets, the class id that is clinically *positive* (the one sensitivity
            is about): BreastMNIST 0 (malignant), PneumoniaMNIST 1 (pneumonia). ``None``: label 1.
    """

    name: str
    family: str
    task: str
    n_channels: int
    labels: tuple[str, ...]
    n_samples: dict
    license: str
    md5: dict = field(default_factory=dict)
    url: str = ""
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    sizes: tuple[int, ...] = (28,)
    citation: str = ""
    positive_label: int | None = None

    @property
    def positive_class(self) -> str | None:
        """Name of the clinically positive class of a binary set (label 1 unless the table says otherwise)."""
        if self.task != TASK_BINARY:
            return None
        return self.labels[1 if self.positive_label is None else self.positive_label]

    @property
    def num_classes(self) -> int:
        """Number of model outputs (labels for multi-label, classes otherwise)."""
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return self.sizes[0]


# The clinically positive class of each binary MedMNIST set (what "sensitivity" is about). BreastMNIST
# orders its labels malignant=0, normal/benign=1, so the MedMNIST "label 1" convention would make
# sensitivity the recall of *benign* cases.
_POSITIVE_LABEL = {"breastmnist": 0, "pneumoniamnist": 1}


def _load_medmnist() -> dict[str, DatasetInfo]:
    table = json.loads((Path(__file__).with_name("medmnist_info.json")).read_text())["datasets"]
    out = {}
    for name, row in table.items():
        c = row["n_channels"]
        out[name] = DatasetInfo(
            name=name, family="medmnist", task=row["task"], n_channels=c,
            labels=tuple(row["label"][str(i)] for i in range(len(row["label"]))),
            n_samples=dict(row["n_samples"]), license=row["license"], md5=dict(row["md5"]),
            url=row["url"], mean=(0.5,) * c, std=(0.5,) * c, sizes=MEDMNIST_SIZES,
            citation="Yang et al., MedMNIST v2, Scientific Data 10, 41 (2023)",
            positive_label=_POSITIVE_LABEL.get(name),
        )
    return out


DATASETS: dict[str, DatasetInfo] = _load_medmnist()
DATASETS["mnist"] = DatasetInfo(
    name="mnist", family="mnist", task=TASK_MULTICLASS, n_channels=1,
    labels=tuple(str(i) for i in range(10)), n_samples={"train": 60000, "val": 0, "test": 10000},
    license="CC BY-SA 3.0 (as commonly cited)",
    # Official gzip MD5s, plus the MD5 of the *uncompressed* train images: a rebuilt archive with a
    # different gzip wrapper but identical content is accepted (see docs/data.md).
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    url="https://ossci-datasets.s3.amazonaws.com/mnist/{file}",
    mean=(0.1307,), std=(0.3081,), sizes=(28,),
    citation="LeCun et al., Proc. IEEE 86(11):2278-2324, 1998",
)
DATASETS["cifar10"] = DatasetInfo(
    name="cifar10", family="cifar10", task=TASK_MULTICLASS, n_channels=3,
    labels=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    n_samples={"train": 50000, "val": 0, "test": 10000}, license="unknown (cite the tech report)",
    md5={"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
    url="https://www.cs.toronto.edu/~kriz/{file}",
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), sizes=(32,),
    citation="Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009",
)


def list_datasets() -> list[str]:
    """Names of every dataset in the table, sorted."""
    return sorted(DATASETS)


def get_info(name: str) -> DatasetInfo:
    """Table row for ``name``; a one-line error listing the known names otherwise."""
    key = name.lower().strip()
    if key not in DATASETS:
        raise QsalError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())} "
                        "(or pass a folder of class sub-folders as folder:PATH)")
    return DATASETS[key]


def resolve_data_dir(explicit: str | os.PathLike | None = None, must_exist: bool = False) -> Path:
    """The data root: ``explicit`` if given, else ``$QSAL_DATA_DIR``, else ``~/.medmnist``.

    A root that was named (``explicit`` or the variable) must be a folder, and with ``must_exist`` one that exists
    (not when a download may create it): a mistyped path would otherwise read as "no files there" and BreastMNIST
    28 px quietly come from the embedded copy instead of the user's data."""
    if explicit:
        root, named = Path(explicit).expanduser(), f"data folder {explicit} (--data-dir)"
    elif os.environ.get(ENV_VAR):
        root, named = Path(os.environ[ENV_VAR]).expanduser(), f"data folder {os.environ[ENV_VAR]} (from ${ENV_VAR})"
    else:
        return Path.home() / ".medmnist"
    if root.exists() and not root.is_dir():
        raise QsalError(f"{named} is a file, not a folder; give the folder that holds the dataset files")
    if must_exist and not root.exists():
        raise QsalError(f"{named} does not exist; give the folder that holds the dataset files (or, to fetch "
                        "them, create it and use a command's --download)")
    return root
