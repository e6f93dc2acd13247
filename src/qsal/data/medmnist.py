"""MedMNIST 2D in the official npz layout (``<flag>.npz`` for 28 px, ``<flag>_<size>.npz`` otherwise)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from qsal.data.arrays import ImageSplit, validate_arrays
from qsal.data.download import download_file, md5_of
from qsal.data.registry import DatasetInfo
from qsal.errors import QsalError

__all__ = ["medmnist_filename", "find_medmnist", "load_medmnist", "EMBEDDED_DIR"]

EMBEDDED_DIR = Path(__file__).with_name("_embedded")
# Files above this size are not re-hashed on every load (the 224 px sets are GBs); they were
# checked when downloaded.
_HASH_ON_LOAD_MAX_BYTES = 256 << 20


def medmnist_filename(name: str, size: int) -> str:
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def candidate_paths(info: DatasetInfo, size: int, root: Path) -> list[Path]:
    fname = medmnist_filename(info.name, size)
    paths = [root / fname, root / "medmnist" / fname]
    if size == 28 and (EMBEDDED_DIR / fname).exists():
        paths.append(EMBEDDED_DIR / fname)
    return paths


def find_medmnist(info: DatasetInfo, size: int, root: Path) -> Path | None:
    """First existing file among ``root/<file>``, ``root/medmnist/<file>`` and the embedded copy."""
    for p in candidate_paths(info, size, root):
        if p.is_file():
            return p
    return None


def load_medmnist(info: DatasetInfo, split: str, root: Path, size: int = 28, download: bool = False,
                  verify: bool = True) -> ImageSplit:
    """Read one split of a MedMNIST npz, downloading it from the official record if asked.

    Raises:
        QsalError: file missing (lists where it looked and how to get it), wrong checksum, bad arrays.
    """
    if size not in info.sizes:
        raise QsalError(f"{info.name} comes in sizes {info.sizes}, not {size}; pass --size one of those")
    if split not in ("train", "val", "test"):
        raise QsalError(f"unknown split {split!r}; use train, val or test")
    path = find_medmnist(info, size, root)
    fname = medmnist_filename(info.name, size)
    expected = info.md5.get(str(size))
    if path is None:
        if not download:
            looked = ", ".join(str(p) for p in candidate_paths(info, size, root))
            raise QsalError(f"{fname} not found (looked in {looked}); pass --download, or place the official "
                            f"file there, or point --data-dir / QSAL_DATA_DIR at its folder")
        path = download_file(info.url.format(file=fname), root / fname, expected)
    if verify and expected and path.stat().st_size <= _HASH_ON_LOAD_MAX_BYTES:
        got = md5_of(path)
        if got != expected:
            raise QsalError(f"{path} has MD5 {got}, expected the official {expected}; the file is truncated or "
                            "modified: delete it and rerun with --download to fetch the official file (for images of your own, "
                            "use --dataset folder:PATH)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
    except KeyError:
        raise QsalError(f"{path} has no {split}_images/{split}_labels arrays; it is not a MedMNIST npz") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise QsalError(f"{path} is not a readable npz file ({e}); delete it and download it again") from None
    images, labels = validate_arrays(info, images, labels, str(path))
    if images.shape[1] != size:
        raise QsalError(f"{path}: images are {images.shape[1]} px, expected {size}; the file name and content disagree")
    source = "embedded" if path.parent == EMBEDDED_DIR else str(path)
    return ImageSplit(info, split, images, labels, source)
