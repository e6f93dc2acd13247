"""Slow end-to-end run: the README's main job on real data (the embedded BreastMNIST)."""

import json

import pytest
from shadowing import markers, plant, run_in

from qsal.study.demo import run_demo


@pytest.mark.slow
def test_quick_demo_produces_every_model_and_a_report(tmp_path):
    # as a user runs it, from a folder whose argparse.py/json.py/concurrent.py its workers must not import
    cwd = plant(tmp_path / "cwd")
    out = tmp_path / "demo"
    proc = run_in(cwd, "demo", "--quick", "--out", str(out), "-q", timeout=900, threads=None)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert markers(cwd) == []
    results = json.loads((out / "results.json").read_text())
    names = [r["model"] for r in results["rows"]]
    assert names == ["fp32", "ptq-int8", "qat-int8", "pact-4", "sgt", "sgt+pact-4"]
    rows = {r["model"]: r for r in results["rows"]}
    assert rows["fp32"]["test_auc"] > 0.7  # real BreastMNIST, short schedule
    assert abs(rows["ptq-int8"]["test_auc"] - rows["fp32"]["test_auc"]) < 0.03
    assert rows["ptq-int8"]["size_ratio"] < 0.26 and rows["pact-4"]["size_ratio"] < 0.14
    for r in results["rows"]:  # rows are the deployed artifact's numbers, close to the PyTorch model's
        assert r["artifact"] is True and abs(r["pytorch_acc"] - r["test_acc"]) <= 0.02
        # finding 1: on BreastMNIST sensitivity is about malignant (label 0), and every output says so
        assert r["positive_class"] == "malignant" and r["positive_label"] == 0
        assert r["operating_point"]["chosen_on"] == "validation" and 0 <= r["ece"] <= 1
    card = (out / "fp32" / "model.card.md").read_text()
    assert "sensitivity (positive: malignant)" in card and "the ONNX file run by onnxruntime" in card
    assert "spec. (positive: malignant)" in (out / "report.md").read_text()
    said = ("faithfulness gap: 64 test images, |input gradient| maps; Gini and map ρ: integrated gradients from black "
            "on 8 test images; each model's PyTorch model")  # whose maps the explanation columns are, and how many
    assert f"- **explanation columns**: {said}" in (out / "report.md").read_text()
    assert f"explanation columns: {said}" in proc.stdout
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "results.json").read_text())["environment"]["versions"]["torch"]
    assert (out / "report.html").is_file() and (out / "saliency_grid.png").is_file()
    sgt_card = (out / "sgt+pact-4" / "model.card.md").read_text()  # fine-tuned from SGT, and says so
    assert "## Change against the SGT parent" in sgt_card and "FP32 parent" not in sgt_card

    # a stage written with other settings (an older qsal's demo): refused with the flag that starts it over
    from qsal.errors import QsalError
    from qsal.run_folder import FINGERPRINT_FILE

    record = out / "sgt+pact-4" / FINGERPRINT_FILE
    fp = json.loads(record.read_text())
    fp["config"]["lr"] = 1e-4
    record.write_text(json.dumps(fp))
    with pytest.raises(QsalError, match="lr changed .* pass --force to start over"):
        run_demo(out_dir=str(out), quick=True, progress=False, verbose=False)


@pytest.mark.parametrize("marker", ["run_config.json", "best.safetensors"])
def test_the_demo_refuses_to_write_into_a_study_or_a_model_folder(marker, tmp_path, capsys):
    from qsal.cli import main

    (tmp_path / marker).write_text("{}")
    (tmp_path / "report.md").write_text("the study's report")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"({marker}); the demo would overwrite its report" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([marker, "report.md"])
    assert (tmp_path / "report.md").read_text() == "the study's report"
