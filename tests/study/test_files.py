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
    assert (out / "fp32/model.onnx").is_file()  # the checkpoint was exported to be scored as an artifact
    page = (out / "report.html").read_text()
    # CI forest, 2 trade-offs (size), 2 diagnostics, the saliency grid and the most-changed grid
    assert page.count("data:image/png;base64,") == 1 + 2 + 2 + 1 + 1
    assert "integrated gradients (PyTorch models)" in page  # the ONNX file's checkpoint was found via its metadata


def test_report_refuses_what_it_cannot_read(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("hi")
    assert main(["report", str(tmp_path / "x.txt"), "--out", str(tmp_path / "r")]) == 2
    assert "expected a .safetensors checkpoint or an .onnx file" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.onnx")]) == 2
