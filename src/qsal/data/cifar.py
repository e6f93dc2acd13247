"""CIFAR-10 from the official binary layout ``cifar-10-batches-bin/`` (1 label byte + 3072 pixel bytes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qsal.data.arrays import ImageSplit, validate_arrays
from qsal.data.registry import DatasetInfo
from qsal.errors import QsalError

__all__ = ["load_cifar10", "find_cifar10_dir"]

_RECORD = 1 + 3 * 32 * 32
_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}


def find_cifar10_dir(root: Path) -> Path | None:
    for folder in (root / "cifar-10-batches-bin", root / "cifar10" / "cifar-10-batches-bin", root):
        if (folder / "test_batch.bin").is_file():
            return folder
    return None


def load_cifar10(info: DatasetInfo, split: str, root: Path) -> ImageSplit:
    """Read the train (5 batches) or test split from the official binary layout."""
    if split not in _FILES:
        raise QsalError(f"CIFAR-10 has splits train and test, not {split!r}")
    folder = find_cifar10_dir(root)
    if folder is None:
        hint = ""
        if (root / "cifar10" / "cifar10_to_binary.py").is_file():
            hint = f" (run: python {root / 'cifar10' / 'cifar10_to_binary.py'} {root}/cifar10-bin, then --data-dir {root}/cifar10-bin)"
        raise QsalError(f"cifar-10-batches-bin/ not found under {root}; unpack the official cifar-10-binary.tar.gz there{hint}")
    chunks = []
    for name in _FILES[split]:
        path = folder / name
        if not path.is_file():
            raise QsalError(f"{path} is missing; the cifar-10-batches-bin folder is incomplete")
        data = np.fromfile(path, dtype=np.uint8)
        if data.size % _RECORD:
            raise QsalError(f"{path} is {data.size} bytes, not a multiple of the {_RECORD}-byte record; re-extract it")
        chunks.append(data.reshape(-1, _RECORD))
    records = np.concatenate(chunks)
    labels = records[:, 0].astype(np.int64)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    images, labels = validate_arrays(info, np.ascontiguousarray(images), labels, str(folder))
    return ImageSplit(info, split, images, labels, str(folder))
