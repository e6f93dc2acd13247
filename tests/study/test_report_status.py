"""What a run folder's report says about the cells its tables leave out: out of date for the config, not finished,
dropped; and how it is written (staged: an interrupted report leaves the earlier one; figures it no longer draws go)."""

import json

import pytest

from qsal.cli import main
from qsal.study.config import parse_run_config
from qsal.study.results import collect_results, report_run
from qsal.study.rundir import run_lock
from qsal.study.runner import run_study

STUDY = {"name": "status", "datasets": ["breastmnist", "pneumoniamnist"], "models": ["small_cnn"],
         "methods": ["fp32", "ptq"], "observers": ["minmax"], "seeds": [0, 1], "epochs": {"fp32": 1},
         "measure": {"latency": False, "saliency": False}}


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory):
    """The study run for BreastMNIST only (``--only``): PneumoniaMNIST's cells never ran."""
    out = tmp_path_factory.mktemp("status")
    run_study(parse_run_config(STUDY), out, progress=False, only=["breastmnist/*"])
    return out


def test_a_seed_trained_on_another_schedule_is_named_not_averaged(partial_run, tmp_path):
    """A config edited and rerun with --force --only one seed: the report averaged the other seed's old-schedule cells
    under the new schedule's name, with no word."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(partial_run, run)
    record = run / "breastmnist/small_cnn/seed1/fp32/run.json"
    old = json.loads(record.read_text())
    old["config"]["epochs"] = 3  # seed 1 trained on another schedule than the config the folder records
    record.write_text(json.dumps(old))
    collected = collect_results(run, grids=False)
    assert {r["seed_ids"] for r in collected["rows"]} == {"0"}  # seed 1 in no mean
    assert collected["stale"] == {
        "breastmnist/small_cnn/seed1/fp32": "trained on another schedule than this study's (epochs: 3 -> 1)",
        "breastmnist/small_cnn/seed1/ptq-int8-minmax": "made from fp32, which is out of date"}
    report = report_run(run)
    text = open(report["markdown"]).read()
    assert "## Cells out of date" in text and "- `breastmnist/small_cnn/seed1/fp32`: trained on another schedule" in text
    assert any("2 finished cells are out of date" in n for n in report["status_notes"])


def test_a_partial_run_names_the_studys_sets_and_its_unfinished_cells(partial_run, tmp_path, capsys):
    """A report of one set's cells was titled by that set alone, and the cells still to run were not named."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(partial_run, run)
    report = report_run(run)
    text = open(report["markdown"]).read()
    assert text.startswith("# qsal report: breastmnist (of the study's breastmnist, pneumoniamnist: the others have "
                           "no cell in these tables yet)")
    assert "## Not finished" in text and "`pneumoniamnist/small_cnn/seed1/ptq-int8-minmax`" in text
    assert "4 cells of the study's config have no result yet; `qsal run` with its config runs them" in text
    with run_lock(run):  # a run working on the folder: the report is a snapshot, said with the pid
        assert main(["report", str(run), "-q"]) == 0
    assert "is working on this folder, so this report is a snapshot" in (run / "report.md").read_text()
    assert main(["report", str(run)]) == 0
    assert "note: 4 cells of the study's config have no result yet" in capsys.readouterr().err


def test_an_interrupted_report_leaves_the_earlier_one_and_figures_no_longer_drawn_go(partial_run, tmp_path, capsys,
                                                                                      monkeypatch):
    """Ctrl-C while a run folder's report was written left new figures beside the old report.md; figures of an
    earlier report (a model dropped since) stayed beside the new one, to be opened as current."""
    import shutil

    import qsal.study.report.html as html

    run = tmp_path / "run"
    shutil.copytree(partial_run, run)
    assert main(["report", str(run), "-q"]) == 0
    before = (run / "report.md").read_text()
    (run / "diagnostics_qat-int8.png").write_bytes(b"an earlier report's figure")
    (run / "report.md").write_text(before + "\n![an earlier model](diagnostics_qat-int8.png)\n")
    before = (run / "report.md").read_text()
    (run / "scan.png").write_bytes(b"the user's own file")
    (run / "acc_vs_epochs.png").write_bytes(b"the user's, named like a report figure, never linked")

    def interrupted(rows, path):
        path.write_bytes(b"half")  # a figure is written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(html, "ci_plot", interrupted)
    capsys.readouterr()
    assert main(["report", str(run)]) == 130
    assert capsys.readouterr().err.strip() == ("interrupted; no report was written (an earlier one is as it was): "
                                               "rerun `qsal report`")
    assert (run / "report.md").read_text() == before and (run / "metrics_ci.png").read_bytes() != b"half"
    assert not list(run.glob(".report-*"))
    monkeypatch.undo()
    assert main(["report", str(run), "-q"]) == 0
    assert not (run / "diagnostics_qat-int8.png").exists() and (run / "scan.png").exists()
    assert (run / "acc_vs_epochs.png").exists()
    assert (run / "diagnostics_fp32.png").is_file() and not list(run.glob(".report-*"))


def test_a_rows_ci_is_of_its_mean_over_seeds_on_their_shared_test_set(partial_run, tmp_path):
    """A row of two seeds showed its mean ACC beside seed 0's bootstrap CI (the glossary said so), a CI of another
    number: now the interval is of the mean, each resample scoring both seeds on one draw of the test images."""
    import shutil

    import numpy as np

    from qsal.metrics.bootstrap import bootstrap_ci
    from qsal.metrics.classification import acc_score

    run = tmp_path / "run"
    shutil.copytree(partial_run, run)
    row = next(r for r in collect_results(run, grids=False)["rows"] if r["model"] == "fp32")
    cells = [run / f"breastmnist/small_cnn/seed{s}/fp32" for s in (0, 1)]
    samples = [(np.load(c / "test_labels.npy"), np.load(c / "test_probs.npy")) for c in cells]
    assert row["seeds"] == 2 and row["ci_seeds"] == 2
    assert row["test_acc"] == pytest.approx(np.mean([acc_score(y, p, "binary-class") for y, p in samples]))
    expected = bootstrap_ci(samples, "binary-class", 1000, seed=0)
    assert (row["acc_ci"], row["auc_ci"]) == (expected["acc"], expected["auc"])
    assert row["acc_ci"][0] <= row["test_acc"] <= row["acc_ci"][1]
    seed0 = json.loads((cells[0] / "result.json").read_text())["auc_ci"]
    assert row["auc_ci"] != seed0  # not the first seed's (one epoch: both seeds may call every image benign, one ACC)
    # a seed that saved no predictions (a cell from before the files): the row falls back to its first seed's CI
    (cells[1] / "test_probs.npy").unlink()
    row = next(r for r in collect_results(run, grids=False)["rows"] if r["model"] == "fp32")
    assert row["ci_seeds"] == 1 and row["auc_ci"] == seed0
