"""A user's own images: one sub-folder per class (PNG/JPEG/BMP/TIFF; DICOM with the ``dicom`` extra, ``dicom.py``).

Every file is checked as it is decoded: unreadable files, decompression bombs (Pillow's limit), DICOMs
without pixel data or with several frames, and images so small that resizing would upscale them more
than 4x are refused by name. 16-bit PNG/TIFF pixels are scaled by 255/65535 (the full range kept,
not clipped at 255; a PNG's ``sBIT`` white where it declares one); grayscale DICOMs are min-max scaled per image.

Classes are the sorted sub-folder names; the split is a seeded stratified shuffle (or the folder's own, where it
comes as ``train/ [val/] test/``: ``split_folders``), recorded by its digest (``listing_sha256``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from qsal.data.arrays import ImageSplit, validate_arrays
from qsal.data.dicom import IMAGE_EXT, dicom_picture, is_dicom
from qsal.data.registry import MIN_IMAGE_SIZE, TASK_BINARY, TASK_MULTICLASS, DatasetInfo
from qsal.errors import QsalError

__all__ = ["folder_info", "load_folder", "folder_split_files", "split_folders", "describe_split", "folder_root",
           "listing_sha256", "check_same_listing", "ImageTooSmall", "MAX_UPSCALE"]



def is_image_file(path: Path) -> bool:
    """A file qsal reads as an image: a picture by its suffix, or a DICOM (``is_dicom``)."""
    return path.suffix.lower() in IMAGE_EXT or (os.path.isfile(path) and is_dicom(path))  # isfile: False on OSError


def images_under(folder: Path, follow_links: bool = False) -> list[Path]:
    """The image files under ``folder``, recursively and sorted, but for hidden files and folders (macOS's ._x.png
    forks, .git, .cache), which are skipped before any file is opened; a folder named like an image
    (``series.png/``) is searched, not read. ``follow_links`` (``qsal predict``) also searches linked sub-folders,
    each real folder once, so a link loop ends. A folder dataset does not: its split is drawn from this list, and
    a model trained before must be scored on the same test images."""
    found, seen = [], set()
    for top, dirs, files in os.walk(folder, followlinks=follow_links):
        real = os.path.realpath(top)
        if real in seen:  # reached again through a link: already searched
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [p for name in files if not name.startswith(".") and (p := Path(top) / name).is_file()
                  and is_image_file(p)]
    return sorted(found)


def folder_root(name: str) -> Path:
    """The folder a ``folder:PATH`` dataset name means, absolute (``~`` expanded): a model records it so, and is scored
    on the same images from whichever folder a later command runs (a relative ``folder:scans`` read another
    ``scans/`` there)."""
    return Path(name[len("folder:"):]).expanduser().resolve()


def dataset_key(name: str) -> str:
    """``name`` as recorded and compared: a folder by its absolute path (``folder:./scans/`` and ``folder:scans`` are
    one dataset), a table name as it is."""
    return f"folder:{folder_root(name)}" if name.startswith("folder:") else name


def listing_sha256(files: dict[str, list[tuple[str, int]]]) -> str:
    """A digest of a folder's split (``folder_split_files``: each file's relative path and class, per split)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def check_same_listing(split, recorded: str | None, model: str) -> None:
    """Refuse to score ``model`` on a folder that holds other files than when it was trained (``recorded``: the
    digest in its metadata; ``None`` for a model that predates it): images added or removed redraw the seeded split,
    so its test part would hold images the model trained on."""
    if recorded and split.listing_sha256 and split.listing_sha256 != recorded:
        raise QsalError(f"{split.source} holds other images than when {model} was trained on it (files added, removed "
                        "or renamed since): its splits are not the ones the model was trained, selected and scored on "
                        "(a drawn split is drawn anew, mixing training images into test); restore the folder as it "
                        "was, or train a new model on it")


