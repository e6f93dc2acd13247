"""DICOM files: recognised by suffix or by the preamble's marker, read as the single picture they display.

``read_dicom`` returns uint8 pixels ready for the folder loader's resize (``folder.read_image``); every way a file can
fail to be one picture (no pixel data, several frames, a compression without a decoder, a blank frame) is a
``QsalError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qsal.errors import QsalError

__all__ = ["IMAGE_EXT", "is_dicom", "read_dicom", "dicom_picture"]

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}  # pictures, never DICOM, by their suffix
_DICOM_EXT = {".dcm", ".dicom"}


def is_dicom(path: Path) -> bool:
    """A ``.dcm``/``.dicom`` file, or another that is not a picture by its suffix and holds the DICOM preamble's
    ``DICM`` marker at byte 128 (PACS exports name images ``IM0001``, or by UID: ``1.2.840.113619.2.55.3.6``)."""
    if path.suffix.lower() in _DICOM_EXT:
        return True
    if path.suffix.lower() in IMAGE_EXT:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _reason(e: Exception) -> str:
    """An exception's first line, at most ~100 characters cut at a word: pydicom's decoders write several lines."""
    text = (str(e).strip().splitlines() or [""])[0]
    return text if len(text) <= 100 else text[:100].rsplit(" ", 1)[0] + " ..."


def read_dicom(path: Path) -> np.ndarray:
    """One DICOM frame as uint8 ``(H, W)``, or ``(H, W, 3)`` for a colour one (RGB/YBR: a fundus or dermoscopy
    photograph), as it is displayed. Grayscale: the modality LUT applied (rescale slope and intercept, a negative
    slope inverting), then min-max scaled over its own range (stored values have no fixed scale); MONOCHROME1 (lowest
    value shown white, common in CR/DX radiographs) inverted to read like MONOCHROME2 and every other picture. Colour:
    8-bit samples as stored (pydicom converts YBR to RGB), deeper ones scaled by their bit depth."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise QsalError("reading DICOM needs pydicom: pip install 'qsal[dicom]'") from None
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise QsalError(f"cannot read DICOM {path} ({type(e).__name__}: {_reason(e)}); remove or replace it") from None
    if "PixelData" not in ds:
        raise QsalError(f"DICOM {path} has no pixel data (a report or structured file?); remove it from the image folder")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise QsalError(f"DICOM {path} has {frames} frames; qsal classifies single images: export the frame you mean "
                        "as its own file")
    try:
        stored = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom/numpy raise many types for truncated or compressed data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        compressed = syntax is not None and getattr(syntax, "is_compressed", False)
        raise QsalError(f"cannot decode the pixels of DICOM {path} ({type(e).__name__}: {_reason(e)}); "
                        + (f"its compression ({syntax.name}) needs a decoder: pip install pylibjpeg pylibjpeg-libjpeg "
                           "pylibjpeg-openjpeg (or python-gdcm), or convert it" if compressed else
                           "it is truncated or damaged: remove or replace it")) from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).strip().upper()
    if stored.ndim == 3 and stored.shape[-1] == 3:  # a colour frame (samples per pixel 3)
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        rgb = np.asarray(stored, dtype=np.float64) * (255.0 / (2 ** bits - 1)) if bits != 8 else np.asarray(stored)
        rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
        if rgb.min() == rgb.max():
            raise QsalError(f"DICOM {path} holds one value ({rgb.min()}) in every pixel, a blank frame; remove it")
        return rgb
    try:
        try:
            from pydicom.pixels import apply_modality_lut
        except ImportError:  # pydicom 2.x
            from pydicom.pixel_data_handlers.util import apply_modality_lut
        px = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    except Exception:  # noqa: BLE001 - a malformed LUT: the stored values, as before
        px = np.asarray(stored, dtype=np.float64)
    if px.ndim != 2 or not np.isfinite(px).all():
        raise QsalError(f"DICOM {path} has pixel array of shape {px.shape}; qsal needs one 2-D image: remove or convert it")
    span = px.max() - px.min()
    if span <= 0:  # min-max scaling would turn any value into black: there is no picture to classify
        raise QsalError(f"DICOM {path} holds one value ({px.min():g}) in every pixel, a blank frame; remove it")
    scaled = 255 * (px - px.min()) / span
    if photometric == "MONOCHROME1":
        scaled = 255 - scaled
    return scaled.round().astype(np.uint8)


def dicom_picture(path: Path):
    """A DICOM as a Pillow image (mode L, or RGB for a colour one)."""
    from PIL import Image

    return Image.fromarray(read_dicom(path))
