"""What a rerun redoes, decided from the cells' files alone (no training here: the files are written by hand)."""

import json

import pytest

from qsal.quant import PACTConfig, PTQConfig
from qsal.study import redo as redo_mod
from qsal.study.config import parse_run_config
from qsal.study.redo import cells_to_redo, progress
from qsal.study.grid import expected_configs, expected_schedules, plan_groups

STUDY = {"name": "r", "datasets": ["breastmnist"], "models": ["small_cnn"], "methods": ["fp32", "ptq", "pact"],
         "bits": [4], "observers": ["minmax"], "seeds": [0]}
T_PARENT, T_OLD = "2026-01-02T00:00:00+00:00", "2026-01-01T00:00:00+00:00"


REAL_CHECKPOINT_DAMAGE = redo_mod.checkpoint_damage


@pytest.fixture(autouse=True)
def placeholder_weights_load(monkeypatch):
    """The cells here hold placeholder weight files (empty, no best.json): let them count as loadable; the test of
    damaged checkpoints puts the real check back."""
    monkeypatch.setattr(redo_mod, "checkpoint_damage", lambda weights: None)


@pytest.fixture
def group():
    (g,) = plan_groups(parse_run_config(STUDY))
    return g  # fp32, ptq-int8-minmax, pact-4


def _write(run_dir, spec, utc, weights=True, **extra):
    cell = run_dir / spec.id
    cell.mkdir(parents=True, exist_ok=True)
    fields = {k: getattr(spec, k) for k in ("id", "dataset", "model", "kind", "bits", "observer", "seed", "label")}
    (cell / "result.json").write_text(json.dumps({**fields, "environment": {"utc": utc}, **extra}))
    if weights:
        (cell / "best.safetensors").write_bytes(b"")


def _child(run_dir, spec, **extra):
    made = PACTConfig(bits=spec.bits) if spec.kind == "pact" else PTQConfig(observer=spec.observer)
    fields = {"parent_made_at": T_PARENT, "quant_config": made.to_dict(), **extra}  # as the runner records it
    _write(run_dir, spec, "2026-01-03T00:00:00+00:00", **fields)


def test_nothing_finished_nothing_to_redo(group, tmp_path):
    assert cells_to_redo(group, tmp_path) == {} and progress([group], tmp_path) == (0, 3, [])


def test_children_made_from_the_parent_at_hand_are_kept(group, tmp_path):
    fp32, ptq, pact = group
    _write(tmp_path, fp32, T_PARENT)
    _child(tmp_path, ptq)
    _child(tmp_path, pact)
    assert cells_to_redo(group, tmp_path) == {} and progress([group], tmp_path) == (3, 3, [])


def test_a_parent_without_weights_is_retrained_only_while_a_child_needs_it(group, tmp_path):
    fp32, ptq, pact = group
    _write(tmp_path, fp32, T_PARENT, weights=False)
    _child(tmp_path, ptq)
    assert set(cells_to_redo(group, tmp_path)) == {"fp32", "ptq-int8-minmax"}  # pact-4 unfinished needs fp32
    assert cells_to_redo(group, tmp_path)["ptq-int8-minmax"].after_parent
    done, total, lines = progress([group], tmp_path)
    assert (done, total) == (2, 3)
    assert lines[0].startswith("breastmnist/small_cnn/seed0/fp32: checkpoint missing")
    _child(tmp_path, pact)  # every child finished: the results stand, weights or not
    assert cells_to_redo(group, tmp_path) == {}


def test_a_child_of_another_parent_or_an_older_method_is_redone(group, tmp_path):
    fp32, ptq, pact = group
    _write(tmp_path, fp32, T_PARENT)
    _child(tmp_path, ptq, parent_made_at=T_OLD)  # made from the parent before this one
    _child(tmp_path, pact, quant_config={**PACTConfig().to_dict(), "version": PACTConfig.version - 1})
    why = {label: r.reason for label, r in cells_to_redo(group, tmp_path).items()}
    assert set(why) == {"ptq-int8-minmax", "pact-4"}
    assert "was trained again after this cell was made" in why["ptq-int8-minmax"]
    assert f"made by pact version {PACTConfig.version - 1}" in why["pact-4"]
    # Before results recorded parent_made_at: compared by time (the child made after its parent stays).
    _write(tmp_path, ptq, "2026-01-03T00:00:00+00:00", quant_config=PTQConfig().to_dict())
    assert "ptq-int8-minmax" not in cells_to_redo(group, tmp_path)
    _write(tmp_path, ptq, T_OLD, quant_config=PTQConfig().to_dict())
    assert "ptq-int8-minmax" in cells_to_redo(group, tmp_path)


