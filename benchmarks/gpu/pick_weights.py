"""Which weight files a lent GPU run sends back, within the trip's size cap (benchmarks/gpu/run_study.sh).

Only weights that spare this CPU work are worth the trip. What a study still has to do is read the way ``qsal run``
reads it (``qsal.study.redo.pending``: unfinished cells, and finished ones a run would redo), then, best first:
0. an unfinished float cell's (FP32, SGT) ``last.pt`` together with its ``best.safetensors``: the cell resumes
   mid-schedule here (a ``last.pt`` alone cannot finish: the best epoch's weights are in the other file);
   a finished float parent's ``best.safetensors`` while a child of it (PTQ, PACT-k; of SGT, SGT+PACT-k) is still to
   do: the child starts from it here instead of the parent's whole schedule being trained again;
1. an unfinished fine-tune's ``last.pt`` + ``best.safetensors`` (it resumes here only beside the very parent it
   started from, whose weights must be here too: its ``run.json`` names the parent by content);
2. any other finished cell's ``best.safetensors`` (re-export, re-scoring).
An unfinished cell's ``best.safetensors`` never travels alone, and nothing a run would redo travels. (Session 13
learned this: three ResNet-18 SGT cells finished on the H200 and the one 45 MB slot went to a cut-off SGT+PACT-4
fine-tune's checkpoint, ahead of the SGT parents the fine-tunes need.) Within a rank, smaller first.

    python3 benchmarks/gpu/pick_weights.py CAP_BYTES NEWER_THAN RUN_DIR [RUN_DIR ...]   # one path per line
qsal must be importable (run_study.sh puts src/ on PYTHONPATH).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _units(run_dir: Path, newer_than: float) -> list[tuple[int, list[Path]]]:
    """``(rank, files)`` for each set of weight files of ``run_dir`` worth sending, files written after
    ``newer_than``."""
    from qsal.study.config import parse_run_config
    from qsal.study.grid import plan_groups
    from qsal.study.redo import finished, pending

    cfg = parse_run_config(json.loads((run_dir / "run_config.json").read_text())["config"])
    groups = plan_groups(cfg)
    todo = {s.id for s in pending(groups, run_dir, cfg)}
    units = []
    for group in groups:
        for spec in group:
            cell = run_dir / spec.id
            best, last = cell / "best.safetensors", cell / "last.pt"
            if spec.id in todo:
                if not finished(cell) and last.is_file() and last.stat().st_mtime > newer_than:
                    units.append((0 if spec.parent is None else 1, [last] + ([best] if best.is_file() else [])))
                continue
            if not (best.is_file() and best.stat().st_mtime > newer_than):
                continue
            child_to_do = any(c.parent == spec.label and c.id in todo for c in group)
            units.append((0 if spec.parent is None and child_to_do else 2, [best]))
    return units


def pick(run_dirs: list[Path], cap_bytes: int, newer_than: float) -> list[Path]:
    """The weight files written after ``newer_than`` (a POSIX time) worth sending, best first, at most
    ``cap_bytes`` together; a resumable cell's files come as a pair or not at all."""
    ranked = []
    for run_dir in run_dirs:
        if not (run_dir / "run_config.json").is_file():
            print(f"pick_weights: {run_dir} has no run_config.json; none of its weights are sent", file=sys.stderr)
            continue
        try:
            units = _units(run_dir, newer_than)
        except Exception as e:  # an unreadable study must not cost the other studies their weights
            print(f"pick_weights: {run_dir}: {type(e).__name__}: {e}; none of its weights are sent", file=sys.stderr)
            continue
        for rank, files in units:
            ranked.append((rank, sum(f.stat().st_size for f in files), str(files[0]), files))
    chosen, total = [], 0
    for _, size, _, files in sorted(ranked):
        if total + size <= cap_bytes:
            chosen += files
            total += size
    return chosen


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[-2].strip(), file=sys.stderr)
        return 2
    cap, marker, run_dirs = int(argv[0]), Path(argv[1]), [Path(d) for d in argv[2:]]
    for path in pick(run_dirs, cap, marker.stat().st_mtime):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
