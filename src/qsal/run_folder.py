"""Run folders never silently mix models: each records a fingerprint, and defaults never overwrite.

``run.json`` in a training or quantization folder holds ``{"dataset", "model", "method", "config"}``.
Writing into a folder that already holds a run needs ``resume`` (same run, same hyper-parameters) or
``force`` (its model files are removed first); anything else is a one-line ``QsalError`` naming
``--resume`` / ``--force`` / another ``--out``. Default output folders are fresh (``fresh_folder``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from qsal._atomic import write_json_atomic
from qsal.errors import QsalError

__all__ = ["fingerprint", "claim_run_folder", "CannotResume", "file_sha256", "flat_settings", "fresh_folder",
           "refuse_overwrite", "unfinished_run", "FINGERPRINT_FILE"]

FINGERPRINT_FILE = "run.json"
_RUN_OUTPUTS = ("best.safetensors", "best.json", "last.pt", "metrics.json", "reliability.png", "fp32_warmup",
                # what qsal export wrote beside the model by default: a run started over must not keep the old artifact
                "model.onnx", "model.card.md", "model.card.json")
_IDENTITY = ("dataset", "model", "method")


class CannotResume(QsalError):
    """A folder holds this run cut off part-way, made from another parent checkpoint or with other settings: it
    cannot be continued. ``why`` says which, in words (a study starts such an unfinished cell over)."""

    def __init__(self, message: str, why: str):
        super().__init__(message)
        self.why = why

    def __reduce__(self):  # across a worker process (Ray, a process pool): both arguments, not only the message
        return type(self), (str(self), self.why)


def fingerprint(dataset: str, model: str, method: str, config: dict) -> dict:
    """What makes two runs the same run: data, architecture, method and every hyper-parameter in ``config``."""
    return {"dataset": dataset, "model": model, "method": method, "config": json.loads(json.dumps(config, default=str))}


def _describe(fp: dict) -> str:
    return "/".join(str(fp.get(k)) for k in _IDENTITY)


def _read_record(record: Path) -> dict:
    """The fingerprint a folder's run wrote; a damaged one (a write cut off, an edit) cannot be compared with, so
    the run cannot be continued: ``CannotResume``, which a study answers by starting the cell over."""
    try:
        old = json.loads(record.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # not OSError: an unreadable file is not a damaged one
        old = e
    if not isinstance(old, dict):
        why = f"its {record.name} is damaged ({type(old).__name__})"
        raise CannotResume(f"cannot resume {record.parent}: {why}; pass --force to start the run over, or choose "
                           "another --out", why)
    return old


def claim_run_folder(out: str | os.PathLike, fp: dict, *, resume: bool = False, force: bool = False,
                     write: bool = True) -> Path:
    """Make ``out`` this run's folder, or refuse. ``write=False`` only checks (nothing is created), so a
    command can validate its other inputs first and ``record_run_folder`` once they are good: a refused
    command leaves no folder behind.

    New or empty folder: the fingerprint is written. A folder holding a run: ``resume`` continues it
    only if dataset, model, method and config are all unchanged; ``force`` deletes its model files
    and starts over.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise QsalError(f"--out {out} is a file; a run writes a folder: name a new or empty one (or this run's folder)")
    record = out / FINGERPRINT_FILE
    old = _read_record(record) if record.is_file() and not force else None
    has_outputs = any((out / name).exists() for name in _RUN_OUTPUTS)
    # a run that failed before writing anything (diverged, bad data): nothing to keep or continue, so not refused
    abandoned = old is not None and not has_outputs and not resume
    old = None if abandoned else old
    was, now = _compared(old, fp) if old is not None else ({}, {})
    if force:
        if write:  # with write=False only checked: record_run_folder(force=True) clears once every input is good
            _clear_outputs(out)
    elif old is None and has_outputs:
        raise QsalError(f"{out} already holds a model from an unrecorded run; pass --force to replace it or choose "
                        "another --out (--resume needs a folder written by this version)")
    elif old is None and not resume and not abandoned and out.is_dir() and any(out.iterdir()):
        # a folder of the user's own files (images, notes): a run would write its model among them
        raise QsalError(f"{out} is not empty and holds no qsal run; choose a new or empty --out (or pass --force to "
                        "write the run among its files)")
    elif old is not None and (has_outputs or was != now or any(old.get(k) != fp[k] for k in _IDENTITY)):
        if any(old.get(k) != fp[k] for k in _IDENTITY):
            raise QsalError(f"{out} holds a {_describe(old)} run, not {_describe(fp)}; choose another --out, or pass "
                            "--force to replace it (--resume continues only the same run)")
        if not resume and was != now:  # the same kind of run with other settings: --resume would refuse it too
            k = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))[0]
            raise QsalError(f"{out} holds a {_describe(fp)} run with other settings ({k}: {was.get(k)!r} there, "
                            f"{now.get(k)!r} now); pass --force to start over, or choose another --out")
        if not resume:
            raise QsalError(f"{out} already holds this {_describe(fp)} run; pass --resume to continue it, --force to "
                            "start over, or choose another --out")
        changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
        if "parent_sha256" in changed:  # a hash pair says nothing to a reader: say what it means
            why = "its parent checkpoint is not the model this fine-tune started from"
            raise CannotResume(f"cannot resume {out}: its parent checkpoint ({fp['config'].get('parent')}) "
                               "is not the model this fine-tune started from (its content changed: SHA-256 "
                               f"{str(was['parent_sha256'])[:12]}... -> {str(now['parent_sha256'])[:12]}...); pass "
                               "--force to start over from it, or choose another --out", why)
        if changed:
            k = changed[0]
            why = (f"{k} changed ({was.get(k)!r} -> {now.get(k)!r}"
                   f"{f' and {len(changed) - 1} more' if len(changed) > 1 else ''})")
            raise CannotResume(f"cannot resume {out}: {why}; pass --force to start over with the new settings, or "
                               "choose another --out", why)
    if write:
        record_run_folder(out, fp)
    return out


