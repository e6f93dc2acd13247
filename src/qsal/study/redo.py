"""What a rerun of ``qsal run`` redoes besides unfinished cells, so every row descends from what it claims.

- A finished FP32/SGT parent whose ``best.safetensors`` is gone (a fresh checkout keeps results, not weights) while
  a quantized cell of its group still needs it is trained again, same seed and schedule.
- The finished children of such a parent are redone from it: a retrained model is a new model (GPU and CPU runs,
  for one, are not bit-identical), and the group reports the new one.
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

__all__ = ["Redo", "cells_to_redo", "clear_cell", "finished", "outdated"]


@dataclass(frozen=True)
class Redo:
    reason: str  # appended to the cell's log.txt


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


def cells_to_redo(specs: list[CellSpec], run_dir: Path) -> dict[str, Redo]:
    """``{label: Redo}`` for the finished cells of one (dataset, model, seed) group that this run does again."""
    old = {s.label: why for s in specs if finished(run_dir / s.id) and (why := outdated(s, run_dir / s.id))}
    needed = {s.parent for s in specs if s.parent and (s.label in old or not finished(run_dir / s.id))}
    retrain = {s.label for s in specs if s.kind in needed and finished(run_dir / s.id)
               and not (run_dir / s.id / "best.safetensors").is_file()}
    redo = {s.label: Redo(f"its parent {s.parent} is being trained again: redoing this cell from the new parent")
            for s in specs if s.parent in retrain and finished(run_dir / s.id)}
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
