"""MNIST from the official IDX files (gzip or raw), with magic-number and count checks."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

from qsal.data.arrays import ImageSplit, validate_arrays
from qsal.data.download import download_file
from qsal.data.registry import DatasetInfo
from qsal.errors import QsalError

__all__ = ["read_idx", "load_mnist"]

_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_MAGIC = {2051: 3, 2049: 1}  # images: 3 dims, labels: 1 dim


def read_idx(path: Path) -> tuple[np.ndarray, bytes]:
    """Parse an IDX file (``.gz`` or raw). Returns the array and the uncompressed bytes."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise QsalError(f"{path} is not a valid gzip file ({e}); download it again") from None
    if len(raw) < 8:
        raise QsalError(f"{path} is too short to be an IDX file; download it again")
    magic = struct.unpack(">i", raw[:4])[0]
    if magic not in _MAGIC:
        raise QsalError(f"{path} has magic number {magic}, expected 2051 (images) or 2049 (labels)")
    ndim = _MAGIC[magic]
    dims = struct.unpack(">" + "i" * ndim, raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise QsalError(f"{path} holds {len(body)} bytes of data, its header promises {int(np.prod(dims))}; "
                        "the file is truncated, download it again")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims), raw


def _locate(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "mnist", root / "MNIST" / "raw"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def load_mnist(info: DatasetInfo, split: str, root: Path, download: bool = False, verify: bool = True) -> ImageSplit:
    """Read MNIST ``train`` or ``test`` from ``root``, ``root/mnist`` or ``root/MNIST/raw``."""
    if split not in _FILES:
        raise QsalError(f"MNIST has splits train and test, not {split!r} (use --val-fraction for a validation split)")
    arrays = []
    for stem in _FILES[split]:
        path = _locate(root, stem)
        if path is None:
            if not download:
                raise QsalError(f"{stem}.gz not found under {root} (also looked in mnist/ and MNIST/raw/); "
                                "pass --download or place the official IDX files there")
            path = download_file(info.url.format(file=stem + ".gz"), root / "mnist" / (stem + ".gz"),
                                 info.md5[stem + ".gz"])
        arr, raw = read_idx(path)
        if verify:
            _verify(info, path, stem, raw)
        arrays.append(arr)
    images, labels = arrays
    if images.ndim != 3 or images.shape[0] != info.n_samples[split]:
        raise QsalError(f"MNIST {split}: {images.shape[0]} images, expected {info.n_samples[split]}")
    images, labels = validate_arrays(info, images, labels, f"MNIST {split}")
    return ImageSplit(info, split, images, labels, str(root))


def _verify(info: DatasetInfo, path: Path, stem: str, raw: bytes) -> None:
    # The uncompressed MD5 is checked where it is known, so a re-compressed but identical file passes.
    want_raw = info.md5.get(stem)
    if want_raw is not None:
        if hashlib.md5(raw).hexdigest() != want_raw:
            raise QsalError(f"{path}: content MD5 differs from the official {want_raw}; download it again")
        return
    if path.suffix == ".gz":
        got = hashlib.md5(path.read_bytes()).hexdigest()
        if got != info.md5[stem + ".gz"]:
            raise QsalError(f"{path} has MD5 {got}, expected {info.md5[stem + '.gz']}; download it again")
