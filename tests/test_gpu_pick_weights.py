"""benchmarks/gpu/pick_weights.py: the weights a lent GPU run sends back are the ones this CPU can use."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
import pick_weights  # noqa: E402

START = 1_000_000.0  # the run's start marker (POSIX time); files after it were written during the run


def _cell(run_dir: Path, name: str, *, finished: bool, files: dict[str, int], seed: int = 0, when=START + 10) -> None:
    cell = run_dir / "pneumoniamnist" / "resnet18" / f"seed{seed}" / name
    cell.mkdir(parents=True)
    if finished:
        (cell / "result.json").write_text("{}")
    for file_name, size in files.items():
        path = cell / file_name
        path.write_bytes(b"\0" * size)
        os.utime(path, (when, when))


def _picked(run_dir: Path, cap: int) -> list[str]:
    return [str(p.relative_to(run_dir)) for p in pick_weights.pick([run_dir], cap, START)]


def test_a_finished_parent_whose_child_is_unfinished_goes_before_the_childs_half_done_checkpoint(tmp_path):
    # Session 13's H200 run: three SGT cells finished, their SGT+PACT-4 fine-tunes were cut off; room for one file.
    for seed in range(3):
        _cell(tmp_path, "sgt", finished=True, files={"best.safetensors": 45}, seed=seed)
        _cell(tmp_path, "sgt+pact-4", finished=False, files={"best.safetensors": 45}, seed=seed)
    assert _picked(tmp_path, cap=60) == ["pneumoniamnist/resnet18/seed0/sgt/best.safetensors"]
    # with room for everything, still no unfinished cell's best.safetensors: it cannot be resumed from
    assert all(p.endswith("sgt/best.safetensors") for p in _picked(tmp_path, cap=10_000))


def test_resume_files_and_needed_parents_rank_before_weights_no_cell_needs(tmp_path):
    _cell(tmp_path, "fp32", finished=True, files={"best.safetensors": 5})        # children all finished: rank 1
    _cell(tmp_path, "pact-4", finished=True, files={"best.safetensors": 3})      # a child: rank 1
    _cell(tmp_path, "sgt", finished=True, files={"best.safetensors": 20})        # no child begun yet: rank 0
    _cell(tmp_path, "ptq-int8-minmax", finished=True, files={})
    _cell(tmp_path, "sgt", finished=False, files={"last.pt": 30, "best.safetensors": 1}, seed=1)  # resumable: rank 0
    assert _picked(tmp_path, cap=1000) == [
        "pneumoniamnist/resnet18/seed0/sgt/best.safetensors",     # rank 0, smaller first
        "pneumoniamnist/resnet18/seed1/sgt/last.pt",
        "pneumoniamnist/resnet18/seed0/pact-4/best.safetensors",  # rank 1, smaller first
        "pneumoniamnist/resnet18/seed0/fp32/best.safetensors",
    ]
    # the cap holds: rank 0's 20 + 30 fill 52 bytes; 3 more would pass it, so rank 1 sends nothing
    assert _picked(tmp_path, cap=52) == ["pneumoniamnist/resnet18/seed0/sgt/best.safetensors",
                                         "pneumoniamnist/resnet18/seed1/sgt/last.pt"]


def test_weights_written_before_the_run_are_already_here_and_stay(tmp_path):
    _cell(tmp_path, "fp32", finished=True, files={"best.safetensors": 5}, when=START - 10)
    _cell(tmp_path, "sgt", finished=False, files={"last.pt": 5}, when=START - 10)
    assert _picked(tmp_path, cap=1000) == []
