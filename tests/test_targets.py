"""benchmarks/targets.py: issue 13's CIFAR-10 rows say met / missed / not run from the study rows, on their seeds."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import targets  # noqa: E402


def _row(model, acc, seeds=3):
    return {"model": model, "test_acc": acc, "test_acc_std": 0.001, "seeds": seeds}


def test_cifar_rows_compare_each_quantized_row_with_its_float_parent_and_count_the_fewer_seeds():
    study = {"rows": [_row("fp32", 0.912), _row("pact-4", 0.9025), _row("pact-2", 0.880, seeds=1),
                      _row("sgt", 0.905, seeds=2)], "machines": [{"trained_on": "CPU", "cells": 9}]}
    by_row = {r["row"]: r for r in targets.cifar_rows(study)}
    assert by_row["FP32 accuracy"]["status"] == "met" and by_row["FP32 accuracy"]["measured"] == "91.200 ± 0.100 (3 seeds)"
    assert by_row["PACT-4 accuracy vs FP32"]["status"] == "met"  # 90.25 >= 91.2 - 1
    assert by_row["PACT-2 accuracy vs FP32"]["status"] == "missed so far (1 of 3 seeds)"  # 88.0 < 91.2 - 3
    assert by_row["SGT+PACT-4 accuracy vs SGT"]["status"].startswith("not run: configs/cifar10_resnet20.yaml")
    assert all(r["where"] == "CPU (9 cells)" for r in by_row.values())
    assert {r["status"] for r in targets.cifar_rows(None)} == {targets.CIFAR_NOT_RUN}
    short = targets.cifar_rows({"rows": [_row("fp32", 0.899, seeds=1)]})[0]
    assert short["status"] == "missed so far (1 of 3 seeds)"
