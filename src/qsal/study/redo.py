"""What a rerun of ``qsal run`` redoes besides unfinished cells, so every row descends from what it claims.

- A finished FP32/SGT parent whose ``best.safetensors`` is gone (a fresh checkout keeps results, not weights) while
  a quantized cell of its group still needs it is trained again, same seed and schedule.
- A finished child older than its parent (``result.json`` times) is redone from it: a retrained model is a new
  model (GPU and CPU runs, for one, are not bit-identical), and the group reports the new one. Decided from the files
  as each cell is reached, so a run stopped mid-way loses nothing, and a failed retrain leaves the children alone.
- A finished quantized cell made by an older version of its method (``PACTConfig.version``...) is redone from
  scratch: a row must not mix two definitions of a method.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qsal.errors import QsalError
from qsal.study.rundir import read_json

if TYPE_CHECKING:
    from qsal.study.runner import CellSpec

__all__ = ["Redo", "cells_to_redo", "clear_cell", "finished", "older_than_parent", "outdated",
           "parent_made_at"]


@dataclass(frozen=True)
class Redo:
    reason: str  # appended to the cell's log.txt
    # redone once its parent's retraining has finished (then ``older_than_parent`` says so); for --dry-run only
    after_parent: bool = False


def finished(cell: Path) -> bool:
    """A cell is finished when its ``result.json`` reads back as a result (a truncated one is redone)."""
    try:
        read_json(cell / "result.json", "")
    except QsalError:
        return False
    return True


def outdated(spec: CellSpec, cell: Path) -> str | None:
    """Why a finished quantized cell is out of date: its method's version changed since it was made; ``None`` when
    current, or when the cell does not say (folders before the runner recorded ``quant_config`` in
    ``result.json`` have it in ``best.json``; older still, nowhere: kept, not guessed)."""
    if spec.parent is None:
        return None
    from qsal.quant import PACTConfig, PTQConfig, QATConfig

    current = {"ptq": PTQConfig, "qat": QATConfig, "pact": PACTConfig, "sgt+pact": PACTConfig}[spec.kind]
    made = None
    for name, key in (("result.json", "quant_config"), ("best.json", "quant")):
        try:
            recorded = read_json(cell / name, "").get(key)
        except QsalError:
            continue
        made = recorded.get("version") if isinstance(recorded, dict) else None
        if made is not None:
            break
    if made is None or made == current.version:
        return None
    return f"made by {current.method} version {made}; this qsal makes version {current.version}: redoing it"


def _made_at(cell: Path) -> str | None:
    """When a finished cell was made: its result's UTC ISO time (``None`` when unrecorded)."""
    try:
        env = read_json(cell / "result.json", "").get("environment")
    except QsalError:
        return None
    return env.get("utc") if isinstance(env, dict) and isinstance(env.get("utc"), str) else None


def parent_made_at(spec: CellSpec, run_dir: Path) -> str | None:
    """When the finished parent of a quantized cell was made (``None``: no parent, or not finished)."""
    return None if spec.parent is None else _made_at(run_dir / spec.id.rsplit("/", 1)[0] / spec.parent)


def older_than_parent(spec: CellSpec, run_dir: Path) -> str | None:
    """Why a finished quantized cell descends from a model that is gone: its FP32/SGT parent finished after it (it was
    trained again). Read from the two result files, so a run stopped between the parent's retraining and its
    children's redo still redoes them next time."""
    if spec.parent is None:
        return None
    theirs = parent_made_at(spec, run_dir)
    try:
        recorded = read_json(run_dir / spec.id / "result.json", "").get("parent_made_at")
    except QsalError:
        return None
    if theirs is None:
        return None
    if isinstance(recorded, str):  # the parent this cell was made from: exact, whatever the machines' clocks
        if recorded == theirs:
            return None
    else:  # cells made before that field: compare the times
        mine = _made_at(run_dir / spec.id)
        if mine is None or mine >= theirs:
            return None
    return f"its parent {spec.parent} was trained again after this cell was made: redoing it from the new parent"


def cells_to_redo(specs: list[CellSpec], run_dir: Path) -> dict[str, Redo]:
    """``{label: Redo}`` for the finished cells of one (dataset, model, seed) group that a run does again. The runner
    asks again as it reaches each cell, so a child is redone only once its parent has been retrained successfully."""
    old = {s.label: why for s in specs if finished(run_dir / s.id)
           and (why := outdated(s, run_dir / s.id) or older_than_parent(s, run_dir))}
    needed = {s.parent for s in specs if s.parent and (s.label in old or not finished(run_dir / s.id))}
    retrain = {s.label for s in specs if s.kind in needed and finished(run_dir / s.id)
               and not (run_dir / s.id / "best.safetensors").is_file()}
    redo = {s.label: Redo(f"its parent {s.parent} is being trained again: redoing this cell from the new parent",
                          after_parent=True) for s in specs if s.parent in retrain and finished(run_dir / s.id)}
    redo.update({label: Redo(why) for label, why in old.items()})
    redo.update({label: Redo("checkpoint missing (a fresh checkout keeps results, not weights) and a quantized cell "
                             "of this group still needs it: training it again") for label in retrain})
    return redo


def clear_cell(cell: Path) -> None:
    """Empty a cell folder that is redone, all but its ``log.txt`` (the history of what was done and why): its
    ``run.json`` names the parent's absolute path and the method's version, so resuming in place can be refused
    (another checkout path, a newer method) and must not be tried."""
    cell.mkdir(parents=True, exist_ok=True)
    for item in cell.iterdir():
        if item.name == "log.txt":
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()
