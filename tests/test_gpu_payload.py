"""benchmarks/gpu/payload.py: what stays in the tree that travels to a lent GPU machine."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
import payload  # noqa: E402

STUDY = Path("benchmarks/results/study_cifar10_resnet20")


def test_a_kept_group_keeps_its_study_run_config_and_nothing_of_other_groups():
    keep = [STUDY / "cifar10/resnet20/seed1"]
    assert payload._kept(STUDY / "cifar10/resnet20/seed1/fp32/result.json", keep)
    assert payload._kept(STUDY / "run_config.json", keep)  # a run folder stays a run folder
    assert not payload._kept(STUDY / "cifar10/resnet20/seed0/fp32/result.json", keep)
    assert not payload._kept(STUDY / "report.md", keep)
    assert not payload._kept(Path("benchmarks/results/study_mnist_sgt_pact/run_config.json"), keep)


def test_a_kept_study_folder_keeps_all_of_it():
    keep = [STUDY]
    assert payload._kept(STUDY / "report.md", keep)
    assert payload._kept(STUDY / "cifar10/resnet20/seed0/fp32/result.json", keep)
    assert not payload._kept(Path("benchmarks/results/targets.md"), keep)
