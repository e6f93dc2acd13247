"""A run folder's guard rails: one ``qsal run`` at a time, and files read back with a clean error.

``run_lock`` holds an exclusive ``fcntl.flock`` on ``RUN_DIR/.qsal-run.lock`` for the whole run; a second
``qsal run`` on the same folder refuses at once with the first one's pid (the lock is released by the
kernel when the holder exits, however it exits, so a killed run never leaves a stale lock). Platforms
without ``fcntl`` (Windows) run unlocked.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from qsal.errors import QsalError

__all__ = ["run_lock", "run_holder", "describe_holder", "read_json", "load_npy", "redo_fix", "LOCK_NAME"]

LOCK_NAME = ".qsal-run.lock"


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run folder's lock for the duration of the block; ``QsalError`` if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent runs are the user's to avoid
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise QsalError(f"{run_dir} is in use by another `qsal run` ({describe_holder(holder)}); wait for it to "
                            "finish, or pass another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def describe_holder(pid: str) -> str:
    """``pid N`` of the run holding a lock, and where that process has ended (killed with SIGKILL, which its worker
    processes outlive: they inherited the lock and hold it while they finish their cells) what holds it instead."""
    if pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return (f"pid {pid}, which has ended; the worker processes it started still hold the folder: wait for "
                    f"them, or end them (`fuser -v {LOCK_NAME}` in the folder lists them)")
        except OSError:  # alive, another user's
            pass
    return f"pid {pid}"


def run_holder(run_dir: str | os.PathLike) -> str | None:
    """The pid of the ``qsal run`` holding ``run_dir``'s lock now (``"unknown"`` if it did not say), else ``None``;
    takes nothing and creates nothing (for ``--dry-run``, whose counts then are as of this moment)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None  # no lock file: never run, or run by a qsal from before the lock
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while a run holds it exclusively
        return None
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike, fix: str, kind: type = dict):
    """``json.loads`` of a file the run wrote; a truncated, empty or foreign file is a ``QsalError`` with ``fix``."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QsalError(f"{path} is missing; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QsalError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:60]}; truncated?); {fix}") from None
    if not isinstance(value, kind):
        raise QsalError(f"{path} holds a {type(value).__name__}, not a {kind.__name__}; {fix}")
    return value


def load_npy(path: str | os.PathLike, fix: str, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """``np.load`` without pickles, of ``ndim`` dimensions (one of them, for a tuple); a garbage, truncated
    or mis-shaped file is a ``QsalError`` with ``fix``."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise QsalError(f"{path} is not a readable .npy array ({str(e)[:60]}); {fix}") from None
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if not isinstance(arr, np.ndarray) or (allowed is not None and arr.ndim not in allowed) or arr.size == 0:
        want = " or ".join(f"{d}-D" for d in allowed) if allowed else "non-empty"
        raise QsalError(f"{path} holds an array of shape {getattr(arr, 'shape', '?')}, not {want}; {fix}")
    return arr


def redo_fix(cell: Path, run_dir: Path) -> str:
    """What to do about a cell whose files cannot be read back: the advice every such error ends with."""
    return (f"delete the folder {cell} and rerun `qsal run STUDY.yaml --out {run_dir}` (the study's config) to redo "
            "that cell")
