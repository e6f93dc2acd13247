"""``qsal explain`` names and explains the class ``qsal predict`` decides for the same image."""

import json

import numpy as np
import pytest

from qsal.cli import main
from qsal.data import load_split
from qsal.runtime import Runtime, decide


def test_explain_decides_each_image_as_predict_does_at_the_stored_operating_point(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(run), "--no-progress", "--precision", "fp32",
                 "--temperature-scaling"]) == 0
    # An operating point far from 0.5 (as a sensitivity target sets one): every image is called malignant (label 0),
    # where the argmax calls most of BreastMNIST's benign images benign. The decision lives in the checkpoint's JSON.
    meta = json.loads((run / "best.json").read_text())
    meta["decision"]["operating_point"] = {**meta["decision"]["operating_point"], "threshold": 1e-9}
    (run / "best.json").write_text(json.dumps(meta))
    assert main(["export", str(run / "best.safetensors"), "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    images = load_split("breastmnist", "test", None).subset(8, 0).images
    deployed = Runtime(tmp_path / "m.onnx")
    decided = decide(deployed.predict_proba(images), deployed.task, deployed.decision)
    assert (decided == 0).all() and (deployed.predict_proba(images).argmax(axis=1) == 1).any()
    for model, method in ((run / "best.safetensors", "integrated_gradients"), (tmp_path / "m.onnx", "occlusion")):
        # no --method: the one each kind of file can use (ONNX has no gradients)
        assert main(["explain", str(model), "--n", "8", "--out", str(tmp_path / "x.png"), "--json", "--force"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["method"] == method and out["predicted"] == decided.tolist()
        assert out["decided_by"].startswith("p(malignant) >= 1e-09 (youden, chosen on the validation split")


def test_a_checkpoint_is_explained_on_its_own_normalisation_as_its_onnx_file_is(tmp_path, capsys, shared_data,
                                                                               monkeypatch):
    """The checkpoint records its training set's mean/std; `--dataset` or not, images must be fed as the deployed
    file feeds them (the dataset table's 0.5/0.5 would shift every input). PneumoniaMNIST: skipped without the data."""
    monkeypatch.setenv("QSAL_DATA_DIR", str(shared_data))
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(run), "--no-progress", "--precision", "fp32"]) == 0
    meta = json.loads((run / "best.json").read_text())
    meta["dataset"].update(mean=[0.3], std=[0.2])  # as if trained on a set with these statistics
    (run / "best.json").write_text(json.dumps(meta))
    assert main(["export", str(run / "best.safetensors"), "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    outs = []
    for model in (run / "best.safetensors", tmp_path / "m.onnx"):
        assert main(["explain", str(model), "--method", "occlusion", "--dataset", "pneumoniamnist", "--n", "4",
                     "--out", str(tmp_path / "x.png"), "--json", "--force"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["predicted"] == outs[1]["predicted"]
    # which file made the maps, by content, and which kind: nothing said so (the ONNX column was headed "/m")
    from qsal.run_folder import file_sha256

    assert outs[1]["model"] == str(tmp_path / "m.onnx") and outs[1]["model_sha256"] == file_sha256(tmp_path / "m.onnx")
    assert outs[0]["model_sha256"] == file_sha256(run / "best.safetensors")
    assert outs[0]["explained"] == "PyTorch checkpoint: maps of each image's predicted class"
    assert outs[1]["explained"].startswith("ONNX file, onnxruntime") and outs[0]["empty_maps"] == []
    assert all(abs(a - b) < 1e-4 for a, b in zip(outs[0]["probability_of_predicted"], outs[1]["probability_of_predicted"]))
    # each row traced to its image: its position in the split named, and its class by name
    from qsal.data import load_split

    test = load_split("pneumoniamnist", "test")
    assert outs[0]["dataset"] == "pneumoniamnist" and outs[0]["split"] == "test" and outs[0]["indices"] == \
        test.subset_indices(4, 0).tolist() == outs[1]["indices"]
    assert outs[0]["predicted_class"] == [["malignant", "normal, benign"][p] for p in outs[0]["predicted"]]
    # more images asked for than the split holds: all of them, said
    assert main(["explain", str(tmp_path / "m.onnx"), "--split", "val", "--n", "200", "--out", str(tmp_path / "v.png"),
                 "--json"]) == 0
    assert "note: --n 200: the val split of breastmnist holds 78 images; all of them are explained" in \
        capsys.readouterr().err
    # a second run onto the same PNG needs --force, as every other --out does
    assert main(["explain", str(run / "best.safetensors"), "--n", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "x.png already exists; pass --force" in capsys.readouterr().err


def _checkpoint(path, dataset: dict):
    from qsal.checkpoint import save_checkpoint
    from qsal.models import create_model

    arch = {"name": "small_cnn", "num_classes": 2, "in_channels": 1, "image_size": 28}
    return save_checkpoint(create_model("small_cnn", 2, 1), path, {"arch": arch, "dataset": dataset})


def test_integrated_gradients_and_occlusion_start_from_black_in_the_models_own_units(tmp_path, capsys, monkeypatch):
    """Black is (0 - mean) / std in the model's normalised units; the API's default 0.0 would be its mean grey."""
    import qsal.saliency
    import qsal.saliency.onnx_occlusion

    ckpt = _checkpoint(tmp_path / "m.safetensors", {"name": "breastmnist", "task": "binary-class", "mean": [0.3],
                                                    "std": [0.2], "labels": ["malignant", "benign"]})
    assert main(["export", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 0
    seen = []
    for module, name in ((qsal.saliency, "explain"), (qsal.saliency.onnx_occlusion, "occlusion_numpy")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, **kw: seen.append(kw["baseline"]) or _real(*a, **kw))
    for model in (ckpt, tmp_path / "m.onnx"):
        assert main(["explain", str(model), "--n", "2", "--out", str(tmp_path / "x.png"), "--force"]) == 0
    assert [float(np.ravel(b)[0]) for b in seen] == [pytest.approx(-1.5)] * 2
    capsys.readouterr()  # the result names occlusion's patch (it scales with the image: 4 px at 28 px)
    assert main(["explain", str(tmp_path / "m.onnx"), "--n", "2", "--out", str(tmp_path / "x.png"), "--force",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["occlusion_patch_px"] == {"window": 4, "stride": 2}


def test_a_checkpoint_without_its_normalisation_is_refused_as_its_onnx_file_is(tmp_path, capsys):
    """Raw 0-1 pixels into a model trained on normalised ones give confident wrong answers: predict and explain
    refuse the checkpoint, as they refuse the file exported from it, with the fix."""
    from PIL import Image

    ckpt = _checkpoint(tmp_path / "m.safetensors", {"name": "breastmnist", "task": "binary-class"})
    Image.fromarray(np.add.outer(np.arange(28), np.arange(28)).astype(np.uint8)).save(tmp_path / "a.png")
    assert main(["export", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    for model in (ckpt, tmp_path / "m.onnx"):
        for args in (["predict", str(model), str(tmp_path / "a.png")],
                     ["explain", str(model), "--n", "2", "--out", str(tmp_path / "y.png")]):
            assert main(args) == 2
            err = capsys.readouterr().err
            assert "records no input normalisation" in err and "mean" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "y.png").exists()


def test_a_folder_model_is_explained_on_its_own_test_part_and_names_the_files(breast_folder, tmp_path, capsys):
    """explain drew a folder's split with seed 0 whatever the model's training seed: with --seed 3 its "test" images
    included ones the model trained on, and the result named them only by position."""
    from qsal.data.folder import folder_split_files

    root = breast_folder(15)
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"folder:{root}", "--epochs", "1", "--seed", "3", "--out", str(run),
                 "--no-progress", "-q"]) == 0
    assert main(["export", str(run / "best.safetensors"), "-q"]) == 0
    test_files = [f for f, _ in folder_split_files(root, seed=3)["test"]]
    train_files = {f for f, _ in folder_split_files(root, seed=3)["train"]}
    capsys.readouterr()
    for model in (run / "best.safetensors", run / "model.onnx"):
        assert main(["explain", str(model), "--n", "4", "--out", str(tmp_path / "x.png"), "--json", "--force"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["files"] == [test_files[i] for i in out["indices"]] and not set(out["files"]) & train_files


def test_an_onnx_model_of_a_folder_at_another_size_is_explained_at_its_size(breast_folder, tmp_path):
    """explain of an ONNX file loaded a folder at 28 px whatever the file takes: a 56 px model was refused
    ('images are 28 px ... but model.onnx takes 56 px')."""
    from qsal.pipeline import export_checkpoint, train_model
    from qsal.train import TrainConfig

    root = breast_folder(20)
    run = tmp_path / "run"
    train_model(f"folder:{root}", "small_cnn", TrainConfig(epochs=1, progress=False, precision="fp32"), run, size=56)
    onnx = export_checkpoint(str(run / "best.safetensors"), tmp_path / "m.onnx", card=False)["onnx"]
    assert main(["explain", onnx, "--n", "2", "--out", str(tmp_path / "e.png")]) == 0
    assert (tmp_path / "e.png").is_file()


def test_another_datasets_folder_is_split_as_evaluate_reads_it_not_by_the_models_seed(tmp_path, breast_folder, capsys):
    """explain --dataset of another set drew its split with the model's training seed, where evaluate --other-dataset
    draws seed 0: the two commands showed different 'test' images of one folder."""
    from qsal.data.folder import folder_split_files

    run, root = tmp_path / "run", breast_folder(20)
    assert main(["train", "--epochs", "1", "--seed", "3", "--out", str(run), "--no-progress", "--precision", "fp32"]) == 0
    capsys.readouterr()
    assert main(["explain", str(run / "best.safetensors"), "--dataset", f"folder:{root}", "--n", "4",
                 "--out", str(tmp_path / "x.png"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    drawn = folder_split_files(root, seed=0)["test"]
    assert out["files"] == [drawn[i][0] for i in out["indices"]]
    assert out["files"] != [folder_split_files(root, seed=3)["test"][i][0] for i in out["indices"]]


def test_a_users_own_image_files_are_explained_as_predict_decides_them(breast_run, tmp_path, capsys):
    """Only a dataset's split could be explained: a clinic's own scan could be scored (qsal predict) but not shown."""
    from PIL import Image

    from qsal.data import load_split

    run, _ = breast_run
    test = load_split("breastmnist", "test")
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(3):
        Image.fromarray(test.images[i, :, :, 0]).resize((56, 56)).save(scans / f"scan{i}.png")
    for model in (run / "best.safetensors", run / "model.onnx"):
        if not model.is_file():
            assert main(["export", str(run / "best.safetensors"), "--out", str(model)]) == 0
        capsys.readouterr()
        assert main(["explain", str(model), "--images", str(scans), "--out", str(tmp_path / "s.png"), "--json",
                     "--force"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["files"] == [str(scans / f"scan{i}.png") for i in range(3)] and out["images"] == 3
        assert "dataset" not in out and "indices" not in out
        assert main(["predict", str(model), str(scans), "--json"]) == 0  # the class predict decides for each file
        predicted = json.loads(capsys.readouterr().out)["predictions"]
        assert out["predicted_class"] == [p["predicted_class"] for p in predicted]
    assert main(["explain", str(run / "best.safetensors"), "--images", str(scans), "--dataset", "pneumoniamnist",
                 "--out", str(tmp_path / "t.png")]) == 2
    assert "--images explains your image files; --dataset picks a dataset's split" in capsys.readouterr().err


def test_an_unreadable_image_stops_explain_unless_skipped_as_predict_does(breast_run, tmp_path, capsys):
    """explain --images had no --skip-unreadable: one broken file among a clinic's scans stopped the figure."""
    from PIL import Image

    from qsal.data import load_split

    run, _ = breast_run
    test = load_split("breastmnist", "test")
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(2):
        Image.fromarray(test.images[i, :, :, 0]).save(scans / f"scan{i}.png")
    (scans / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out_png = tmp_path / "s.png"
    args = ["explain", str(run / "best.safetensors"), "--images", str(scans), "--out", str(out_png), "--json"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "--skip-unreadable" in err and not out_png.exists()
    assert main(args + ["--skip-unreadable"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["files"] == [str(scans / f"scan{i}.png") for i in range(2)] and out["images"] == 2
    assert [s["file"] for s in out["skipped"]] == [str(scans / "broken.png")] and out_png.is_file()
    assert "note: skipped" in captured.err and "broken.png" in captured.err
    (scans / "scan0.png").unlink()
    (scans / "scan1.png").unlink()
    assert main(args + ["--skip-unreadable", "--force"]) == 2
    assert "none of the 1 images could be used" in capsys.readouterr().err
    assert main(["explain", str(run / "best.safetensors"), "--skip-unreadable", "--out", str(tmp_path / "t.png")]) == 2
    assert "--skip-unreadable is about image files that cannot be read: it goes with --images" in capsys.readouterr().err
