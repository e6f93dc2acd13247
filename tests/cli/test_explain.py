"""``qsal explain`` names and explains the class ``qsal predict`` decides for the same image."""

import json

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
        assert main(["explain", str(model), "--n", "8", "--out", str(tmp_path / "x.png"), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["method"] == method and out["predicted"] == decided.tolist()
        assert out["decided_by"].startswith("p(malignant) >= 1e-09 (youden, chosen on the validation split")


def test_a_checkpoint_is_explained_on_its_own_normalisation_as_its_onnx_file_is(tmp_path, capsys):
    """The checkpoint records its training set's mean/std; `--dataset` or not, images must be fed as the deployed
    file feeds them (the dataset table's 0.5/0.5 would shift every input)."""
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
                     "--out", str(tmp_path / "x.png"), "--json"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["predicted"] == outs[1]["predicted"]
    assert all(abs(a - b) < 1e-4 for a, b in zip(outs[0]["probability"], outs[1]["probability"]))
