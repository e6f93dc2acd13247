"""benchmarks/gpu/pick_weights.py: the weights a lent GPU run sends back are the ones this CPU can use."""

import json
import os
import sys
from pathlib import Path

import pytest

from qsal.quant import PACTConfig, PTQConfig
from qsal.study.config import parse_run_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
import pick_weights  # noqa: E402

START = 1_000_000.0  # the run's start marker (POSIX time); files after it were written during the run
STUDY = {"name": "p", "datasets": ["pneumoniamnist"], "models": ["resnet18"],
         "methods": ["fp32", "ptq", "pact", "sgt", "sgt+pact"], "bits": [4], "observers": ["minmax"], "seeds": [0, 1, 2]}
T_PARENT, T_CHILD = "2026-01-02T00:00:00+00:00", "2026-01-03T00:00:00+00:00"


def _study(run_dir: Path) -> Path:
    cfg = parse_run_config(STUDY)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run_config.json").write_text(json.dumps({"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()}))
    return run_dir



@pytest.fixture(autouse=True)
def placeholder_weights_load(monkeypatch):
    """The weight files here are placeholders of chosen sizes: let them count as loadable checkpoints."""
    from qsal.study import redo

    monkeypatch.setattr(redo, "checkpoint_damage", lambda weights: None)


def _identity(name: str, seed: int = 0) -> dict:
    """The fields that make result.json a cell result (``results.check_result``)."""
    kind, bits, observer = {"fp32": ("fp32", 8, ""), "sgt": ("sgt", 8, ""), "ptq-int8-minmax": ("ptq", 8, "minmax"),
                            "pact-4": ("pact", 4, ""), "sgt+pact-4": ("sgt+pact", 4, "")}[name]
    return {"id": f"pneumoniamnist/resnet18/seed{seed}/{name}", "dataset": "pneumoniamnist", "model": "resnet18",
            "kind": kind, "bits": bits, "observer": observer, "seed": seed, "label": name}


def _cell(run_dir: Path, name: str, *, finished: bool, files: dict[str, int], seed: int = 0, when=START + 10,
          made_at: str = T_PARENT) -> None:
    """A cell folder as the runner leaves it: result.json when finished (a child records its parent's time and its
    method's config), weight files of the given sizes written at ``when``."""
    cell = run_dir / "pneumoniamnist" / "resnet18" / f"seed{seed}" / name
    cell.mkdir(parents=True, exist_ok=True)
    if finished:
        result = {**_identity(name, seed), "environment": {"utc": T_PARENT if name in ("fp32", "sgt") else T_CHILD}}
        if name not in ("fp32", "sgt"):
            made = PTQConfig(observer="minmax") if name.startswith("ptq") else PACTConfig(bits=4)
            result.update(parent_made_at=made_at, quant_config=made.to_dict())
        (cell / "result.json").write_text(json.dumps(result))
    for file_name, size in files.items():
        path = cell / file_name
        path.write_bytes(b"\0" * size)
        os.utime(path, (when, when))


def _picked(run_dir: Path, cap: int) -> list[str]:
    return [str(p.relative_to(run_dir)) for p in pick_weights.pick([run_dir], cap, START)]


def test_a_finished_parent_whose_child_is_unfinished_goes_before_the_childs_half_done_checkpoint(tmp_path):
    # Session 13's H200 run: three SGT cells finished, their SGT+PACT-4 fine-tunes were cut off; room for one file.
    run = _study(tmp_path)
    for seed in range(3):
        for name in ("fp32", "ptq-int8-minmax", "pact-4"):  # finished earlier: their files are not from this run
            _cell(run, name, finished=True, files={}, seed=seed)
        _cell(run, "sgt", finished=True, files={"best.safetensors": 45}, seed=seed)
        _cell(run, "sgt+pact-4", finished=False, files={"best.safetensors": 45}, seed=seed)
    assert _picked(run, cap=60) == ["pneumoniamnist/resnet18/seed0/sgt/best.safetensors"]
    # with room for everything, still no cut-off fine-tune's best.safetensors: without last.pt it cannot be resumed
    assert all(p.endswith("sgt/best.safetensors") for p in _picked(run, cap=10_000))


