"""`qsal report` over files a user names: checkpoints and ONNX files, scored as artifacts."""

import json

import pytest

from qsal.cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    assert main(["train", "--epochs", "1", "--out", str(root / "fp32"), "--quiet"]) == 0
    assert main(["quantize", str(root / "fp32/best.safetensors"), "--num-calibration", "64", "--out", str(root / "ptq"),
                 "--quiet"]) == 0
    assert main(["export", str(root / "ptq/best.safetensors"), "--out", str(root / "ptq/int8.onnx"), "--quiet"]) == 0
    return root


def test_report_over_a_checkpoint_and_an_onnx_file(models, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "rep"
    assert main(["report", str(models / "fp32/best.safetensors"), str(models / "ptq/int8.onnx"), "--out", str(out),
                 "--no-latency", "--n-explain", "4", "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["fp32", "int8"]
    assert all(r["scored"] == "onnx" and r["n"] == 156 and r["acc_ci"][0] <= r["test_acc"] <= r["acc_ci"][1] for r in rows)
    assert rows[1]["size_ratio"] < 0.3  # INT8 weights vs the FP32 file exported for the checkpoint
    # what each file ran on here: on a CPU without VNNI the INT8 file's layers ran on the exact u8 x u8 kernels
    from qsal.runtime import integer_kernels_saturate
    from qsal.study.results import U8U8_HERE

    assert rows[0]["kernels"] == "float" and rows[1]["kernels"] == (U8U8_HERE if integer_kernels_saturate() else
                                                                     "integer")
    assert (out / "fp32/model.onnx").is_file()  # the checkpoint was exported to be scored as an artifact
    # what made each model, from its checkpoint (the ONNX file's by the checkpoint its metadata names, unchanged)
    results = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in results["rows"]] == [0, 0] and results["rows"][0]["schedule"].startswith("1 epoch (adam")
    assert all(len(r["onnx_sha256"]) == 64 for r in results["rows"]) and results["measure"]["n_explain"] == 4
    assert "**schedule**: fp32: 1 epoch (adam" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    # CI forest, 2 trade-offs (size), 2 diagnostics, the saliency grid and the most-changed grid
    assert page.count("data:image/png;base64,") == 1 + 2 + 2 + 1 + 1
    assert "integrated gradients (PyTorch models)" in page  # the ONNX file's checkpoint was found via its metadata


def test_a_report_of_a_file_without_its_checkpoint_says_occlusions_patch(models, tmp_path, capsys):
    import shutil

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(models / "ptq/int8.onnx", alone / "int8.onnx")  # no best.safetensors beside it: no gradients
    capsys.readouterr()
    assert main(["report", str(alone / "int8.onnx"), "--out", str(tmp_path / "rep"), "--no-latency", "--n-explain",
                 "2", "--quiet"]) == 0
    md = (tmp_path / "rep/report.md").read_text()
    assert "occlusion (ONNX artifacts, 4 px patches moved by 2 px)" in md
    # what the explanation columns beside 'ONNX artifact' are of, in the header and under the terminal's table
    said = ("2 test images, occlusion (ONNX artifacts, 4 px patches moved by 2 px); the removal curves run the ONNX "
            "files")
    assert f"- **explanation columns**: {said}" in md
    assert capsys.readouterr().out.rstrip().endswith(f"explanation columns: {said}")


def test_report_out_is_a_new_folder_or_an_earlier_report_replaced_whole(models, tmp_path, capsys):
    """--out was written into whatever folder it named (a cell's, someone's notes), and a second report into the
    same folder left the first one's figures behind."""
    args = ["report", "--no-latency", "--n-explain", "2", "--quiet"]
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main([*args, str(models / "ptq/int8.onnx"), "--out", str(foreign)]) == 2
    assert "holds other files and no earlier `qsal report` of files" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    out = tmp_path / "rep"
    assert main([*args, str(models / "fp32/best.safetensors"), str(models / "ptq/int8.onnx"), "--out", str(out)]) == 0
    first = {p.relative_to(out) for p in out.rglob("*")}
    assert "fp32/model.onnx" in {str(p) for p in first} and (out.stat().st_mode & 0o777) == 0o755
    assert main([*args, str(models / "ptq/int8.onnx"), "--out", str(out)]) == 0  # one model: fewer figures
    second = {p.relative_to(out) for p in out.rglob("*")}
    assert second < first and not any(str(p).startswith("fp32") for p in second)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no staging or replaced folder left
    # a link: the report goes to its target, replaced there (the link was replaced by a folder, the target kept the
    # first report); '.': refused by name (a traceback after all the scoring, and it would swap the shell's folder)
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    for _ in range(2):
        assert main([*args, str(models / "ptq/int8.onnx"), "--out", str(tmp_path / "link")]) == 0
    assert (tmp_path / "link").is_symlink() and (target / "report.md").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    import os
    import shutil

    cwd = os.getcwd()
    try:
        os.chdir(target)
        assert main([*args, str(models / "ptq/int8.onnx"), "--out", "."]) == 2
        assert "is the current folder; a report replaces its folder whole" in capsys.readouterr().err
    finally:
        os.chdir(cwd)
    shutil.copy(models / "ptq/int8.onnx", out / "mine.onnx")  # an input inside the folder the report replaces
    capsys.readouterr()
    assert main([*args, str(out / "mine.onnx"), "--out", str(out)]) == 2
    assert "is inside --out" in capsys.readouterr().err and (out / "mine.onnx").is_file()


def test_report_refuses_what_it_cannot_read(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("hi")
    assert main(["report", str(tmp_path / "x.txt"), "--out", str(tmp_path / "r")]) == 2
    assert "expected a .safetensors checkpoint or an .onnx file" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.onnx")]) == 2


def test_report_scores_only_the_file_exported_from_the_named_checkpoint(models, tmp_path, capsys):
    """Every study file is named best.safetensors / model.onnx: a model.onnx beside a checkpoint is that checkpoint's
    artifact only while its metadata's checkpoint_sha256 matches; else the checkpoint is exported afresh."""
    import shutil

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("best.safetensors", "best.json"):
        shutil.copy(models / "fp32" / name, mixed / name)
    shutil.copy(models / "ptq/int8.onnx", mixed / "model.onnx")  # another model's file under the generic name
    out = tmp_path / "rep"
    args = ["report", str(mixed / "best.safetensors"), "--out", str(out), "--no-latency", "--n-explain", "2", "--json",
            "--quiet"]
    capsys.readouterr()
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["quant"] == "fp32" and row["onnx"] == str(out / "mixed/model.onnx")
    assert main(args) == 0  # a second report into the same folder exports again (it owns out/<label>/)
    capsys.readouterr()
    from qsal.study.files import resolve_input

    assert resolve_input(models / "ptq/int8.onnx") == (models / "ptq/best.safetensors", models / "ptq/int8.onnx")
    assert resolve_input(mixed / "model.onnx") == (None, mixed / "model.onnx")  # its checkpoint is not the one beside


def test_a_run_folders_report_is_written_inside_it_not_into_out(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.json").write_text("{}")
    assert main(["report", str(run), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "report is written inside it" in capsys.readouterr().err and not (tmp_path / "elsewhere").exists()
    # what a report of files measures is not measured for a run folder: said, not ignored
    assert main(["report", str(run), "--n-explain", "50", "--no-latency"]) == 2
    assert "--n-explain, --no-latency set(s) how a report of files is measured" in capsys.readouterr().err
    assert main(["report", str(run), "--data-dir", str(tmp_path)]) == 2  # the data its cells read is the run's
    assert "its config's data_dir and measure" in capsys.readouterr().err


def test_report_refuses_folder_models_split_with_different_seeds(breast_folder, tmp_path, capsys):
    """A folder's test part is drawn by the training seed: scoring a seed-2 model on seed 1's test part would count
    images it trained on as test images, so one report takes models of one split only."""
    from qsal.pipeline import train_model
    from qsal.train import TrainConfig

    root = breast_folder(40)
    for seed in (1, 2):
        train_model(f"folder:{root}", "small_cnn", TrainConfig(epochs=1, seed=seed, progress=False, precision="fp32"),
                    tmp_path / f"s{seed}")
    args = ["report", "--out", str(tmp_path / "rep"), "--no-latency", "--n-explain", "2", "--quiet"]
    capsys.readouterr()
    assert main([*args, str(tmp_path / "s1/best.safetensors"), str(tmp_path / "s2/best.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "s2 split folder:" in err and "with seed 2 but s1 with seed 1" in err and "Traceback" not in err
    assert not (tmp_path / "rep/results.json").exists()
    assert not (tmp_path / "rep").exists()  # nor the first model's export: a refused report leaves nothing
    assert main([*args, "--json", str(tmp_path / "s2/best.safetensors")]) == 0
    trained = json.loads((tmp_path / "s2/metrics.json").read_text())["test"]
    assert json.loads(capsys.readouterr().out)[0]["test_auc"] == pytest.approx(trained["auc"], abs=1e-4)
