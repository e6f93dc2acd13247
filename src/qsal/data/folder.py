"""A user's own images: one sub-folder per class (PNG/JPEG; DICOM with the ``dicom`` extra).

Classes are the sorted sub-folder names; the split is a seeded stratified shuffle, and both are
written out by ``describe_folder`` so a user can see exactly which file went where.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qsal.data.arrays import ImageSplit, validate_arrays
from qsal.data.registry import TASK_BINARY, TASK_MULTICLASS, DatasetInfo
from qsal.errors import QsalError

__all__ = ["folder_info", "load_folder", "folder_split_files"]

_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_DICOM_EXT = {".dcm", ".dicom"}


def _classes(root: Path) -> list[str]:
    if not root.is_dir():
        raise QsalError(f"image folder {root} does not exist; pass a folder with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise QsalError(f"{root} has {len(classes)} class sub-folder(s); a classifier needs at least 2")
    return classes


def folder_info(root: Path, n_channels: int = 1, size: int = 28) -> DatasetInfo:
    """A table row for a folder dataset (task binary for 2 classes, multi-class otherwise)."""
    classes = _classes(root)
    return DatasetInfo(name=f"folder:{root}", family="folder",
                       task=TASK_BINARY if len(classes) == 2 else TASK_MULTICLASS,
                       n_channels=n_channels, labels=tuple(classes), n_samples={}, license="user data",
                       mean=(0.5,) * n_channels, std=(0.5,) * n_channels, sizes=(size,))


def folder_split_files(root: Path, val_fraction: float = 0.1, test_fraction: float = 0.2,
                       seed: int = 0) -> dict[str, list[tuple[str, int]]]:
    """``{split: [(relative path, class id), ...]}``: a stratified, seeded split of every class."""
    classes = _classes(root)
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for cid, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in _IMAGE_EXT | _DICOM_EXT)
        if not files:
            raise QsalError(f"class folder {root / name} has no PNG/JPEG/DICOM images")
        order = rng.permutation(len(files))
        n_test = int(round(len(files) * test_fraction))
        n_val = int(round(len(files) * val_fraction))
        for rank, i in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            out[split].append((str(files[i].relative_to(root)), cid))
    return out


def _read_image(path: Path, n_channels: int, size: int) -> np.ndarray:
    from PIL import Image

    if path.suffix.lower() in _DICOM_EXT:
        try:
            import pydicom
        except ImportError:
            raise QsalError("reading DICOM needs pydicom: pip install 'qsal[dicom]'") from None
        px = pydicom.dcmread(path).pixel_array.astype(np.float64)
        px = (255 * (px - px.min()) / max(px.max() - px.min(), 1e-9)).astype(np.uint8)
        img = Image.fromarray(px)
    else:
        try:
            img = Image.open(path)
            img.load()
        except OSError as e:
            raise QsalError(f"cannot read image {path} ({e}); remove or replace it") from None
    img = img.convert("L" if n_channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load_folder(root: Path, split: str, n_channels: int = 1, size: int = 28, seed: int = 0,
                val_fraction: float = 0.1, test_fraction: float = 0.2) -> ImageSplit:
    """Read one split of a class-per-folder dataset, resized to ``size`` px."""
    info = folder_info(root, n_channels, size)
    files = folder_split_files(root, val_fraction, test_fraction, seed)[split]
    if not files:
        raise QsalError(f"the {split} split of {root} is empty; add images or change the split fractions")
    images = np.stack([_read_image(root / rel, n_channels, size) for rel, _ in files])
    labels = np.array([c for _, c in files], dtype=np.int64)
    images, labels = validate_arrays(info, images, labels, str(root))
    return ImageSplit(info, split, images, labels, str(root))
