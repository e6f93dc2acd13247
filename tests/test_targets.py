"""benchmarks/targets.py: issue 13's CIFAR-10 rows say met / missed / not run from the study, seed against seed."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import targets  # noqa: E402


def _row(model, acc, seeds=3, by_seed=None):
    return {"model": model, "test_acc": acc, "test_acc_std": 0.001, "seeds": seeds,
            "test_acc_by_seed": {f"seed{k}": v for k, v in (by_seed or {}).items()}}


def test_cifar_rows_compare_each_quantized_seed_with_its_own_float_parent():
    study = {"rows": [_row("fp32", 0.9107, by_seed={0: 0.912, 1: 0.915, 2: 0.905}),
                      _row("pact-4", 0.9018, by_seed={0: 0.9025, 1: 0.906, 2: 0.897}),  # -0.95, -0.9, -0.8: met
                      # seed 2 only: -2.5 points against seed 2's FP32 (-3.2 against the mean)
                      _row("pact-2", 0.880, seeds=1, by_seed={2: 0.880}),
                      _row("sgt", 0.905, seeds=1, by_seed={0: 0.905})], "machines": [{"trained_on": "CPU", "cells": 8}]}
    by_row = {r["row"]: r for r in targets.cifar_rows(study)}
    assert by_row["FP32 accuracy"]["status"] == "met" and by_row["FP32 accuracy"]["measured"] == "91.070 ± 0.100 (3 seeds)"
    assert by_row["PACT-4 accuracy vs FP32"]["status"] == "met"
    assert by_row["PACT-4 accuracy vs FP32"]["measured"].endswith("paired difference -0.88 points (3 seeds)")
    assert by_row["PACT-2 accuracy vs FP32"]["status"] == "met so far (1 of 3 seeds)"
    assert by_row["PACT-2 accuracy vs FP32"]["measured"].endswith("-2.50 points (1 seed)")
    # SGT itself finished one seed: its fine-tune is what is missing
    assert by_row["SGT+PACT-4 accuracy vs SGT"]["status"] == "not run yet (the study is under way)"
    # no SGT seed at all: the row names what SGT costs and why it is short, not "under way"
    study["rows"] = study["rows"][:3]
    by_row = {r["row"]: r for r in targets.cifar_rows(study)}
    assert by_row["SGT+PACT-4 accuracy vs SGT"]["status"] == targets.CIFAR_SGT_SHORT
    assert by_row["PACT-4 accuracy vs FP32"]["status"] == "met"
    study["rows"] = study["rows"] + [_row("sgt", 0.905, seeds=1, by_seed={0: 0.905})]
    assert all(r["where"] == "CPU (8 cells)" for r in by_row.values())
    # cells run with other thread counts are separate machines in the report, one device here
    study["machines"] = [{"trained_on": "CPU", "cells": 3}, {"trained_on": "NVIDIA H200", "cells": 1},
                         {"trained_on": "CPU", "cells": 1}]
    assert targets.cifar_rows(study)[0]["where"] == "CPU (4 cells); NVIDIA H200 (1 cell)"


def test_cifar_rows_before_the_study_and_with_one_short_seed():
    assert {r["status"] for r in targets.cifar_rows(None)} == {targets.CIFAR_NOT_RUN}
    short = targets.cifar_rows({"rows": [_row("fp32", 0.899, seeds=1)]})[0]
    assert short["status"] == "missed so far (1 of 3 seeds)" and short["measured"] == "89.900 ± 0.100 (1 seed)"
    assert short["where"] == "—"


def _edge(ds, network, method, val, auc, acc, size, seeds=3):
    return {"model": f"{ds}/{network}/{method}", "dataset": ds, "network": network, "method": method, "seeds": seeds,
            "test_auc": auc, "test_acc": acc, "size_bytes": size,
            "val_auc_by_seed": {f"seed{k}": val for k in range(seeds)},
            "cells": [f"{ds}/{network}/seed{k}/{method}" for k in range(seeds)],
            "machines": [{"trained_on": "CPU", "cells": seeds}]}


def test_edge_rows_choose_on_validation_among_small_artifacts_with_the_most_seeds(tmp_path):
    ds = "retinamnist"
    study = {"rows": [
        _edge(ds, "edge_mbv2", "fp32", 0.99, 0.80, 0.60, 400_000),  # float: never a candidate
        _edge(ds, "resnet18", "ptq-minmax", 0.95, 0.75, 0.56, 11_300_000),  # over 1.1 MB
        _edge(ds, "edge_mbv2", "sgt+pact-4", 0.90, 0.731, 0.531, 110_000),  # best validation: chosen
        _edge(ds, "edge_mbv2", "pact-4", 0.85, 0.79, 0.59, 110_000),  # best test AUC: not chosen (test chooses nothing)
        _edge(ds, "small_cnn", "pact-4", 0.97, 0.70, 0.50, 50_000, seeds=1),  # one lucky seed: not competing
    ]}
    row = next(r for r in targets.edge_rows([(study, tmp_path)]) if r["row"].startswith(ds))
    assert row["row"].startswith("retinamnist: edge_mbv2/sgt+pact-4 (0.11 MB; chosen on validation AUC 0.900 (the "
                                 "artifacts' own) among 2 artifacts <= 1.1 MB with 3 seeds)")
    assert row["status"] == "met" and row["where"] == "CPU (3 cells)"
    # a tie on validation goes to the smaller file
    study["rows"].append(_edge(ds, "small_cnn", "ptq-minmax", 0.90, 0.70, 0.53, 60_000))
    row = next(r for r in targets.edge_rows([(study, tmp_path)]) if r["row"].startswith(ds))
    assert row["row"].startswith("retinamnist: small_cnn/ptq-minmax (0.06 MB") and row["status"].startswith("missed")


def test_edge_rows_fall_back_to_checkpoints_validation_when_any_result_lacks_its_own(tmp_path):
    ds = "breastmnist"
    old = _edge(ds, "small_cnn", "ptq-minmax", None, 0.91, 0.87, 60_000, seeds=1)  # before val_auc was recorded
    new = _edge(ds, "edge_mbv2", "pact-4", 0.99, 0.95, 0.90, 110_000, seeds=1)
    for cell, val in ((f"{ds}/small_cnn/seed0/fp32", 0.93), (f"{ds}/edge_mbv2/seed0/pact-4", 0.92)):
        (tmp_path / cell).mkdir(parents=True)  # a PTQ artifact takes its FP32 parent's checkpoint score
        (tmp_path / cell / "best.json").write_text(json.dumps({"val": {"val_auc": val}}))
    row = next(r for r in targets.edge_rows([({"rows": [old, new]}, tmp_path)]) if r["row"].startswith(ds))
    assert "small_cnn/ptq-minmax" in row["row"] and "0.930 (checkpoints')" in row["row"]
    assert row["status"] == "met so far (1 of 3 seeds)"


def test_committed_cards_name_an_sgt_parent_sgt(tmp_path):
    """Cards written before d3a1288 called an SGT+PACT model's SGT parent 'FP32'; the relabel script found them all."""
    import relabel_sgt_pact_cards as relabel

    assert relabel.stale_cards(relabel.RESULTS) == []
    card = {"training": {"parent": "s/seed0/sgt/best.safetensors"}, "caveats": [relabel.OLD_CAVEAT],
            "metrics": {"test": {"acc": 0.9}, "fp32_parent_test": {"acc": 0.91}, "fp32_parent_scored": "its ONNX file"}}
    (tmp_path / "model.card.json").write_text(json.dumps(card))
    (tmp_path / "model.card.md").write_text("| parent (FP32) | x |\n## Change against the FP32 parent\n"
                                            "| metric | this model | FP32 parent | change |\n")
    assert relabel.stale_cards(tmp_path) == [tmp_path / "model.card.json"]
    relabel.relabel(tmp_path / "model.card.json", "2026-11-27")
    out = json.loads((tmp_path / "model.card.json").read_text())
    assert out["metrics"] == {"test": {"acc": 0.9}, "parent_test": {"acc": 0.91}, "parent_scored": "its ONNX file",
                              "parent_kind": "SGT"}
    assert out["caveats"] == [relabel.NEW_CAVEAT] and relabel.stale_cards(tmp_path) == []
    md = (tmp_path / "model.card.md").read_text()
    assert "FP32" not in md.split("_Note")[0] and "| parent (SGT) |" in md and "| SGT parent |" in md
