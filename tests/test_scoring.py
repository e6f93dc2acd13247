"""Findings 3 and 4: `qsal evaluate` scores the ONNX artifact, every image of a folder, as valid JSON."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from qsal.cli import main
from qsal.errors import QsalError
from qsal.data import load_split
from qsal.pipeline import evaluate_onnx


def test_evaluate_onnx_scores_the_artifact(breast_run, tmp_path, capsys):
    run, onnx_path = breast_run
    assert main(["evaluate", str(onnx_path), "--out", str(tmp_path / "m.json"),
                 "--reliability", str(tmp_path / "rel.png")]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    direct = evaluate_onnx(onnx_path, load_split("breastmnist", "test")).to_dict()
    assert result["artifact"] is True and result["n"] == 156 and result["model"] == str(onnx_path)
    assert result["auc"] == pytest.approx(direct["auc"]) and result["sensitivity_at_op"] == direct["sensitivity_at_op"]
    assert result["positive_class"] == "malignant" and result["operating_point"]["chosen_on"] == "validation"
    assert (tmp_path / "rel.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["evaluate", str(run / "best.safetensors"), "--json"]) == 0
    torch_result = json.loads(capsys.readouterr().out)
    assert torch_result["artifact"] is False and abs(torch_result["auc"] - result["auc"]) < 0.005


def test_evaluate_table_says_what_each_number_is_about(breast_run, capsys):
    """The terminal table (not --json) names what was scored, where each sensitivity was taken, whose scores chose
    the threshold and the confusion matrix's order; the reliability bins are left to --json."""
    run, onnx_path = breast_run
    threshold = json.loads((run / "best.json").read_text())["decision"]["operating_point"]["threshold"]
    capsys.readouterr()
    assert main(["evaluate", str(onnx_path)]) == 0
    rows = dict(line.split("  ", 1) for line in capsys.readouterr().out.splitlines())
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert rows["scored"] == "the ONNX file run by onnxruntime" and rows["positive_class"] == "malignant"
    assert rows["op (operating point)"] == (f"p(malignant) >= {threshold:.6g} (youden, chosen on the validation split "
                                            "with the PyTorch model's scores)")
    assert {"sensitivity @ 0.5", "specificity @ 0.5", "sensitivity @ op", "specificity @ op"} <= set(rows)
    confusion = json.loads(rows["confusion @ 0.5 (true x predicted: malignant | normal, benign)"])  # as acc @ 0.5
    assert sum(map(sum, confusion)) == 156 and sum(confusion[0]) == 42  # row 0: the 42 malignant test images
    assert "reliability" not in rows and "undefined" not in rows


def test_model_card_shows_the_artifacts_metrics(breast_run, tmp_path):
    from qsal.pipeline import export_checkpoint

    run, _ = breast_run
    out = tmp_path / "card_model.onnx"
    export_checkpoint(str(run / "best.safetensors"), out)
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["metrics"]["scored"] == "onnx" and card["metrics"]["test"]["artifact"] is True
    assert card["metrics"]["test"]["auc"] == pytest.approx(evaluate_onnx(out, load_split("breastmnist", "test")).auc)
    md = out.with_suffix(".card.md").read_text()
    assert "the ONNX file run by onnxruntime" in md and "sensitivity (positive: malignant)" in md
    assert "chosen on the validation split with the PyTorch model's scores" in md  # whose scores set the artifact's threshold