def _finished_and_counted(group, run_dir, monkeypatch) -> list[str]:
    """Every cell of ``group`` finished from the parent at hand; returns the list each later read appends to."""
    for spec in group:
        (_write if spec.parent is None else _child)(run_dir, spec, *([T_PARENT] if spec.parent is None else []))
    reads = []
    real = redo_mod.read_json
    monkeypatch.setattr(redo_mod, "read_json", lambda path, *a: reads.append(path.name) or real(path, *a))
    return reads


def test_each_result_is_read_once_per_decision(group, tmp_path, monkeypatch):
    reads = _finished_and_counted(group, tmp_path, monkeypatch)
    cells_to_redo(group, tmp_path)
    assert reads == ["result.json"] * len(group)  # quant_config recorded: best.json is not opened
    reads.clear()
    assert progress([group], tmp_path) == (3, 3, [])  # the dry run's summary: one read per file too
    assert reads == ["result.json"] * len(group)


def test_a_rerun_of_a_finished_group_reads_each_result_once(group, tmp_path, monkeypatch):
    from dataclasses import asdict

    from qsal.study.runner import run_group

    reads = _finished_and_counted(group, tmp_path, monkeypatch)
    statuses = run_group([asdict(s) for s in group], str(tmp_path), STUDY, 1)
    assert [s["status"] for s in statuses] == ["skipped (finished earlier)"] * len(group)
    # not once per cell per cell, as before; run.json of the cells that train (fp32, pact-4) for their schedule
    assert sorted(reads) == ["result.json"] * len(group) + ["run.json"] * 2


def test_a_child_made_with_other_options_than_the_study_now_sets_is_redone(group, tmp_path):
    fp32, ptq, pact = group
    _write(tmp_path, fp32, T_PARENT)
    made = PACTConfig(bits=4).to_dict()
    _child(tmp_path, pact, quant_config={k: v for k, v in made.items() if k != "weight_clip"})  # before the field
    cfg = parse_run_config(STUDY)
    assert cells_to_redo(group, tmp_path, expected=expected_configs(group, cfg)) == {}  # absent = the default
    edited = parse_run_config({**STUDY, "pact": {4: {"weight_clip": "mse", "fold_bn": False}}})
    why = cells_to_redo(group, tmp_path, expected=expected_configs(group, edited))
    assert list(why) == ["pact-4"]
    assert why["pact-4"].reason.startswith("made with other pact options than this study's (fold_bn: True -> False, "
                                           "weight_clip: 'max' -> 'mse')")
    assert progress([group], tmp_path, edited)[2] == [f"breastmnist/small_cnn/seed0/pact-4: {why['pact-4'].reason}"]
    assert cells_to_redo(group, tmp_path) == {}  # without the study's configs only versions are compared


def test_a_cell_trained_on_another_schedule_is_redone_and_one_that_does_not_say_is_kept(group, tmp_path):
    fp32, ptq, pact = group
    cfg = parse_run_config(STUDY)
    schedules = expected_schedules(group, cfg)
    assert set(schedules) == {"fp32", "pact-4"}  # PTQ trains nothing
    _write(tmp_path, fp32, T_PARENT)
    _child(tmp_path, ptq)
    _child(tmp_path, pact)
    recorded = {k: v for k, v in schedules["fp32"].items() if k != "ema_decay"}  # a record from before the field
    (tmp_path / fp32.id / "run.json").write_text(json.dumps({"config": {**recorded, "epochs": 99}}))
    (tmp_path / pact.id / "run.json").write_text("{")  # unreadable: nothing to compare with, kept
    why = cells_to_redo(group, tmp_path, schedules=schedules)
    assert why["fp32"].reason == (f"trained on another schedule than this study's (epochs: 99 -> "
                                  f"{schedules['fp32']['epochs']}): redoing it")
    assert why["ptq-int8-minmax"].after_parent and why["pact-4"].after_parent  # from the new parent, once it is made
    from qsal.study.runner import _has_work

    assert _has_work(group, tmp_path, cfg)  # the run checks the data of a group with only a schedule redo too
    (tmp_path / fp32.id / "run.json").write_text(json.dumps({"config": recorded}))
    assert cells_to_redo(group, tmp_path, schedules=schedules) == {}  # the field it lacks is not compared
    assert progress([group], tmp_path, cfg)[2] == [] and not _has_work(group, tmp_path, cfg)


