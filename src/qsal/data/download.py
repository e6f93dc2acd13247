"""Resumable, checksum-checked, atomic downloads.

A partial download lives in ``<dest>.part`` and is resumed with an HTTP ``Range`` request; the file
appears under its real name only after its MD5 matched, so a kill never leaves a corrupt dataset.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from qsal.errors import QsalError

__all__ = ["md5_of", "download_file"]

_CHUNK = 1 << 20


def md5_of(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: str | os.PathLike, md5: str | None, *, timeout_s: float = 30.0,
                  progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if present, and verify ``md5``.

    Raises:
        QsalError: the server is unreachable (with where to place the file by hand), or the
            finished file's MD5 differs from ``md5`` (the partial file is removed).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "qsal"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part file is already complete
            response = None
        else:
            raise QsalError(f"download of {url} failed (HTTP {e.code}); download it by hand and place it at {dest}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise QsalError(f"cannot reach {url} ({reason}); download it elsewhere and place it at {dest}") from None
    if response is not None:
        with response:
            resumed = have and response.status == 206
            mode = "ab" if resumed else "wb"
            if not resumed:
                have = 0
            total = response.headers.get("Content-Length")
            total = int(total) + have if total else None
            with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                             desc=dest.name, disable=not progress, leave=False) as bar:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
    if md5 is not None:
        got = md5_of(part)
        if got != md5:
            part.unlink()
            raise QsalError(f"downloaded {dest.name} has MD5 {got}, expected {md5}; the partial file was "
                            "removed, retry the download")
    os.replace(part, dest)
    return dest