def test_a_card_shows_pytorch_metrics_only_when_written_for_these_weights(breast_run, tmp_path):
    """metrics.json records the weights it scored; a card beside other weights (a copied or retrained file) leaves
    those numbers out instead of quoting them as this model's."""
    import shutil

    from qsal.pipeline import export_checkpoint, quantize_checkpoint
    from qsal.quant import PTQConfig
    from qsal.run_folder import file_sha256

    run, _ = breast_run
    record = json.loads((run / "metrics.json").read_text())
    assert record["checkpoint_sha256"] == file_sha256(run / "best.safetensors")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("best.safetensors", "best.json", "metrics.json"):
        shutil.copy(run / name, copy / name)
    export_checkpoint(str(copy / "best.safetensors"), copy / "m.onnx")
    card = json.loads((copy / "m.card.json").read_text())
    assert card["metrics"]["pytorch_test"]["auc"] == pytest.approx(record["test"]["auc"])
    quantize_checkpoint(str(run / "best.safetensors"), PTQConfig(num_calibration=32), tmp_path / "q", progress=False)
    shutil.copy(tmp_path / "q/metrics.json", copy / "metrics.json")  # another model's numbers beside these weights
    export_checkpoint(str(copy / "best.safetensors"), copy / "m.onnx", force=True)
    card = json.loads((copy / "m.card.json").read_text())
    assert card["metrics"]["pytorch_test"] is None and card["metrics"]["scored"] == "onnx"