def test_pending_is_what_a_run_would_do_and_the_estimate_adds_up_only_those(group, tmp_path):
    from qsal.study.plan import estimate_cells
    from qsal.study.redo import pending

    fp32, ptq, pact = group
    assert pending([group], tmp_path) == [fp32, ptq, pact]  # nothing finished
    _write(tmp_path, fp32, T_PARENT, weights=False)  # a fresh checkout: results, no weights
    _child(tmp_path, ptq)
    # pact-4 is unfinished and needs fp32, which is trained again; ptq is then older than its parent: redone
    assert pending([group], tmp_path) == [fp32, ptq, pact]
    _child(tmp_path, pact)
    assert pending([group], tmp_path) == []  # every child finished: the results stand
    (tmp_path / pact.id / "result.json").unlink()
    (tmp_path / fp32.id / "best.safetensors").write_bytes(b"")
    assert pending([group], tmp_path) == [pact]
    # a retrain cut off mid-way: the parent's folder was emptied, its finished children are redone after it
    for f in (tmp_path / fp32.id).iterdir():
        f.unlink()
    _child(tmp_path, pact)
    assert pending([group], tmp_path) == [fp32, ptq, pact]
    _write(tmp_path, fp32, T_PARENT)
    (tmp_path / pact.id / "result.json").unlink()
    plan = {"rows": [{"dataset": "breastmnist", "model": "small_cnn", "train": {"epochs": 40}, "finetune": {"epochs": 10},
                      "cell_seconds": {"fp32": 100.0, "ptq-int8-minmax": 0.0, "pact-4": 30.0}}]}
    assert estimate_cells(plan, pending([group], tmp_path)) == 30.0
    assert estimate_cells(plan, group) == 130.0


def test_a_part_trained_cell_counts_only_its_epochs_left(group, tmp_path):
    from qsal.checkpoint import epochs_trained, save_training_state
    from qsal.run_folder import file_sha256
    from qsal.study.plan import estimate_cells
    from qsal.study.redo import pending, under_way

    fp32, ptq, pact = group
    plan = {"rows": [{"dataset": "breastmnist", "model": "small_cnn", "train": {"epochs": 40}, "finetune": {"epochs": 10},
                      "cell_seconds": {"fp32": 100.0, "ptq-int8-minmax": 0.0, "pact-4": 30.0}}]}
    (tmp_path / fp32.id).mkdir(parents=True)
    save_training_state(tmp_path / fp32.id / "last.pt", {"epoch": 9, "model": {}})  # epochs 0-9 done: 10 of 40
    assert epochs_trained(tmp_path / fp32.id / "last.pt") == 10
    todo = pending([group], tmp_path)
    assert under_way(todo, tmp_path) == {fp32.id: 10}  # its children have not started: nothing to resume there
    assert estimate_cells(plan, todo, under_way(todo, tmp_path)) == 75.0 + 30.0
    # The parent finished; a cut-off fine-tune resumes at its epoch.
    _write(tmp_path, fp32, T_PARENT)
    _child(tmp_path, ptq)
    (tmp_path / pact.id).mkdir(parents=True)
    save_training_state(tmp_path / pact.id / "last.pt", {"epoch": 7, "model": {}})
    todo = pending([group], tmp_path)
    assert todo == [pact] and under_way(todo, tmp_path) == {pact.id: 8}
    assert estimate_cells(plan, todo, under_way(todo, tmp_path)) == pytest.approx(6.0)
    # ... when it started from the parent there now (run.json names it by content); from another, it starts over
    for started_from, resumed in ((file_sha256(tmp_path / fp32.id / "best.safetensors"), {pact.id: 8}), ("0" * 64, {})):
        (tmp_path / pact.id / "run.json").write_text(json.dumps({"config": {"parent_sha256": started_from}}))
        assert under_way(todo, tmp_path) == resumed
    # The parent is trained again (its weights gone): the fine-tune starts over from it, so all of it counts.
    (tmp_path / fp32.id / "best.safetensors").unlink()
    todo = pending([group], tmp_path)
    assert pact in todo and under_way(todo, tmp_path) == {}
    # A last.pt that is not a resume state (truncated, or another program's file) counts as nothing trained.
    (tmp_path / fp32.id / "best.safetensors").write_bytes(b"")
    (tmp_path / pact.id / "last.pt").write_bytes(b"not a zip")
    assert under_way(pending([group], tmp_path), tmp_path) == {}


def test_a_run_holding_the_folder_is_seen_without_taking_the_lock(tmp_path):
    import os

    from qsal.study.rundir import run_holder, run_lock

    assert run_holder(tmp_path) is None and not any(tmp_path.iterdir())  # nothing created
    with run_lock(tmp_path):
        assert run_holder(tmp_path) == str(os.getpid())
    assert run_holder(tmp_path) is None


