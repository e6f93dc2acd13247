"""Finding 3: `qsal predict` runs a deployed model on arbitrary image files at its stored operating point."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from qsal.cli import main
from qsal.data import load_split
from qsal.errors import QsalError

RAMP = np.add.outer(np.arange(28), np.arange(28)).astype(np.uint8)  # a picture of something: not one value throughout

@pytest.fixture
def image_folder(tmp_path):
    """Four real BreastMNIST test images written as PNG/JPEG of other sizes and modes, in nested folders."""
    test = load_split("breastmnist", "test")
    root = tmp_path / "scans"
    (root / "more").mkdir(parents=True)
    px = test.images[:4, :, :, 0]
    Image.fromarray(px[0]).save(root / "a.png")                                  # the training size, gray
    Image.fromarray(px[1]).resize((112, 112), Image.BILINEAR).save(root / "b.png")  # larger
    Image.fromarray(np.repeat(px[2][..., None], 3, -1)).save(root / "more" / "c.png")  # RGB
    Image.fromarray(px[3]).save(root / "more" / "d.jpg", quality=95)
    (root / "notes.txt").write_text("not an image")
    return root, px


def test_predict_folder_to_csv_at_the_stored_operating_point(breast_run, image_folder, tmp_path, capsys):
    run, onnx_path = breast_run
    root, px = image_folder
    assert main(["predict", str(onnx_path), str(root), "--threads", "0"]) == 0  # 0: all cores, as in qsal bench
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "b.png", "c.png", "d.jpg"]
    assert set(rows[0]) == {"file", "p(malignant)", "p(normal, benign)", "predicted_class", "predicted_label", "decided_by"}
    meta = json.loads((run / "best.json").read_text())["decision"]
    threshold = meta["operating_point"]["threshold"]
    rule = meta["operating_point"]["rule"]
    assert {r["decided_by"] for r in rows} == {f"p(malignant) >= {threshold:.6g} ({rule}, chosen on the validation split "
                                               "with the PyTorch model's scores)"}
    for r in rows:
        p_malignant = float(r["p(malignant)"])
        assert abs(p_malignant + float(r["p(normal, benign)"]) - 1) < 1e-5
        expected = "malignant" if p_malignant >= threshold else "normal, benign"
        assert r["predicted_class"] == expected and int(r["predicted_label"]) == (0 if expected == "malignant" else 1)

    from qsal.runtime import Runtime

    rt = Runtime(onnx_path)
    same = rt.predict_proba(px[:1])[0]  # the 28 px PNG is the test image itself
    assert np.allclose([float(rows[0]["p(malignant)"]), float(rows[0]["p(normal, benign)"])], same, atol=1e-6)
    assert rt.predict_file(root / "more" / "c.png")["probabilities"]["malignant"] == pytest.approx(
        rt.predict_image(px[2])["probabilities"]["malignant"], abs=1e-6)  # RGB converted to gray like training

    # the checkpoint gives the same answers through PyTorch, and JSON output carries the decision
    out = tmp_path / "pred.json"
    assert main(["predict", str(run / "best.safetensors"), str(root / "*.png"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["decision"]["positive_class"] == "malignant" and len(result["predictions"]) == 2
    assert result["predictions"][0]["probabilities"]["malignant"] == pytest.approx(float(rows[0]["p(malignant)"]), abs=1e-5)


def test_predict_onnx_never_imports_torch(breast_run, image_folder):
    _, onnx_path = breast_run
    root, _ = image_folder
    code = ("import sys; from qsal.predict import predict_paths; "
            f"r = predict_paths({str(onnx_path)!r}, [{str(root)!r}]); "
            "assert len(r['predictions']) == 4; heavy = [m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_predict_bad_paths_are_one_line_errors(breast_run, tmp_path, capsys):
    _, onnx_path = breast_run
    assert main(["predict", str(onnx_path), str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(onnx_path), str(tmp_path / "empty")]) == 2
    assert "no PNG/JPEG/BMP/TIFF/DICOM images found in" in capsys.readouterr().err
    assert main(["predict", str(onnx_path), str(tmp_path / "empty" / "*.jpg")]) == 2
    assert "no file matches" in (err := capsys.readouterr().err) and "name the folder" in err
    Image.fromarray(RAMP).save(tmp_path / "empty" / "x.png")
    assert main(["predict", str(onnx_path), str(tmp_path / "empty"), "--json"]) == 0
    assert capsys.readouterr().out.endswith("}\n")  # the prompt after it starts a line of its own


def test_runtime_applies_the_stored_temperature_and_threshold(tmp_path):
    """The decision in the ONNX metadata (temperature fitted on validation, operating point) is what predict uses."""
    from qsal.export import export_onnx
    from qsal.metrics import scores_from_logits
    from qsal.models import create_model
    from qsal.pipeline import data_meta
    from qsal.runtime import Runtime

    test = load_split("breastmnist", "test")
    decision = {"positive_label": 0, "positive_class": "malignant", "temperature": 2.5, "temperature_scaling": True,
                "operating_point": {"rule": "0.3", "threshold": 0.3, "chosen_on": "validation"}}
    path = export_onnx(create_model("small_cnn", 2, 1), tmp_path / "t.onnx", input_shape=(1, 28, 28),
                       meta={"data": data_meta(test), "decision": decision}, check_untrained=False)
    rt = Runtime(path)
    logits = rt.predict_logits(test.images[:16])
    probs = rt.predict_proba(test.images[:16])
    assert np.allclose(probs, scores_from_logits(logits, "binary-class", temperature=2.5), atol=1e-6)
    labels = [rt.predict_image(img)["predicted_label"] for img in test.images[:16, :, :, 0]]
    assert labels == [0 if p >= 0.3 else 1 for p in probs[:, 0]]
    from qsal.scoring import score_onnx

    # a report's confusion matrix and captions decide on the probabilities the file outputs, at its temperature
    assert np.allclose(score_onnx(path, test, n_bootstrap=10)[1], rt.predict_proba(test.images), atol=1e-6)
    # An array gets the limit an image file gets: 7 px to 28 is 4x, 6 px more (the detail would be invented).
    assert set(rt.predict_image(np.zeros((7, 40), np.uint8))["probabilities"]) == {"malignant", "normal, benign"}
    with pytest.raises(QsalError, match="an image of 40x6 px resized to 28 px would be upscaled more than 4x"):
        rt.predict_image(np.zeros((6, 40), np.uint8))


def test_hidden_files_in_a_folder_are_not_images_of_it(tmp_path):
    # macOS copies leave ._name.png resource forks beside each image: one unreadable fork aborted the whole folder
    from qsal.predict import image_files

    Image.fromarray(RAMP).save(tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 not a picture")
    (tmp_path / ".cache").mkdir()
    Image.fromarray(RAMP).save(tmp_path / ".cache" / "b.png")
    assert image_files([tmp_path]) == [tmp_path / "a.png"]
    assert image_files([tmp_path / "._a.png"]) == [tmp_path / "._a.png"]  # named on purpose: read (and refused)


def test_a_picture_is_read_upright_as_its_exif_orientation_says(tmp_path):
    from qsal.data.folder import read_image

    upright = np.zeros((28, 28), np.uint8)
    upright[:4, :] = 255  # a bright top edge
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a sideways camera wrote it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    stored.save(tmp_path / "sideways.png", exif=exif)
    np.testing.assert_array_equal(read_image(tmp_path / "sideways.png", 1, 28), upright)



def test_an_image_of_several_frames_is_refused_not_read_at_its_first(breast_run, tmp_path, capsys):
    _, onnx_path = breast_run
    pages = [Image.fromarray(np.full((28, 28), v, np.uint8)) for v in (0, 255)]
    pages[0].save(tmp_path / "cine.gif", save_all=True, append_images=pages[1:])
    capsys.readouterr()
    assert main(["predict", str(onnx_path), str(tmp_path / "cine.gif")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cine.gif has 2 frames; qsal classifies single images" in err


def test_predict_refuses_a_format_that_contradicts_the_file_it_writes(breast_run, tmp_path, capsys):
    _, onnx_path = breast_run
    Image.fromarray(RAMP).save(tmp_path / "a.png")
    for argv, said in ((["--json", "--format", "csv"], "--json asks for JSON but --format csv for CSV"),
                       (["--out", str(tmp_path / "x.json"), "--format", "csv"], "names a JSON file; name it .csv"),
                       (["--out", str(tmp_path / "x.csv"), "--format", "json"], "names a CSV file; name it .json")):
        capsys.readouterr()
        assert main(["predict", str(onnx_path), str(tmp_path / "a.png"), *argv]) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.csv").exists()


def test_a_camera_jpeg_with_a_secondary_image_is_read_at_its_picture(tmp_path):
    # Pillow opens a JPEG carrying an MPF gain map / stereo view as MPO with 2 frames; its first is the picture
    from qsal.data.folder import read_image

    a, b = (Image.fromarray(np.full((28, 28, 3), v, np.uint8) + (RAMP[..., None] > 50)) for v in (40, 200))
    a.save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=[b])
    assert Image.open(tmp_path / "phone.jpg").format == "MPO"
    assert abs(int(read_image(tmp_path / "phone.jpg", 1, 28).mean()) - 40) <= 2


def test_predict_never_writes_over_what_it_reads_nor_an_old_file(breast_run, image_folder, tmp_path, capsys):
    _, onnx_path = breast_run
    root, _ = image_folder
    size = onnx_path.stat().st_size
    for out in (onnx_path, root / "a.png"):  # not even with --force: the command would destroy its input
        assert main(["predict", str(onnx_path), str(root), "--out", str(out), "--format", "csv", "--force"]) == 2
        assert "this command reads; choose another file" in capsys.readouterr().err
    assert onnx_path.stat().st_size == size
    old = tmp_path / "old.csv"
    old.write_text("yesterday's predictions\n")
    assert main(["predict", str(onnx_path), str(root), "--out", str(old)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err and old.read_text() == "yesterday's predictions\n"
    assert main(["predict", str(onnx_path), str(root), "--out", str(tmp_path), "--format", "csv"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["predict", str(onnx_path), str(root), "--out", str(old), "--force"]) == 0
    io_ = capsys.readouterr()
    assert io_.out == "" and f"wrote {old}" in io_.err  # stdout holds only results
    assert len(old.read_text().splitlines()) == 5


def test_image_files_once_each_through_links_and_odd_names(breast_run, tmp_path):
    import os

    from qsal.predict import image_files, predict_paths

    px = RAMP
    (tmp_path / "scans" / "series.png").mkdir(parents=True)  # a folder named like an image is searched, not read
    Image.fromarray(px).save(tmp_path / "scans" / "series.png" / "a.png")
    (tmp_path / "elsewhere").mkdir()
    Image.fromarray(px).save(tmp_path / "elsewhere" / "b.png")
    (tmp_path / "scans" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "loop").symlink_to(tmp_path / "scans", target_is_directory=True)  # a link loop ends
    a = tmp_path / "scans" / "series.png" / "a.png"
    assert image_files([tmp_path / "scans"]) == [tmp_path / "scans/linked/b.png", a]
    from qsal.data.folder import images_under

    assert images_under(tmp_path / "scans") == [a]  # a folder dataset's split is drawn without links, as before
    assert image_files([a, tmp_path / "scans/series.png/../series.png/a.png", str(a.resolve())]) == [a]
    odd = os.fsdecode(b"scan\xff.png")  # a name that is not UTF-8 (copied from another system)
    Image.fromarray(px).save(tmp_path / "elsewhere" / odd)
    found = image_files([tmp_path / "elsewhere" / odd])
    assert found == [tmp_path / "elsewhere" / odd]
    _, onnx_path = breast_run
    rows = predict_paths(onnx_path, found)["predictions"]
    assert rows[0]["file"].endswith("scan\\xff.png")  # written escaped: JSON/CSV/stdout stay valid UTF-8
    from qsal.predict import format_predictions

    format_predictions(predict_paths(onnx_path, found), "csv").encode("utf-8")


def test_an_empty_batch_and_twice_named_classes(breast_run):
    from qsal.metrics.operating_point import validate_labels
    from qsal.predict import CheckpointRuntime

    run, _ = breast_run
    assert CheckpointRuntime(run / "best.safetensors").predict_proba(np.zeros((0, 28, 28), np.uint8)).shape == (0, 2)
    with pytest.raises(QsalError, match="names 'benign' twice"):  # one CSV column would hold two classes
        validate_labels(["benign", "benign"], 2, "data", "re-export it")


def test_an_unreadable_image_stops_the_batch_unless_skipped_and_the_output_says_which(breast_run, image_folder,
                                                                                       tmp_path, capsys):
    _, onnx_path = breast_run
    root, _ = image_folder
    (root / "more" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a copy cut short
    # default: one line naming the file and the way to score the others, exit 2, nothing written
    out = tmp_path / "pred.json"
    assert main(["predict", str(onnx_path), str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and len(err.splitlines()) == 1
    assert "--skip-unreadable, skip_unreadable=True in Python, scores the others" in err
    assert not out.exists()
    # skipped: the other four are scored as before, the broken one is listed on stderr and in the JSON
    assert main(["predict", str(onnx_path), str(root), "--out", str(out), "--skip-unreadable", "-q"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("skipped 1 of 5 images that could not be read or used (not in the output; listed under "
                          "'skipped'")
    result = json.loads(out.read_text())
    assert [p["file"].rsplit("/", 1)[-1] for p in result["predictions"]] == ["a.png", "b.png", "c.png", "d.jpg"]
    assert [s["file"].rsplit("/", 1)[-1] for s in result["skipped"]] == ["broken.png"]
    assert "cannot read image" in result["skipped"][0]["reason"]
    from qsal.runtime import Runtime

    assert result["predictions"][0]["probabilities"] == Runtime(onnx_path).predict_file(root / "a.png")["probabilities"]
    # nothing readable is still an error, with the first reason
    with pytest.raises(QsalError, match="none of the 1 images could be used; the first: cannot read image"):
        from qsal.predict import predict_paths

        predict_paths(onnx_path, [root / "more" / "broken.png"], skip_unreadable=True)


def test_a_checkpoint_of_a_run_cut_off_part_way_is_noted_and_decides_by_the_most_probable_class(breast_run, tmp_path,
                                                                                                 capsys):
    """A killed `qsal train` leaves its best epoch so far, with no operating point and no metrics.json: predict,
    evaluate and export used it silently, and predict ('p(normal, benign) > 0.5') and the card ('p(malignant) >= 0.5
    (probability of the positive class > 0.5 ...)') described its rule two ways."""
    import shutil

    run, _ = breast_run
    cut = tmp_path / "cut"
    cut.mkdir()
    for name in ("best.safetensors", "best.json", "run.json"):  # as the run was when it was stopped
        shutil.copy(run / name, cut / name)
    meta = json.loads((cut / "best.json").read_text())
    meta["decision"], meta["epoch"] = None, 1
    (cut / "best.json").write_text(json.dumps(meta))
    Image.fromarray(load_split("breastmnist", "test").images[0, :, :, 0]).save(tmp_path / "scan.png")
    capsys.readouterr()
    assert main(["predict", str(cut / "best.safetensors"), str(tmp_path / "scan.png"), "--json"]) == 0
    io_ = capsys.readouterr()
    assert f"note: {cut / 'best.safetensors'} comes from a run that has not finished (stopped, or still running) " \
           f"(its best epoch so far: epoch 1 of {meta['train']['epochs']}): no operating point was chosen" in io_.err
    assert f"finish it with --resume --out {cut}, or use it knowing that" in io_.err
    from qsal.runtime import NO_OPERATING_POINT

    assert json.loads(io_.out)["predictions"][0]["decided_by"] == NO_OPERATING_POINT
    assert main(["export", str(cut / "best.safetensors"), "-q"]) == 0
    assert "note:" not in capsys.readouterr().err  # --quiet
    card = (cut / "model.card.md").read_text()
    assert "> **Unfinished training run.** cut/best.safetensors comes from a run that has not finished" in card
    assert str(tmp_path) not in card and f"operating point: {NO_OPERATING_POINT}" in card
    assert "best validation auc), seed 0; selected at epoch 1" in card
    # a finished run (metrics.json beside it) is not noted
    assert main(["predict", str(run / "best.safetensors"), str(tmp_path / "scan.png")]) == 0
    assert "note:" not in capsys.readouterr().err


def test_a_blank_image_is_refused_not_diagnosed(breast_run, image_folder, tmp_path, capsys):
    """An all-black PNG was predicted malignant (p 0.32 above a 0.05 threshold), an all-white one benign."""
    _, onnx_path = breast_run
    root, _ = image_folder
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "black.png")
    assert main(["predict", str(onnx_path), str(root / "black.png")]) == 2
    assert "black.png holds one value (0) in every pixel, a blank image; remove it" in capsys.readouterr().err
    Image.fromarray(np.full((28, 28, 3), 255, np.uint8)).save(root / "white.png")
    assert main(["predict", str(onnx_path), str(root), "--skip-unreadable", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(s["file"].rsplit("/", 1)[-1] for s in out["skipped"]) == ["black.png", "white.png"]
    assert len(out["predictions"]) == 4


def test_conversions_a_user_would_not_guess_are_said_once(breast_run, tmp_path, capsys):
    """A non-square image was stretched to a square, and a 12-bit scan in a 16-bit PNG without sBIT read nearly black
    (p(malignant) moved, the label flipped), with no word from predict or the folder loader."""
    from qsal.data.folder import load_folder
    from qsal.predict import predict_paths

    _, onnx_path = breast_run
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(np.tile(RAMP, (1, 2))).save(scans / "wide.png")                   # 56x28
    Image.fromarray((RAMP.astype(np.uint16) * 70)).save(scans / "twelve_bit.png")      # max 3780: no sBIT
    Image.fromarray(RAMP).save(scans / "plain.png")
    result = predict_paths(onnx_path, [scans])
    assert result["notes"] == [
        "1 of 3 images is not square: each is resized whole to 28x28 px, stretching it (crop them to a square first "
        "to keep their proportions)",
        "1 of 3 images is 16-bit with no value above 4095 and no sBIT chunk (12-bit scans?): scaled by 255/65535 "
        "they use the darkest 1/16 of the gray range (save them as 8-bit, or as 16-bit PNG with sBIT 12)"]
    assert capsys.readouterr().err.count("note: ") == 2
    assert "notes" not in predict_paths(onnx_path, [scans / "plain.png"])
    folder = tmp_path / "scans {x}"  # braces in a path: the note's text is not formatted again (a KeyError)
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.tile(RAMP + i, (1, 2))).save(folder / cls / f"{i}.png")
    capsys.readouterr()
    for _ in range(2):  # a run reads a split again per stage: said once
        load_folder(folder, "train", size=28)
    err = capsys.readouterr().err
    assert err.count("note: 14 of 14 images of the train split of") == 1 and "are not square" in err
