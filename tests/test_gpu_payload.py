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


def test_hold_and_restore_round_trip_in_a_git_checkout(tmp_path, monkeypatch, capsys):
    import subprocess

    import pytest

    root = tmp_path / "repo"
    files = {"src/a.py": "code", "benchmarks/results/study_a/run_config.json": "{}",
             "benchmarks/results/study_a/ds/m/seed0/fp32/result.json": "a0",
             "benchmarks/results/study_a/ds/m/seed1/fp32/result.json": "a1",
             "benchmarks/results/study_b/report.md": "b", "benchmarks/results/targets.md": "t"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    monkeypatch.setattr(payload, "ROOT", root)
    monkeypatch.setattr(payload, "HOLD", tmp_path / "hold")

    payload.hold(["benchmarks/results/study_a/ds/m/seed1"])
    present = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".git" not in p.parts)
    assert present == ["benchmarks/results/study_a/ds/m/seed1/fp32/result.json",
                       "benchmarks/results/study_a/run_config.json", "src/a.py"]
    with pytest.raises(SystemExit, match="already holds files"):
        payload.hold(["benchmarks/results/study_a"])
    # the call brought one held file back unchanged, and changed another: the first is kept, the second is listed
    (root / "benchmarks/results/targets.md").write_text("t")
    (root / "benchmarks/results/study_b").mkdir(parents=True, exist_ok=True)
    (root / "benchmarks/results/study_b/report.md").write_text("new")
    with pytest.raises(SystemExit, match="restored 1 files; 1 exist in the tree and differ"):
        payload.restore()
    assert "study_b/report.md: the tree's copy differs" in capsys.readouterr().err
    assert (root / "benchmarks/results/study_a/ds/m/seed0/fp32/result.json").read_text() == "a0"
    held = [p for p in (tmp_path / "hold").rglob("*") if p.is_file()]
    assert [p.name for p in held] == ["report.md"] and held[0].read_text() == "b"
    held[0].unlink()
    payload.restore()
    assert not (tmp_path / "hold").exists()