def test_a_parent_whose_checkpoint_is_damaged_is_retrained_while_a_child_needs_it(group, tmp_path, monkeypatch):
    # the child failed on the parent's checkpoint in every rerun, as the parent counted finished and was skipped
    import torch

    from qsal.checkpoint import save_checkpoint
    from qsal.models import create_model

    monkeypatch.setattr(redo_mod, "checkpoint_damage", REAL_CHECKPOINT_DAMAGE)
    fp32, ptq, pact = group
    _write(tmp_path, fp32, T_PARENT, weights=False)
    weights = tmp_path / fp32.id / "best.safetensors"
    torch.manual_seed(0)
    save_checkpoint(create_model("small_cnn", 2, 1), weights,
                    {"arch": {"name": "small_cnn", "num_classes": 2, "in_channels": 1, "image_size": 28}})
    _child(tmp_path, ptq)
    assert cells_to_redo(group, tmp_path) == {}  # a whole checkpoint: pact-4 starts from it
    whole_json, whole_weights = weights.with_suffix(".json").read_text(), weights.read_bytes()
    for damage, why in ((lambda: weights.with_suffix(".json").write_text('{"epoch": 3, "trunc'), "best.json is missing or damaged"),
                        (lambda: weights.with_suffix(".json").write_text("{}"), "best.json is missing or damaged"),
                        (lambda: weights.with_suffix(".json").unlink(), "best.json is missing or damaged"),
                        (lambda: weights.write_bytes(whole_weights[:len(whole_weights) // 2]),
                         "best.safetensors is damaged")):
        damage()
        redo = cells_to_redo(group, tmp_path)
        assert list(redo) == ["fp32", "ptq-int8-minmax"]  # ptq redone from the new parent; pact-4 runs anyway
        assert redo["fp32"].reason == f"its {why} and a quantized cell of this group still needs it: training it again"
        weights.with_suffix(".json").write_text(whole_json)
        weights.write_bytes(whole_weights)
    _child(tmp_path, pact)
    weights.with_suffix(".json").write_text("{}")
    assert cells_to_redo(group, tmp_path) == {}  # nothing needs the parent: its damage is left alone

def test_an_undefined_measurement_is_written_as_null_so_the_cell_stays_finished(group, tmp_path):
    # constant saliency maps give a NaN Spearman: written as NaN, the cell would count unfinished and be redone forever
    from qsal.study.cell import defined
    from qsal.study.redo import finished

    fp32 = group[0]
    result = defined({**{k: getattr(fp32, k) for k in ("id", "dataset", "model", "kind", "bits", "observer", "seed",
                                                         "label")}, "test_auc": 0.9, "agreement_spearman": float("nan"),
                      "latency_b1_ms": float("inf")})
    assert result["agreement_spearman"] is None and result["latency_b1_ms"] is None and result["test_auc"] == 0.9
    assert result["undefined"] == ["agreement_spearman", "latency_b1_ms"]
    (tmp_path / fp32.id).mkdir(parents=True)
    (tmp_path / fp32.id / "result.json").write_text(json.dumps(result))
    assert finished(tmp_path / fp32.id)
    assert defined({"test_auc": 0.5}) == {"test_auc": 0.5}


def test_a_cell_measured_with_other_settings_is_only_measured_again_and_one_that_does_not_say_is_kept(group, tmp_path):
    fp32, ptq, pact = group
    measured = {"latency": True, "saliency": True, "n_explain": 8}
    _write(tmp_path, fp32, T_PARENT, measure=measured)
    _child(tmp_path, ptq, measure=measured)
    _child(tmp_path, pact)  # made before result.json recorded its measure settings
    assert cells_to_redo(group, tmp_path, measure=measured) == {}
    why = cells_to_redo(group, tmp_path, measure={**measured, "n_explain": 24})
    assert list(why) == ["fp32", "ptq-int8-minmax"] and all(r.remeasure and not r.after_parent for r in why.values())
    assert why["fp32"].reason == ("measured with other settings than this study's (n_explain: 8 -> 24): "
                                  "measuring it again")
    assert not redo_mod.weights_kept(pact, tmp_path / pact.id)  # no last.pt: a fine-tune would train afresh
    (tmp_path / pact.id / "last.pt").write_bytes(b"")
    assert redo_mod.weights_kept(pact, tmp_path / pact.id) and redo_mod.weights_kept(ptq, tmp_path / ptq.id)