# Nested settings that say how a run is shown or where it runs, not what it computes (a fine-tune's train_config
# carries them; the top-level config leaves them out).
NOT_SETTINGS = ("progress", "device")


def unfinished_run(checkpoint: str | os.PathLike, short: bool = False) -> str | None:
    """Why ``checkpoint`` is the best epoch so far of a ``qsal train`` / ``qsal quantize`` run that has not finished
    (``None``: finished, or not a run folder's). A run writes ``metrics.json`` when it ends, after choosing its
    operating point; a folder with its run record (``run.json``) and no ``metrics.json`` was stopped (or is still
    running). ``short``: the file and folder by their names, not the machine's paths (a model card)."""
    import json

    from qsal.errors import printable_path

    path = Path(checkpoint)
    folder = path.parent
    if not (folder / FINGERPRINT_FILE).is_file() or (folder / "metrics.json").is_file():
        return None
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        epoch, epochs = meta.get("epoch"), (meta.get("train") or {}).get("epochs")
    except (OSError, ValueError, AttributeError):
        epoch = epochs = None
    named = printable_path(f"{folder.name}/{path.name}" if short else str(path))
    where = f" (its best epoch so far: epoch {epoch} of {epochs})" if epoch and epochs else ""
    # a study cell (its study's run_config.json a few folders up) is finished by rerunning the study
    study = any((p / "run_config.json").is_file() for p in list(folder.parents)[:4])
    fix = ("rerun its `qsal run` to finish it" if study
           else f"finish it with --resume --out {printable_path(folder.name if short else str(folder))}")
    return (f"{named} comes from a run that has not finished (stopped, or still running){where}: no operating point "
            f"was chosen and it was not scored on test; {fix}, or use it knowing that")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _compared(old: dict, new: dict) -> tuple[dict, dict]:
    """The settings of two fingerprints as compared: a fine-tune's parent is its checkpoint's content where both
    record it (the absolute path differs between checkouts), else its path (folders written before the hash)."""
    was, now = _settings(old), _settings(new)
    if "parent_sha256" in was and "parent_sha256" in now:
        was.pop("parent", None), now.pop("parent", None)
    else:
        was.pop("parent_sha256", None), now.pop("parent_sha256", None)
    return was, now


def flat_settings(config: dict, keep_null: bool = False) -> dict:
    """A run's config flattened to dotted keys (``train_config.lr``), display settings (``NOT_SETTINGS``) left out
    at every level; nulls dropped unless ``keep_null`` (``study.redo`` compares a null with a value)."""
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in NOT_SETTINGS:
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif value is not None or keep_null:
            flat[prefix] = value

    walk("", config)
    return flat


def _settings(fp: dict) -> dict:
    """A fingerprint's config flattened to dotted keys (``train_config.lr``), without null values and display
    settings: a field added later with a null default (``ema_decay``) reads as unchanged, and a changed nested value
    is named by its own key."""
    return flat_settings(fp.get("config") or {})


def _clear_outputs(out: Path) -> None:
    """Remove a run's model files from ``out`` (``--force``), leaving anything else there."""
    for name in _RUN_OUTPUTS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def record_run_folder(out: str | os.PathLike, fp: dict, force: bool = False) -> Path:
    """Create ``out`` and write its fingerprint (after ``claim_run_folder(..., write=False)`` accepted it); ``force``
    first removes the model files of the run it replaces (only now, when every input has been checked: a refused
    command leaves the old run whole)."""
    out = Path(out)
    if force:
        _clear_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / FINGERPRINT_FILE, fp)
    return out


def fresh_folder(root: str | os.PathLike, stem: str) -> Path:
    """``root/stem-1``, ``root/stem-2``... : the first that does not exist yet (a default never reuses a folder)."""
    stem = re.sub(r"[^A-Za-z0-9_.+-]+", "_", stem).strip("_") or "run"
    root = Path(root)
    i = 1
    while (root / f"{stem}-{i}").exists():
        i += 1
    return root / f"{stem}-{i}"


def refuse_overwrite(path: str | os.PathLike, force: bool = False, example: str = "model.onnx",
                     written_for: str | None = None, flag: str = "--out") -> Path:
    """``path`` if it does not exist yet (or ``force``); a one-line error otherwise. ``written_for``: the --out
    this file goes beside (a model card), named in the error instead of advice to name the file itself. A pipe or
    device is refused even with ``force`` (``output_target``); ``flag``: the option the messages name."""
    from qsal._atomic import output_target

    output_target(path)  # a pipe or device: refused even with force
    path = Path(path)
    if path.is_dir() and written_for:
        raise QsalError(f"{path} is a folder, where the model card of {written_for} goes; move it or choose another "
                        f"{flag}")
    if path.is_dir():
        raise QsalError(f"{path} is a folder; {flag} names the file to write (e.g. {path / example})")
    if path.exists() and not force:
        raise QsalError(f"{path} already exists; pass --force to overwrite it or choose another {flag}")
    return path
