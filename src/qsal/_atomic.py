"""Atomic file writes: a reader sees the old file or the complete new one, never half of one.

Each writer writes to a temporary file in the destination folder and ``os.replace``s it into place,
which is atomic on POSIX and Windows for files on the same filesystem. Temporary names carry the
writer's pid (``.best.json.pid1234.x8k2.tmp``) so that the next write to the same destination can
remove the leftovers of a killed writer without touching a live one's. A full disk (``ENOSPC``) is a
``QsalError`` naming the file, and the destination keeps its old content.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from qsal.errors import QsalError

__all__ = ["output_target", "atomic_path", "write_bytes_atomic", "write_text_atomic", "write_json_atomic", "save_figure_atomic",
           "remove_stale_temps", "disk_full_error", "DISK_FULL_ERRNOS"]

DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
# An output path the user chose that cannot be written: a folder, a read-only place, a file where a folder should be.
BAD_DESTINATION_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.EEXIST,
                          errno.ENAMETOOLONG}
_LEGACY_STALE_SECONDS = 600  # temp files without a pid (older qsal) count as stale after this


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else
    return True


def remove_stale_temps(dest: str | os.PathLike) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files beside ``dest`` left by writers that no longer run; returns them."""
    dest = Path(dest)
    removed = []
    if not dest.parent.is_dir():
        return removed
    pattern = re.compile(re.escape(f".{dest.name}.") + r"(?:pid(\d+)\.)?[^/]*\.tmp$")
    for p in dest.parent.glob(f".{_glob_escape(dest.name)}.*.tmp"):
        m = pattern.match(p.name)
        if not m:
            continue
        try:
            stale = (not _pid_alive(int(m.group(1))) if m.group(1)
                     else time.time() - p.stat().st_mtime > _LEGACY_STALE_SECONDS)
            if stale:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()  # a dir: staging_dir's
                removed.append(p)
        except OSError:
            pass
    return removed


def _glob_escape(name: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", name)


def disk_full_error(dest: str | os.PathLike, e: OSError) -> QsalError:
    return QsalError(f"no space left on the device while writing {dest} ({os.strerror(e.errno or errno.ENOSPC)}); "
                     "free some space or choose another output folder, then rerun")


def _write_error(dest: Path, e: OSError) -> QsalError | None:
    if e.errno in DISK_FULL_ERRNOS:
        return disk_full_error(dest, e)
    if e.errno in BAD_DESTINATION_ERRNOS:
        return QsalError(f"cannot write {dest} ({os.strerror(e.errno)}"
                         f"{': ' + str(e.filename) if e.filename and str(e.filename) != str(dest) else ''}); "
                         "choose another output path")
    return None


def _raise_folder_error(dest: Path, e: OSError):
    """``e`` from preparing a write beside ``dest`` (its folder, a temp name) as one line where the user can fix it."""
    err = _write_error(dest, e)
    if e.errno == errno.ENOENT:  # the folder could not be made (e.g. under /proc)
        err = QsalError(f"cannot write {dest} (its folder does not exist and cannot be created); "
                        "choose another output path")
    if err:
        raise err from None
    raise e


def output_target(dest: str | os.PathLike) -> Path:
    """``dest``, checked for an atomic write: a pipe, device or socket there (or at the end of a link there, as
    ``/dev/stdout`` is) is refused, since moving a new file into its place would replace it (``--out /dev/full
    --force`` run as root replaced the device) and nothing would reach a reader. A link to a regular file is replaced
    by the new file, its target left as it was: writing through it could overwrite a file the command reads (an
    ``.onnx``-named link to the checkpoint being exported)."""
    import stat

    dest = Path(dest)
    try:
        mode = os.stat(dest).st_mode  # follows links, /proc's /dev/fd/N ones to an unnamed pipe included
    except OSError:  # not there yet, a dangling link (or unreadable: the write itself says why)
        return dest
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a folder: the caller's own message names it
        kind = "a pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise QsalError(f"{dest} is {kind}, not a file: qsal writes a complete file and moves it into place, which "
                        "would replace it; name a regular file")
    return dest


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; move it onto ``dest`` (mode 0666 minus umask) only if the block
    succeeds. A pipe or device at ``dest`` is refused (``output_target``)."""
    dest = output_target(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(dest)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.pid{os.getpid()}.", suffix=suffix + ".tmp", dir=dest.parent)
        os.close(fd)
    except OSError as e:
        _raise_folder_error(dest, e)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # after the write: some writers (safetensors) set 0600 themselves; a result file should read like any other
        os.chmod(tmp_path, _file_mode())
        os.replace(tmp_path, dest)
    except OSError as e:
        err = _write_error(dest, e)
        if err:
            raise err from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def staging_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest`` (same file system: ``os.replace`` out of it is atomic),
    removed afterwards with whatever is left in it; one a killed process left is removed by the next writer."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(dest)
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pid{os.getpid()}.", suffix=".tmp", dir=dest.parent))
    except OSError as e:
        _raise_folder_error(dest, e)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(dest)


def write_text_atomic(dest: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(dest, text.encode("utf-8"))


def write_json_atomic(dest: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    # numpy scalars and paths show up in result dicts; everything else is a bug worth a TypeError.
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_figure_atomic(fig, dest: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(dest, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(dest)