# A folder that comes split (Kaggle's chest X-rays: train/ val/ test/, each with one folder per class): its own
# split is used, not redrawn. Names compared in lower case.
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def split_folders(root: Path) -> dict[str, Path] | None:
    """``{"train": root/train, "test": root/test[, "val": root/val]}`` where ``root``'s sub-folders are split folders
    (``SPLIT_FOLDERS``; train and test both needed), else ``None`` (one folder per class, split by qsal)."""
    subs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []
    names = [p.name.lower() for p in subs]
    if not names or not set(names) & {"train", "test"}:
        return None
    if not set(names) <= set(SPLIT_FOLDERS):  # train/ test/ extra/ read as three classes named so
        raise QsalError(f"{root} holds split folders and others ({', '.join(sorted(p.name for p in subs))}); a folder "
                        "that comes split holds only train/, test/ and val/, each with one sub-folder per class")
    splits = [SPLIT_FOLDERS[n] for n in names]
    if len(set(splits)) < len(splits):
        raise QsalError(f"{root} has two folders for one split ({', '.join(sorted(p.name for p in subs))}); keep one")
    if not {"train", "test"} <= set(splits):
        raise QsalError(f"{root} holds split folders ({', '.join(sorted(p.name for p in subs))}) but not both train "
                        "and test; add the missing one (each with one sub-folder per class), or point --dataset at a "
                        "folder whose sub-folders are the classes")
    return {split: p for split, p in zip(splits, subs)}


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """Each class name and its folder(s): ``root/<class>``, or in a split folder ``root/<split>/<class>`` per split."""
    if not root.is_dir():
        raise QsalError(f"image folder {root} {'is a file, not a folder' if root.is_file() else 'does not exist'}; "
                        "pass a folder with one sub-folder per class")
    parts = split_folders(root)
    if parts is None:
        folders = {p.name: [p] for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    else:
        by_split = {split: {p.name: p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
                    for split, folder in parts.items()}
        for split, classes in by_split.items():
            extra = sorted(set(classes) - set(by_split["train"]))
            if extra:
                raise QsalError(f"{parts[split]} has class folder(s) {extra} that {parts['train']} lacks; a class must "
                                "have training images: add them, or remove the folder")
        missing = sorted(set(by_split["train"]) - set(by_split["test"]))
        if missing:  # its test metrics would be NaN (no image of the class), with no word
            raise QsalError(f"{parts['test']} has no folder for class(es) {missing}; add their test images, or remove "
                            "the class from train/")
        folders = {name: [by_split[s][name] for s in ("train", "val", "test") if name in by_split.get(s, {})]
                   for name in by_split["train"]}
    if len(folders) < 2:
        where = root if parts is None else parts["train"]
        raise QsalError(f"{where} has {len(folders)} class sub-folder(s); a classifier needs at least 2")
    return dict(sorted(folders.items()))


def _classes(root: Path) -> list[str]:
    return list(_class_folders(root))


def describe_split(root: Path) -> str:
    """How the folder's images are split, in words for notes, errors and cards."""
    parts = split_folders(Path(root))
    if parts is None:
        return "a seeded 70/10/20 train/validation/test split of each class"
    val = f"its {parts['val'].name}/ folder" if "val" in parts else \
        f"a seeded 10 % of each class of {parts['train'].name}/"
    return f"the folder's own split: {parts['train'].name}/ for training, {val} for validation, " \
           f"{parts['test'].name}/ for test"


COLOUR_SAMPLE = 8  # images per class looked at to tell a colour folder from a grayscale one


def folder_channels(root: Path) -> int:
    """3 where any of the first ``COLOUR_SAMPLE`` images of a class is in colour (channels that differ in a pixel
    that is not fully transparent), else 1: dermoscopy or fundus photographs keep their colour, and a grayscale scan
    saved as RGB stays grayscale. A file that cannot be read is left to the loader, which names it. Decided once per
    folder and process (each split and the model check ask again)."""
    return _folder_channels(str(Path(root).resolve()))


@functools.lru_cache(maxsize=16)
def _folder_channels(root: str) -> int:
    for name, folders in _class_folders(Path(root)).items():
        for path in images_under(folders[0])[:COLOUR_SAMPLE]:
            try:
                img = _open_picture(path) if not is_dicom(path) else dicom_picture(path)
            except QsalError:
                continue
            if img.mode in ("L", "1", "I", "F"):
                continue
            rgba = np.asarray(img.convert("RGBA"), dtype=np.int16)
            seen = rgba[..., 3] > 0  # a transparent pixel's colour is not shown
            if ((rgba[..., 0] != rgba[..., 1]) | (rgba[..., 1] != rgba[..., 2]))[seen].any():
                return 3
    return 1


def folder_info(root: Path, n_channels: int | None = None, size: int = 28) -> DatasetInfo:
    """A table row for a folder dataset (task binary for 2 classes, multi-class otherwise); ``n_channels`` ``None``:
    as the images are (``folder_channels``)."""
    classes = _classes(root)
    n_channels = n_channels or folder_channels(root)
    return DatasetInfo(name=f"folder:{Path(root).expanduser().resolve()}", family="folder",
                       task=TASK_BINARY if len(classes) == 2 else TASK_MULTICLASS,
                       n_channels=n_channels, labels=tuple(classes), n_samples={}, license="user data",
                       mean=(0.5,) * n_channels, std=(0.5,) * n_channels, sizes=(size,))


def folder_split_files(root: Path, val_fraction: float = 0.1, test_fraction: float = 0.2,
                       seed: int = 0) -> dict[str, list[tuple[str, int]]]:
    """``{split: [(relative path, class id), ...]}``: a stratified, seeded split of every class; for a folder that comes
    split (``split_folders``) its own train/test (and validation, else a seeded ``val_fraction`` of each training
    class)."""
    folders = _class_folders(root)
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    parts = split_folders(root)
    for cid, (name, where) in enumerate(folders.items()):
        files = images_under(where[0])  # the class's only folder, or its train/ folder (listed first)
        if not files:
            raise QsalError(f"class folder {where[0]} has no images (PNG, JPEG, BMP, TIFF or DICOM); add some, or "
                            "remove the folder")
        if parts is not None:
            for folder in where:
                split = next(s for s, p in parts.items() if folder.parent == p)
                files = images_under(folder) if folder != where[0] else files
                if split == "train" and "val" not in parts:  # a validation slice held out of training
                    order = rng.permutation(len(files))
                    n_val = int(round(len(files) * val_fraction))
                    out["val"] += [(str(files[i].relative_to(root)), cid) for i in order[:n_val]]
                    files = [files[i] for i in order[n_val:]]
                out[split] += [(str(f.relative_to(root)), cid) for f in files]
            continue
        order = rng.permutation(len(files))
        n_test = int(round(len(files) * test_fraction))
        n_val = int(round(len(files) * val_fraction))
        for rank, i in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            out[split].append((str(files[i].relative_to(root)), cid))
    return out


# Upscaling a tiny image by more than this factor invents the detail a classifier would learn from.
MAX_UPSCALE = 4


class ImageTooSmall(QsalError):
    """An image that reading at ``size`` px would upscale more than ``MAX_UPSCALE`` times. ``setting``: what chooses
    the size where the folder is read for training (``--size``; a study's ``folders.clinic.size``), named with the
    largest size the image allows; ``None`` where the size is a model's (scoring, explaining, predicting)."""

    def __init__(self, path: Path, width: int, height: int, size: int, setting: str | None = None):
        self.path, self.width, self.height, self.size, self.setting = path, width, height, size, setting
        largest = min(width, height) * MAX_UPSCALE
        lower = f", or lower {setting} to {largest} or less" if setting and largest >= MIN_IMAGE_SIZE else ""
        super().__init__(f"image {path} is {width}x{height} px; resizing it to {size} px would upscale it more than "
                         f"{MAX_UPSCALE}x: remove it, or use the image at a larger size{lower}")

    def __reduce__(self):  # raised in a worker process, it crosses back whole
        return type(self), (self.path, self.width, self.height, self.size, self.setting)


def png_significant_bits(path: Path) -> int | None:
    """The significant bits a PNG declares for its (gray) samples in its ``sBIT`` chunk, which Pillow does not read
    (``None``: no such chunk, or not a PNG). A 12-bit X-ray stored in a 16-bit PNG declares 12."""
    import struct

    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while len(head := f.read(8)) == 8:
                length, kind = struct.unpack(">I4s", head)
                if kind == b"sBIT":
                    data = f.read(length)
                    return data[0] if data else None
                if kind in (b"IDAT", b"IEND"):  # sBIT comes before the image data
                    return None
                f.seek(length + 4, 1)  # the chunk's data and CRC
    except OSError:
        return None
    return None


def _open_picture(path: Path):
    """A PNG/JPEG/... as a Pillow image in mode L or RGB, upright as a viewer shows it (EXIF orientation applied);
    16-bit images are scaled by 255/65535, not clipped."""
    import warnings

    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():  # Pillow's warning between 89 and 179 megapixels: read, as below the limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            # MPO: a camera JPEG with a secondary image (a gain map, a stereo view); its first frame is the picture
            fmt = img.format  # an EXIF-transposed copy below has none
            frames = 1 if fmt == "MPO" else int(getattr(img, "n_frames", 1) or 1)
            img.load()
        try:  # a phone's or scanner's JPEG is stored sideways with an EXIF rotation
            img = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - malformed EXIF (older Pillow raise TypeError, ZeroDivisionError): as stored
            pass
    except Image.DecompressionBombError as e:
        raise QsalError(f"refusing image {path}: {e}; remove it or shrink it") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise QsalError(f"cannot read image {path} ({e}); remove or replace it") from None
    if frames > 1:  # a multi-page TIFF or an animation: which frame is the image is not for qsal to guess
        raise QsalError(f"image {path} has {frames} frames; qsal classifies single images: save the frame you mean as "
                        "its own file")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        px = np.asarray(img, dtype=np.float64)
        if px.min() < 0 or px.max() > 65535:
            raise QsalError(f"image {path} has 32-bit pixel values outside 0-65535; convert it to 8- or 16-bit")
        one_value = px.min() == px.max()  # the file's own values: a narrow 16-bit range may map to one 8-bit level
        white = 65535.0
        bits = png_significant_bits(path) if fmt == "PNG" else None
        if bits is not None and 8 < bits < 16 and px.max() <= 2 ** bits - 1:
            white = 2.0 ** bits - 1  # a 12-bit scan in a 16-bit PNG that says so (sBIT): its white is 4095, not 65535
        img = Image.fromarray(np.round(px * (255.0 / white)).astype(np.uint8))
        img.info["blank_16bit"] = f"one value ({px.min():g})" if one_value else None
        # no value above 4095 and no sBIT to say so: most likely a 12-bit scan, which 255/65535 renders nearly black
        img.info["dim_16bit"] = white == 65535.0 and 0 < px.max() <= 4095
    elif img.mode == "F":
        raise QsalError(f"image {path} has floating-point pixels (mode F) with no fixed scale; save it as 8- or 16-bit")
    return img


def _refuse_blank(img, path: Path) -> None:
    """No picture, one value (or colour) in every pixel of the file: a model would still give it a confident class
    (an all-black PNG was read as malignant). Judged on the file's values, whatever channels the model reads."""
    if "blank_16bit" in img.info:  # judged before its 16-bit values were scaled to 8 bits
        what = img.info["blank_16bit"]
    else:
        bands = [b for b in img.getbands() if b != "A"]  # transparency is dropped: the picture is the colour bands
        extrema = img.getextrema() if len(img.getbands()) > 1 else (img.getextrema(),)
        values = [lo for (lo, hi), b in zip(extrema, img.getbands()) if b != "A" and lo == hi]
        what = None if len(values) < len(bands) else \
            f"one value ({values[0]})" if len(values) == 1 else f"one colour {tuple(values)}"
    if what:
        raise QsalError(f"image {path} holds {what} in every pixel, a blank image; remove it")


# What reading changed in a way a user would not guess, counted per kind (``read_image(notes=...)``): said once, as
# one line per kind, by the folder loader and by qsal predict.
CONVERSION_NOTES = {
    "not_square": "not square: each is resized whole to {size}x{size} px, stretching it (crop them to a square "
                  "first to keep their proportions)",
    "dim_16bit": "16-bit with no value above 4095 and no sBIT chunk (12-bit scans?): scaled by 255/65535 they use "
                 "the darkest 1/16 of the gray range (save them as 8-bit, or as 16-bit PNG with sBIT 12)",
}


def conversion_notes(notes: dict[str, int], total: int, where: str, size: int) -> list[str]:
    """``notes`` counted by ``read_image`` as sentences: ``3 of 84 images in scans/ are not square: ...``."""
    return [f"{n} of {total} image{'s' if total != 1 else ''}{where} {'is' if n == 1 else 'are'} "
            + CONVERSION_NOTES[kind].format(size=size) for kind, n in notes.items() if n]


def read_image(path: Path, n_channels: int, size: int, notes: dict[str, int] | None = None) -> np.ndarray:
    """A PNG/JPEG/BMP/TIFF/DICOM file as ``(size, size)`` (grayscale) or ``(size, size, 3)`` uint8 pixels, converted
    exactly as a folder dataset's images are (``QsalError`` naming the file when it cannot be read). ``notes``: counts
    of the conversions ``CONVERSION_NOTES`` names, added to."""
    from PIL import Image

    dicom = is_dicom(path)
    img = dicom_picture(path) if dicom else _open_picture(path)
    w, h = img.size
    if min(w, h) * MAX_UPSCALE < size:
        raise ImageTooSmall(path, w, h, size)
    # after the size check: a 1-pixel image is named as too small; a blank DICOM was already refused by _read_dicom,
    # before its min-max scaling
    if not dicom:
        _refuse_blank(img, path)
    if notes is not None:
        for kind, happened in (("not_square", w != h), ("dim_16bit", bool(img.info.get("dim_16bit")))):
            notes[kind] = notes.get(kind, 0) + int(happened)
    img = img.convert("L" if n_channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load_folder(root: Path, split: str, n_channels: int | None = None, size: int = 28, seed: int = 0,
                val_fraction: float = 0.1, test_fraction: float = 0.2) -> ImageSplit:
    """Read one split of a class-per-folder dataset, resized to ``size`` px, in grayscale or colour as its images are
    (``n_channels`` ``None``) or as asked."""
    info = folder_info(root, n_channels, size)
    n_channels = info.n_channels
    listing = folder_split_files(root, val_fraction, test_fraction, seed)
    files = listing[split]
    if not files:
        raise QsalError(f"the {split} split of {root} is empty; add images to each class (its split: "
                        f"{describe_split(root)}; a class of a few images leaves a part empty)")
    notes: dict[str, int] = {}
    images = np.stack([read_image(root / rel, n_channels, size, notes) for rel, _ in files])
    labels = np.array([c for _, c in files], dtype=np.int64)
    images, labels = validate_arrays(info, images, labels, str(root))
    _say_once(root, split, size, conversion_notes(notes, len(files), f" of the {split} split of {root}", size))
    return ImageSplit(info, split, images, labels, str(root), listing_sha256=listing_sha256(listing),
                      split_seed=int(seed))


_SAID: set[tuple[str, str, int, str]] = set()


def _say_once(root: Path, split: str, size: int, lines: list[str]) -> None:
    """Each note once per folder, split and size in a process (a run reads a split again for each stage)."""
    import sys

    for line in lines:
        key = (str(root), split, size, line)
        if key not in _SAID:
            _SAID.add(key)
            print(f"note: {line}", file=sys.stderr)
