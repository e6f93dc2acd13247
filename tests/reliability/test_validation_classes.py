"""A validation split missing a class (a folder dataset with a rare class) is refused before anything is trained or
written, by train and quantize, naming the class and the flags that work around it."""

from __future__ import annotations

from reliability_inputs import assert_clean_refusal, files_under, image_folder, run_cli


def test_a_validation_split_missing_a_class_is_refused_before_training_or_quantizing(tmp_path, monkeypatch, capsys):
    """It has no AUC to choose an epoch by and (binary) no ROC to place a threshold by: qsal used to train for the
    whole schedule and then stop with a traceback (fixed threshold) or an error (a rule), leaving a half-written
    folder; a multi-class split missing a class trained on and silently kept the last epoch."""
    monkeypatch.chdir(tmp_path)
    folder = image_folder(tmp_path / "imgs", per_class=20)
    for i in range(2, 20):  # 20 images of a, 2 of b: the seeded 10 % validation part holds only a's
        (folder / "b" / f"{i}.png").unlink()
    head = f"the validation split of folder:{folder} (2 images) has none of class 'b', so it cannot "
    train = ["train", "--dataset", f"folder:{folder}", "--epochs", "1", "--no-progress", "--out"]
    for extra, expected in (([], "choose the epoch by its AUC nor place a threshold by rule 'youden'; add images of it "
                                 "(a folder dataset's validation part is 10 % of each class: 6 or more images put one "
                                 "there), or pass --select-on loss (a study: select_on: loss) and --operating-point 0.5"),
                            (["--operating-point", "0.5"], "choose the epoch by its AUC; add images"),
                            (["--select-on", "loss"], "place a threshold by rule 'youden'; add images")):
        before = files_under(tmp_path)
        assert_clean_refusal(*run_cli([*train, tmp_path / "out", *extra], capsys), head + expected)
        assert files_under(tmp_path) == before
    rc, _, err = run_cli([*train, tmp_path / "ok", "--select-on", "loss", "--operating-point", "0.5"], capsys)
    assert rc == 0, err
    ckpt = tmp_path / "ok" / "best.safetensors"
    for extra, expected in ((["--method", "ptq", "--operating-point", "youden"], "place a threshold by rule 'youden'"),
                            (["--method", "qat", "--epochs", "1"], "choose the epoch by its AUC; add")):
        before = files_under(tmp_path)
        assert_clean_refusal(*run_cli(["quantize", ckpt, "--out", tmp_path / "q", "--no-progress", *extra], capsys),
                             head + expected)
        assert files_under(tmp_path) == before
    assert run_cli(["quantize", ckpt, "--method", "qat", "--epochs", "1", "--select-on", "loss", "--out",
                    tmp_path / "q", "--no-progress"], capsys)[0] == 0
    three = image_folder(tmp_path / "three", per_class=20)
    for name, keep in (("c", 2), ("b", 10)):  # multi-class: no c in validation, so no one-vs-rest AUC
        (three / name).mkdir(exist_ok=True)
        for i in range(20):
            src = three / "a" / f"{i}.png"
            if i < keep:
                (three / name / f"{i}.png").write_bytes(src.read_bytes())
            elif name == "b":
                (three / name / f"{i}.png").unlink(missing_ok=True)
    before = files_under(tmp_path)
    assert_clean_refusal(*run_cli(["train", "--dataset", f"folder:{three}", "--epochs", "1", "--no-progress", "--out",
                                   tmp_path / "m"], capsys), "has none of class 'c', so it cannot choose the epoch by its AUC; add")
    assert files_under(tmp_path) == before
