"""Which weight files a lent GPU run sends back, within the trip's size cap (benchmarks/gpu/run_study.sh).

Only weights that spare this CPU work are worth the trip:
- an unfinished cell's ``last.pt``: the cell resumes mid-schedule here;
- a finished float parent's (``fp32``, ``sgt``) ``best.safetensors`` while one of its children (PTQ, PACT-k; for
  SGT, SGT+PACT-k) is unfinished or not begun: the child starts from it here instead of the parent's whole schedule
  being trained again;
- then any other finished cell's ``best.safetensors`` (re-export, re-scoring).
An unfinished cell's ``best.safetensors`` is never sent: without its ``last.pt`` the cell is redone from scratch, so
the file is dead weight. (Session 13 learned this: three ResNet-18 SGT cells finished on the H200 and the 45 MB
slot went to a half-done SGT+PACT-4 fine-tune's checkpoint, ahead of the SGT parents its fine-tune needed.)
Within a rank, smaller files first, so more cells come back.

    python3 benchmarks/gpu/pick_weights.py CAP_BYTES NEWER_THAN RUN_DIR [RUN_DIR ...]   # one path per line
"""

from __future__ import annotations

import sys
from pathlib import Path


def _finished(cell: Path) -> bool:
    return (cell / "result.json").is_file()


def _cells(run_dir: Path) -> list[Path]:
    """Cell folders: ``dataset/model/seedN/cell`` under a study folder."""
    return sorted(p for p in run_dir.glob("*/*/seed*/*") if p.is_dir())


def _parent_name(cell_name: str) -> str | None:
    """The float parent a cell is made from, by the runner's cell names (``sgt+pact-4`` from ``sgt``, ``pact-4``
    and ``ptq-int8-minmax`` from ``fp32``); ``None`` for a parent."""
    if cell_name in ("fp32", "sgt"):
        return None
    return "sgt" if cell_name.startswith("sgt+") else "fp32"


def _children_pending(parent: Path) -> bool:
    """Whether some child of the float parent ``parent`` is unfinished, or none has a folder yet."""
    children = [c for c in parent.parent.iterdir() if c.is_dir() and _parent_name(c.name) == parent.name]
    return not children or any(not _finished(c) for c in children)


def pick(run_dirs: list[Path], cap_bytes: int, newer_than: float) -> list[Path]:
    """The weight files written after ``newer_than`` (a POSIX time) worth sending, best first, at most
    ``cap_bytes`` together."""
    ranked: list[tuple[int, int, str, Path]] = []
    for run_dir in run_dirs:
        for cell in _cells(run_dir):
            if _finished(cell):
                needed = _parent_name(cell.name) is None and _children_pending(cell)
                candidate, rank = cell / "best.safetensors", 0 if needed else 1
            else:
                candidate, rank = cell / "last.pt", 0
            if candidate.is_file() and candidate.stat().st_mtime > newer_than:
                ranked.append((rank, candidate.stat().st_size, str(candidate), candidate))
    chosen, total = [], 0
    for _, size, _, path in sorted(ranked):
        if total + size <= cap_bytes:
            chosen.append(path)
            total += size
    return chosen


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    cap, marker, run_dirs = int(argv[0]), Path(argv[1]), [Path(d) for d in argv[2:]]
    for path in pick(run_dirs, cap, marker.stat().st_mtime):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