def test_evaluate_split_all_scores_every_image_of_a_folder_as_valid_json(breast_run, tmp_path):
    """The issue's case: a folder of six images was split 70/10/20, scored on one image, printed NaN and warnings."""
    _, onnx_path = breast_run
    test = load_split("breastmnist", "test")
    root = tmp_path / "folder"
    for name in ("malignant", "normal, benign"):
        (root / name).mkdir(parents=True)
    picks = [int(i) for i in np.where(test.labels == 0)[0][:3]] + [int(i) for i in np.where(test.labels == 1)[0][:3]]
    for i in picks:
        Image.fromarray(test.images[i, :, :, 0]).save(root / test.info.labels[test.labels[i]] / f"{i}.png")
    proc = subprocess.run([sys.executable, "-W", "error::UserWarning", "-m", "qsal.cli", "evaluate", str(onnx_path),
                           "--dataset", f"folder:{root}", "--split", "all", "--other-dataset", "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr
    result = json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert result["n"] == 6 and result["split"] == "all"
    assert "scored on folder:" in result["dataset_mismatch"]
    # folder sub-folders are matched to the model's classes by name: the 6 PNGs score like the same npz images
    from qsal.runtime import Runtime

    probs = Runtime(onnx_path).predict_proba(test.images[picks])
    assert result["sensitivity_at_op"] == pytest.approx(np.mean(probs[:3, 0] >= result["operating_point"]["threshold"]))
    assert result["specificity_at_op"] == pytest.approx(np.mean(probs[3:, 0] < result["operating_point"]["threshold"]))


def test_export_writes_a_card_when_the_models_data_cannot_be_loaded(breast_run, tmp_path, monkeypatch):
    """No data here to score the file: the card falls back to the PyTorch model's metrics and says so."""
    from qsal.pipeline import export_checkpoint

    run, _ = breast_run
    for name in ("best.safetensors", "best.json", "metrics.json"):
        (tmp_path / name).write_bytes((run / name).read_bytes())
    meta = json.loads((tmp_path / "best.json").read_text())
    meta["dataset"]["name"] = "pneumoniamnist"  # not embedded, and no data folder holds it below
    (tmp_path / "best.json").write_text(json.dumps(meta))
    monkeypatch.setenv("QSAL_DATA_DIR", str(tmp_path / "no_data_here"))
    with pytest.raises(QsalError, match="no_data_here \\(--data-dir\\) does not exist"):  # named, so not a typo
        export_checkpoint(str(tmp_path / "best.safetensors"), tmp_path / "m.onnx", data_dir=str(tmp_path / "no_data_here"))
    assert not (tmp_path / "m.onnx").exists()
    (tmp_path / "no_data_here").mkdir()
    export_checkpoint(str(tmp_path / "best.safetensors"), tmp_path / "m.onnx", data_dir=str(tmp_path / "no_data_here"))
    assert "Measured on the PyTorch model (ONNX file not scored)" in (tmp_path / "m.card.md").read_text()


def test_a_card_names_its_parent_kind_sgt_for_sgt_pact(breast_run, tmp_path):
    """SGT+PACT is fine-tuned from a saliency-guided parent: its card must not call that parent FP32."""
    import shutil

    from qsal.export.card_sources import _parent_kind, _parent_meta

    run, _ = breast_run
    assert _parent_kind(_parent_meta(str(run / "best.safetensors"))) == "FP32"
    sgt = tmp_path / "sgt"
    shutil.copytree(run, sgt)
    meta = json.loads((sgt / "best.json").read_text())
    meta["step"] = {"step": "saliency_guided", "k": 0.5, "lambda": 1.0}
    (sgt / "best.json").write_text(json.dumps(meta))
    assert _parent_kind(_parent_meta(str(sgt / "best.safetensors"))) == "SGT"
    gone = tmp_path / "gone" / "best.safetensors"
    assert _parent_kind(_parent_meta(str(gone))) is None  # the card then says "parent"


def test_model_card_compares_with_the_parent_it_names(tmp_path):
    from qsal.export.model_card import write_model_card
    from qsal.metrics import compute_metrics
    from qsal.models import create_model
    from qsal.export import export_onnx

    data = {"name": "breastmnist", "task": "binary-class", "labels": ["malignant", "normal, benign"], "n_channels": 1,
            "image_size": 28, "mean": [0.5], "std": [0.5]}
    path = export_onnx(create_model("small_cnn", 2, 1).eval(), tmp_path / "m.onnx", input_shape=(1, 28, 28),
                       meta={"data": data}, check_untrained=False)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    logits = np.stack([-y * 2.0, y * 2.0], 1) + rng.normal(0, 1.5, (100, 2))
    m = compute_metrics(y, logits, "binary-class", n_bootstrap=0).to_dict()
    card = write_model_card(path, {"dataset": data, "parent_checkpoint": "runs/sgt/best.safetensors"}, None, None,
                            artifact_metrics=m, parent_metrics=m, parent_kind="SGT")
    text = path.with_suffix(".card.md").read_text()
    assert "## Change against the SGT parent" in text and "| metric | this model | SGT parent | change |" in text
    assert "parent (SGT)" in text and "FP32 parent" not in text
    assert card["metrics"]["parent_kind"] == "SGT" and card["metrics"]["parent_test"] == m


def test_a_card_compares_only_with_the_parent_it_was_made_from(breast_run, tmp_path, monkeypatch):
    """A parent retrained in place since (same path, other weights) is another model: its numbers are not the
    change this model made; a relative path typed at quantize time still finds the parent from another folder."""
    import shutil

    from qsal.pipeline import export_checkpoint, quantize_checkpoint
    from qsal.quant import PTQConfig

    run, _ = breast_run
    parent = tmp_path / "fp"
    shutil.copytree(run, parent)
    monkeypatch.chdir(tmp_path)
    quantize_checkpoint("fp/best.safetensors", PTQConfig(), "q", progress=False)  # a relative path, as typed
    assert json.loads((tmp_path / "q/best.json").read_text())["parent_checkpoint"] == str(parent / "best.safetensors")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    export_checkpoint(str(tmp_path / "q/best.safetensors"), tmp_path / "q/m1.onnx")
    text = (tmp_path / "q/m1.card.md").read_text()
    assert "## Change against the FP32 parent" in text and "each model decides at its own operating point" in text
    assert "minus its FP32 parent (its ONNX file)" in text  # the parent's model.onnx, exported from its weights
    # how the parent was trained (this model's own seed only drew its calibration images)
    best = json.loads((parent / "best.json").read_text())["epoch"]
    assert "| parent (FP32) | fp/best.safetensors (sha256 " in text and f"; seed 0; 2 epochs, best at epoch {best}) |" in text
    shutil.copy(tmp_path / "q/m1.onnx", parent / "model.onnx")  # another model's file in the parent's folder
    export_checkpoint(str(tmp_path / "q/best.safetensors"), tmp_path / "q/m1b.onnx")
    assert "minus its FP32 parent (its PyTorch model)" in (tmp_path / "q/m1b.card.md").read_text()
    # The parent retrained in place (here: its weights replaced by other ones of the same network).
    weights = parent / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + bytes(4))
    export_checkpoint(str(tmp_path / "q/best.safetensors"), tmp_path / "q/m2.onnx")
    text = (tmp_path / "q/m2.card.md").read_text()
    assert "## Change against" not in text
    assert "parent (FP32, replaced since this model was made from it: not compared)" in text
    weights.unlink()  # a copy without the parent's weights still exports, and says why nothing is compared
    export_checkpoint(str(tmp_path / "q/best.safetensors"), tmp_path / "q/m3.onnx")
    assert "parent (FP32, its weights are gone: not compared)" in (tmp_path / "q/m3.card.md").read_text()


def test_quantize_refuses_to_write_over_its_parent_or_among_a_users_files(breast_run, tmp_path, capsys):
    import shutil

    run, _ = breast_run
    parent = tmp_path / "fp"
    shutil.copytree(run, parent)
    before = (parent / "best.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["quantize", str(parent / "best.safetensors"), "--out", str(parent), "--force", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the folder of the checkpoint it quantizes" in err
    assert (parent / "best.safetensors").read_bytes() == before
    images = tmp_path / "images"
    images.mkdir()
    (images / "scan.png").write_bytes(b"")
    assert main(["quantize", str(parent / "best.safetensors"), "--out", str(images), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty and holds no qsal run; choose a new or empty --out" in err
    assert sorted(p.name for p in images.iterdir()) == ["scan.png"]


def test_a_card_lists_a_skipped_layer_as_float_not_at_the_configs_bits(breast_run, tmp_path, monkeypatch):
    import qsal.runtime
    from qsal.export.card_storage import kernels_scored
    from qsal.pipeline import export_checkpoint, quantize_checkpoint
    from qsal.quant import PTQConfig
    from qsal.scoring import evaluate_model

    run, _ = breast_run
    quantize_checkpoint(str(run / "best.safetensors"), PTQConfig(skip=("conv1",), num_calibration=64), tmp_path / "q",
                        progress=False)
    # scored where the fast integer kernels saturate (x86 without VNNI), on the exact ones: the card says so
    monkeypatch.setattr(qsal.runtime, "integer_kernels_saturate", lambda: True)
    monkeypatch.delenv("QSAL_INTEGER_KERNELS", raising=False)
    exported = export_checkpoint(str(tmp_path / "q/best.safetensors"), tmp_path / "q/m.onnx")
    assert exported["u8u8_kernels"] == qsal.runtime.SATURATION_NOTE  # export says which kernels will run it here
    text = (tmp_path / "q/m.card.md").read_text()
    assert "| conv1 | 32 | FP32 |" in text and "| conv2 | 8 | INT8 |" in text
    assert "QDQ with integer weights" in text
    card = json.loads((tmp_path / "q/m.card.json").read_text())
    assert card["layers"]["conv1"] == {"storage": "FP32", "bits": 32}
    # where the file's 8-bit sums saturate (x86 without VNNI) the card says which kernels it runs there, and why
    assert "On x86 CPUs without VNNI (AVX2 only) its 8-bit sums (up to 64770) would saturate" in text
    assert "--weight-bits 7" in text
    # whose scores chose the quantized model's threshold: its fake-quantized forward, not the FP32 parent's
    assert "chosen on the validation split with the fake-quantized PyTorch model's scores" in text
    assert "Scored on a CPU without VNNI, on onnxruntime's exact u8 x u8 integer kernels" in text
    assert card["metrics"]["test"]["u8u8_kernels"] == qsal.runtime.SATURATION_NOTE
    assert evaluate_model(tmp_path / "q/m.onnx", n_bootstrap=0)["u8u8_kernels"] == qsal.runtime.SATURATION_NOTE
    monkeypatch.setenv("QSAL_INTEGER_KERNELS", "1")  # the fast kernels by the user's choice: scores that can differ
    forced = evaluate_model(tmp_path / "q/m.onnx", n_bootstrap=0)
    assert forced["saturating_kernels"] == qsal.runtime.OVERRIDE_NOTE and "u8u8_kernels" not in forced
    assert "these numbers can differ from the same file's on a CPU with VNNI" in kernels_scored(forced)
    monkeypatch.setattr(qsal.runtime, "integer_kernels_saturate", lambda: False)  # a CPU with VNNI: nothing to say
    assert kernels_scored(evaluate_model(tmp_path / "q/m.onnx", n_bootstrap=0)) == ""


def test_evaluate_says_what_its_numbers_are_about(breast_run, tmp_path, capsys, shared_data, monkeypatch):
    from qsal.scoring import evaluate_model

    monkeypatch.setenv("QSAL_DATA_DIR", str(shared_data))  # PneumoniaMNIST: skipped without the shared data

    _, onnx_path = breast_run
    # Another dataset: the same class ids mean other classes there, and the output names both.
    r = evaluate_model(onnx_path, dataset="pneumoniamnist", other_dataset=True, n_bootstrap=0)
    assert r["positive_class"] == "malignant (label 0; 'normal' in pneumoniamnist)"
    assert list(r["per_class_recall"]) == ["normal", "pneumonia"]
    assert "0 is 'malignant' to the model, 'normal' in pneumoniamnist" in r["dataset_mismatch"]
    # the threshold came from the model's own set: "the validation split" beside PneumoniaMNIST's scores read as its
    from qsal.metrics.operating_point import describe_operating_point

    assert r["operating_point"]["dataset"] == "breastmnist"
    assert "chosen on the validation split of breastmnist" in describe_operating_point(r["operating_point"], "x")
    run, _ = breast_run
    r = evaluate_model(run / "best.safetensors", dataset="pneumoniamnist", other_dataset=True, split="train",
                       n_bootstrap=0)
    assert r["positive_class"] == "malignant (label 0; 'normal' in pneumoniamnist)"  # the checkpoint's path too
    assert "in_sample" not in r  # another dataset's training images were not this model's
    # Splits that chose the model or its threshold, or trained it, are flagged as in-sample; test is not.
    assert "in_sample" not in evaluate_model(onnx_path, n_bootstrap=0)
    import qsal.runtime  # an FP32 file has no integer kernels to turn off, on any CPU

    monkeypatch.setattr(qsal.runtime, "integer_kernels_saturate", lambda: True)
    assert "u8u8_kernels" not in evaluate_model(onnx_path, n_bootstrap=0)
    monkeypatch.undo()
    monkeypatch.setenv("QSAL_DATA_DIR", str(shared_data))
    assert "chose this model's operating point (and, where it trained, its best epoch)" in evaluate_model(onnx_path, split="val",
                                                                               n_bootstrap=0)["in_sample"]
    # Numbers decided at 0.5, not at the operating point, say so in the table.
    capsys.readouterr()
    assert main(["evaluate", str(onnx_path)]) == 0
    table = capsys.readouterr().out
    assert "balanced_accuracy @ 0.5" in table and "per_class_recall @ 0.5.malignant" in table
    # Outputs are checked before the work, and a failure leaves no half of the result behind.
    assert main(["evaluate", str(onnx_path), "--reliability", str(tmp_path / "r.jpg")]) == 2
    assert "the diagram is a PNG figure; name the file .png" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert main(["evaluate", str(onnx_path), "--reliability", str(tmp_path / "r.png"),
                 "--out", str(tmp_path / "a_file" / "m.json")]) == 2
    assert "a_file is a file, not a folder" in capsys.readouterr().err and not (tmp_path / "r.png").exists()
    # each refusal names the option it is about
    (tmp_path / "r.png").write_bytes(b"")
    assert main(["evaluate", str(onnx_path), "--reliability", str(tmp_path / "r.png")]) == 2
    assert "r.png already exists; pass --force to overwrite it or choose another --reliability" in capsys.readouterr().err
    assert main(["evaluate", str(onnx_path), "--reliability", str(onnx_path), "--force"]) == 2
    assert f"--reliability {onnx_path} is the model this command reads" in capsys.readouterr().err


def test_export_keeps_a_card_it_did_not_write_and_bench_takes_a_dash_name(breast_run, tmp_path, monkeypatch, capsys):
    run, onnx_path = breast_run
    (tmp_path / "notes.card.md").write_text("my notes")
    assert main(["export", str(run / "best.safetensors"), "--out", str(tmp_path / "notes.onnx")]) == 2
    assert "notes.card.md already exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "notes.card.md").read_text() == "my notes" and not (tmp_path / "notes.onnx").exists()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-m.onnx").write_bytes(onnx_path.read_bytes())
    assert main(["bench", "--threads", "1", "--seconds", "0.05", "--", "-m.onnx"]) == 0


def test_a_folder_model_is_scored_and_quantized_on_its_own_split(breast_folder, tmp_path):
    """A folder is split 70/10/20 by the training seed: evaluate and quantize (whatever their --seed) must use that
    split, or images the model trained on are scored as test images. --seed draws the calibration images."""
    import torch

    from qsal.checkpoint import load_checkpoint
    from qsal.pipeline import quantize_checkpoint, train_model
    from qsal.quant import PTQConfig
    from qsal.scoring import evaluate_model
    from qsal.train import TrainConfig

    root = breast_folder(60)
    run = tmp_path / "run"
    train_model(f"folder:{root}", "small_cnn", TrainConfig(epochs=1, seed=1, progress=False, precision="fp32"), run)
    trained = json.loads((run / "metrics.json").read_text())["test"]
    assert json.loads((run / "best.json").read_text())["dataset"]["split_seed"] == 1
    scored = evaluate_model(run / "best.safetensors")
    assert scored["auc"] == pytest.approx(trained["auc"])
    assert scored["ci"]["auc"] == pytest.approx(trained["ci"]["auc"])  # the bootstrap drawn with the run's seed too
    scales = []
    for seed in (0, 3):
        q = tmp_path / f"q{seed}"
        quantize_checkpoint(str(run / "best.safetensors"), PTQConfig(num_calibration=16), q, seed=seed, progress=False)
        assert json.loads((q / "best.json").read_text())["dataset"]["split_seed"] == 1
        model, _ = load_checkpoint(q / "best.safetensors")
        scales.append(torch.cat([v.ravel() for k, v in model.state_dict().items() if "act_quant" in k and "scale" in k]))
    assert not torch.equal(*scales)  # another seed, other calibration images, other activation ranges
    # the default (512) is an upper bound: its 84 training images calibrate it, and the record says 84; the same 512
    # asked for on the command line is a number the user expects used, so it is refused like any other
    q = tmp_path / "default"
    quantize_checkpoint(str(run / "best.safetensors"), PTQConfig(), q, progress=False)
    assert json.loads((q / "best.json").read_text())["calibration_images"] == 84
    with pytest.raises(QsalError, match="num_calibration 512 is more than the 84 training images"):
        quantize_checkpoint(str(run / "best.safetensors"), PTQConfig(), tmp_path / "asked", progress=False,
                            num_calibration_given=True)
    assert not (tmp_path / "asked").exists()
    assert main(["quantize", str(run / "best.safetensors"), "--num-calibration", "512", "--out",
                 str(tmp_path / "cli")]) == 2
    assert not (tmp_path / "cli").exists()

    # --split-seed: another seed's weights on seed 1's split; evaluate scores it on that split, not on seed 2's
    fixed = tmp_path / "fixed"
    assert main(["train", "--dataset", f"folder:{root}", "--epochs", "1", "--seed", "2", "--split-seed", "1",
                 "--precision", "fp32", "--no-progress", "--out", str(fixed)]) == 0
    meta = json.loads((fixed / "best.json").read_text())
    assert (meta["dataset"]["split_seed"], meta["seed"]) == (1, 2)
    assert meta["dataset"]["listing_sha256"] == json.loads((run / "best.json").read_text())["dataset"]["listing_sha256"]
    assert json.loads((fixed / "run.json").read_text())["config"]["split_seed"] == 1
    assert evaluate_model(fixed / "best.safetensors")["n"] == trained["n"]
    # a split seed equal to --seed draws the split a run without one draws: the same run, resumable as such
    same = tmp_path / "same"
    assert main(["train", "--dataset", f"folder:{root}", "--epochs", "1", "--seed", "1", "--split-seed", "1",
                 "--precision", "fp32", "--no-progress", "--out", str(same)]) == 0
    assert "split_seed" not in json.loads((same / "run.json").read_text())["config"]


def test_a_folder_model_records_its_folder_whole_and_refuses_it_changed(breast_folder, tmp_path, monkeypatch, capsys):
    """A model trained on ``folder:scans`` (relative) read another ``scans/`` when scored from another folder, and a
    folder grown since training redrew the split, so images the model trained on were scored as test images."""
    import shutil

    from qsal.pipeline import train_model
    from qsal.scoring import evaluate_model
    from qsal.train import TrainConfig

    root = breast_folder(40)
    monkeypatch.chdir(root.parent)
    run = tmp_path / "run"
    train_model(f"folder:{root.name}", "small_cnn", TrainConfig(epochs=1, progress=False, precision="fp32"), run)
    recorded = json.loads((run / "best.json").read_text())["dataset"]
    assert recorded["name"] == f"folder:{root}" and len(recorded["listing_sha256"]) == 64
    # a folder has no table naming its positive class: which one sensitivity is about is said
    assert "note: positive class 'normal, benign' (the second of the class folders" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / root.name / "a").mkdir(parents=True)  # another folder of the same name: not the model's data
    monkeypatch.chdir(elsewhere)
    scored = evaluate_model(run / "best.safetensors")
    assert scored["dataset"] == f"folder:{root}" and scored["n"] == 16
    # the same folder spelled otherwise is the model's own data (no --other-dataset, no mismatch)
    assert "dataset_mismatch" not in evaluate_model(run / "best.safetensors", dataset=f"folder:{root}/./")
    # two images more per class: the split is drawn anew, so the model's own folder is refused by every reader
    for c, name in enumerate(sorted(p.name for p in root.iterdir())):
        src = sorted((root / name).iterdir())[0]
        for k in range(2):
            shutil.copy(src, root / name / f"added{k}.png")
    with pytest.raises(QsalError, match="holds other images than when .* was trained on it"):
        evaluate_model(run / "best.safetensors")
    assert main(["quantize", str(run / "best.safetensors"), "--out", str(tmp_path / "q")]) == 2
    assert main(["explain", str(run / "best.safetensors"), "--n", "2", "--out", str(tmp_path / "e.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("holds other images than when") == 2 and not (tmp_path / "q").exists()
    assert evaluate_model(run / "best.safetensors", split="all")["n"] == 84  # every file, whatever the split


def test_a_folder_model_fit_wrote_by_itself_records_its_split_and_refuses_it_changed(breast_folder, tmp_path):
    """fit() recorded a folder's name and counts but not its split digest nor the seed that drew it: a folder grown
    since was scored as the model's own (training images counted as test images), on split seed 0 whatever drew it."""
    import shutil

    from qsal import create_model, fit
    from qsal.scoring import evaluate_model
    from qsal.train import TrainConfig

    root = breast_folder(40)
    train, val, test = (load_split(f"folder:{root}", s, seed=3) for s in ("train", "val", "test"))
    assert train.split_seed == 3 and train.subset(5).listing_sha256 == train.listing_sha256
    assert train.with_channels(3).split_seed == 3 and load_split("breastmnist", "test").split_seed is None
    fit(create_model("small_cnn", 2, 1), train, val, TrainConfig(epochs=1, progress=False, precision="fp32"),
        tmp_path / "run")
    data = json.loads((tmp_path / "run" / "best.json").read_text())["data"]
    assert data["split_seed"] == 3 and data["listing_sha256"] == train.listing_sha256
    scored = evaluate_model(tmp_path / "run" / "best.safetensors", n_bootstrap=0)
    assert scored["split_seed"] == 3 and scored["n"] == len(test)  # the draw that trained it, not seed 0's
    for name in sorted(p.name for p in root.iterdir()):
        shutil.copy(sorted((root / name).iterdir())[0], root / name / "added.png")
    with pytest.raises(QsalError, match="holds other images than when .* was trained on it"):
        evaluate_model(tmp_path / "run" / "best.safetensors")