def test_a_resumable_cell_comes_back_whole_or_not_at_all(tmp_path):
    run = _study(tmp_path)
    _cell(run, "fp32", finished=False, files={"last.pt": 30, "best.safetensors": 10})
    assert _picked(run, cap=39) == []  # last.pt alone would resume and keep the last epoch's weights as 'best'
    assert _picked(run, cap=40) == ["pneumoniamnist/resnet18/seed0/fp32/last.pt",
                                    "pneumoniamnist/resnet18/seed0/fp32/best.safetensors"]


def test_ranks_needed_parents_and_float_resumes_then_fine_tune_resumes_then_the_rest(tmp_path):
    run = _study(tmp_path)
    _cell(run, "fp32", finished=True, files={"best.safetensors": 5})        # its children all finished: rank 2
    _cell(run, "ptq-int8-minmax", finished=True, files={})
    _cell(run, "pact-4", finished=True, files={"best.safetensors": 3})      # a finished child: rank 2
    _cell(run, "sgt", finished=True, files={"best.safetensors": 20})        # its child not begun: rank 0
    _cell(run, "sgt", finished=False, files={"last.pt": 30}, seed=1)        # a float cell resumes: rank 0
    _cell(run, "fp32", finished=True, files={}, seed=2)
    _cell(run, "pact-4", finished=False, files={"last.pt": 2}, seed=2)      # a fine-tune resumes: rank 1
    assert _picked(run, cap=1000) == [
        "pneumoniamnist/resnet18/seed0/sgt/best.safetensors",     # rank 0, smaller first
        "pneumoniamnist/resnet18/seed1/sgt/last.pt",
        "pneumoniamnist/resnet18/seed2/pact-4/last.pt",           # rank 1
        "pneumoniamnist/resnet18/seed0/pact-4/best.safetensors",  # rank 2, smaller first
        "pneumoniamnist/resnet18/seed0/fp32/best.safetensors",
    ]
    assert _picked(run, cap=52)[:2] == ["pneumoniamnist/resnet18/seed0/sgt/best.safetensors",
                                        "pneumoniamnist/resnet18/seed1/sgt/last.pt"]


def test_a_parent_retrained_this_run_comes_back_when_its_old_children_will_be_redone_from_it(tmp_path):
    """The GPU retrained a parent whose weights were gone and was cut off before its children were redone: they still
    hold results made from the old parent, so they are still to do, and the new parent is the one they need."""
    run = _study(tmp_path)
    _cell(run, "fp32", finished=True, files={"best.safetensors": 5})  # retrained: result.json newer than the children's
    (run / "pneumoniamnist/resnet18/seed0/fp32/result.json").write_text(
        json.dumps({**_identity("fp32"), "environment": {"utc": "2026-02-01T00:00:00+00:00"}}))
    _cell(run, "ptq-int8-minmax", finished=True, files={})
    _cell(run, "pact-4", finished=True, files={})
    _cell(run, "sgt", finished=True, files={"best.safetensors": 4})
    _cell(run, "sgt+pact-4", finished=True, files={}, made_at=T_PARENT)
    assert _picked(run, cap=5) == ["pneumoniamnist/resnet18/seed0/fp32/best.safetensors"]


def test_weights_written_before_the_run_are_already_here_and_stay(tmp_path):
    run = _study(tmp_path)
    _cell(run, "fp32", finished=True, files={"best.safetensors": 5}, when=START - 10)
    _cell(run, "sgt", finished=False, files={"last.pt": 5}, when=START - 10)
    assert _picked(run, cap=1000) == []


def test_an_unreadable_study_costs_only_its_own_weights(tmp_path, capsys):
    good, bad = _study(tmp_path / "good"), _study(tmp_path / "bad")
    (bad / "run_config.json").write_text('{"config": {"name": "x"}}')  # no datasets: not a study config
    _cell(good, "sgt", finished=False, files={"last.pt": 3})
    _cell(bad, "sgt", finished=False, files={"last.pt": 3})
    assert pick_weights.pick([bad, good], 100, START) == [good / "pneumoniamnist/resnet18/seed0/sgt/last.pt"]
    assert "bad: " in capsys.readouterr().err
