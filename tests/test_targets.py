"""benchmarks/targets.py: issue 13's CIFAR-10 rows say met / missed / not run from the study, seed against seed."""

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
    assert by_row["SGT+PACT-4 accuracy vs SGT"]["status"] == "not run yet (the study is under way)"
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
