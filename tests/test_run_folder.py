"""Finding 5: outputs never silently mix models (fingerprints, refusals, fresh default folders)."""

import json

import pytest

from qsal.cli import main
from qsal.errors import QsalError
from qsal.run_folder import claim_run_folder, fingerprint, fresh_folder


def test_claim_refuses_another_run_and_changed_settings(tmp_path):
    out = tmp_path / "run"
    breast = fingerprint("breastmnist", "small_cnn", "fp32", {"lr": 1e-3})
    claim_run_folder(out, breast)
    (out / "best.safetensors").write_bytes(b"weights")
    with pytest.raises(QsalError, match="holds a breastmnist/small_cnn/fp32 run, not pneumoniamnist") as e:
        claim_run_folder(out, fingerprint("pneumoniamnist", "small_cnn", "fp32", {"lr": 1e-3}), resume=True)
    assert "--force" in str(e.value) and "--out" in str(e.value) and "--resume" in str(e.value)
    with pytest.raises(QsalError, match="pass --resume to continue it, --force to start over"):
        claim_run_folder(out, breast)
    with pytest.raises(QsalError, match=r"holds a breastmnist/small_cnn/fp32 run with other settings \(lr: 0.001 "
                                        r"there, 0.0005 now\); pass --force"):  # not "pass --resume", which refuses
        claim_run_folder(out, fingerprint("breastmnist", "small_cnn", "fp32", {"lr": 5e-4}))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(QsalError, match="--out .*a_file is a file; a run writes a folder"):
        claim_run_folder(tmp_path / "a_file", breast)
    with pytest.raises(QsalError, match=r"lr changed \(0.001 -> 0.0005\)"):
        claim_run_folder(out, fingerprint("breastmnist", "small_cnn", "fp32", {"lr": 5e-4}), resume=True)
    claim_run_folder(out, breast, resume=True)  # the same run continues
    claim_run_folder(out, fingerprint("pneumoniamnist", "small_cnn", "fp32", {"lr": 1e-3}), force=True)
    assert not (out / "best.safetensors").exists()
    assert json.loads((out / "run.json").read_text())["dataset"] == "pneumoniamnist"


def test_a_fine_tune_written_before_a_new_null_field_still_resumes_and_a_nested_change_is_named(tmp_path):
    """A fine-tune's fingerprint nests its whole TrainConfig: a field added since with a null default (ema_decay)
    or another --quiet must not refuse the resume, and a changed nested value is named by its own key."""
    out = tmp_path / "pact"
    old_train = {"epochs": 15, "lr": 1e-4, "progress": True, "device": "auto"}
    claim_run_folder(out, fingerprint("breastmnist", "resnet20", "pact-4", {"train_config": old_train, "seed": 0}))
    (out / "last.pt").write_bytes(b"state")
    now = {**old_train, "progress": False, "ema_decay": None}
    claim_run_folder(out, fingerprint("breastmnist", "resnet20", "pact-4", {"train_config": now, "seed": 0}), resume=True)
    with pytest.raises(QsalError, match=r"cannot resume .*: train_config.ema_decay changed \(None -> 0.99\)"):
        claim_run_folder(out, fingerprint("breastmnist", "resnet20", "pact-4",
                                          {"train_config": {**now, "ema_decay": 0.99}, "seed": 0}), resume=True)


def test_a_fine_tune_resumes_in_another_checkout_and_not_from_another_parent(tmp_path):
    """A fine-tune names its parent by content: a study copied elsewhere (a GPU machine's checkout, then this one)
    resumes; a parent retrained at the same path does not, though its path is unchanged."""
    out = tmp_path / "pact"
    gpu = {"parent": "/gpu/checkout/fp32/best.safetensors", "parent_sha256": "aa", "seed": 0}
    claim_run_folder(out, fingerprint("breastmnist", "resnet20", "pact-4", gpu))
    (out / "last.pt").write_bytes(b"state")
    here = {**gpu, "parent": "/work/main/fp32/best.safetensors"}
    claim_run_folder(out, fingerprint("breastmnist", "resnet20", "pact-4", here), resume=True)
    with pytest.raises(QsalError, match=r"cannot resume .*: its parent checkpoint \(/gpu/checkout/fp32/best.safetensors\)"
                                        r" is not the model this fine-tune started from \(its content changed: SHA-256 "
                                        r"aa\.\.\. -> bb\.\.\.\); pass --force to start over from it"):
        claim_run_folder(out, fingerprint("breastmnist", "resnet20", "pact-4", {**gpu, "parent_sha256": "bb"}),
                         resume=True)
    # a folder written before the hash compares paths, as it did
    old = tmp_path / "old"
    claim_run_folder(old, fingerprint("breastmnist", "resnet20", "pact-4", {"parent": "/a/best.safetensors"}))
    (old / "last.pt").write_bytes(b"state")
    with pytest.raises(QsalError, match=r"parent changed"):
        claim_run_folder(old, fingerprint("breastmnist", "resnet20", "pact-4",
                                          {"parent": "/b/best.safetensors", "parent_sha256": "aa"}), resume=True)
    claim_run_folder(old, fingerprint("breastmnist", "resnet20", "pact-4",
                                      {"parent": "/a/best.safetensors", "parent_sha256": "aa"}), resume=True)
    assert json.loads((old / "run.json").read_text())["config"]["parent_sha256"] == "aa"  # recorded from now on


def test_quantize_records_its_parents_content(breast_run, tmp_path):
    from qsal.pipeline import quantize_checkpoint
    from qsal.quant import PTQConfig
    from qsal.run_folder import file_sha256

    run, _ = breast_run
    quantize_checkpoint(str(run / "best.safetensors"), PTQConfig(num_calibration=32), tmp_path / "ptq", progress=False)
    recorded = json.loads((tmp_path / "ptq" / "run.json").read_text())["config"]
    assert recorded["parent_sha256"] == file_sha256(run / "best.safetensors") and len(recorded["parent_sha256"]) == 64


def test_fresh_folder_never_reuses(tmp_path):
    first = fresh_folder(tmp_path, "breastmnist-small_cnn")
    first.mkdir()
    assert first.name == "breastmnist-small_cnn-1" and fresh_folder(tmp_path, "breastmnist-small_cnn").name.endswith("-2")


def test_cli_refuses_mixing_and_defaults_never_overwrite(breast_run, tmp_path, monkeypatch, capsys):
    run, _ = breast_run
    # the case: breastmnist trained into a folder holding another run trained nothing and kept its weights
    pneu = tmp_path / "pneu"
    pneu.mkdir()
    (pneu / "run.json").write_text(json.dumps(fingerprint("pneumoniamnist", "small_cnn", "fp32", {})))
    (pneu / "best.safetensors").write_bytes(b"x")
    assert main(["train", "--epochs", "1", "--out", str(pneu), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds a pneumoniamnist/small_cnn/fp32 run" in err
    # a rerun with another --lr does not silently resume with the old one
    assert main(["train", "--epochs", "2", "--lr", "0.01", "--out", str(run), "--resume", "--no-progress"]) == 2
    assert "lr changed (0.001 -> 0.01)" in capsys.readouterr().err
    # another dataset needs an explicit flag, and the output says so
    assert main(["evaluate", str(run / "best.safetensors"), "--dataset", "pneumoniamnist"]) == 2
    assert "--other-dataset" in capsys.readouterr().err
    # export: the default is beside the checkpoint, never ./model.onnx, and never overwritten
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(run / "best.safetensors"), "--out", str(tmp_path / "a.onnx")]) == 0
    assert main(["export", str(run / "best.safetensors"), "--out", str(tmp_path / "a.onnx")]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert not (tmp_path / "model.onnx").exists()
    # quantize: two runs with the default --out land in two fresh folders
    for _ in range(2):
        assert main(["quantize", str(run / "best.safetensors"), "--num-calibration", "64", "--no-progress"]) == 0
    made = sorted(p.name for p in (tmp_path / "runs" / "quantized").iterdir())
    assert made == ["breastmnist-small_cnn-ptq-int8-minmax-1", "breastmnist-small_cnn-ptq-int8-minmax-2"]  # whose, and how
    q = json.loads((tmp_path / "runs/quantized/breastmnist-small_cnn-ptq-int8-minmax-1/best.json").read_text())
    assert q["decision"]["positive_class"] == "malignant" and q["decision"]["operating_point"]["chosen_on"] == "validation"




def test_cannot_resume_crosses_a_process_boundary_whole():
    import pickle

    from qsal.errors import QsalError
    from qsal.run_folder import CannotResume

    back = pickle.loads(pickle.dumps(CannotResume("cannot resume x: lr changed (0.1 -> 0.2)", "lr changed (0.1 -> 0.2)")))
    assert isinstance(back, QsalError) and str(back) == "cannot resume x: lr changed (0.1 -> 0.2)"
    assert back.why == "lr changed (0.1 -> 0.2)"


def test_a_damaged_run_record_cannot_be_resumed_and_force_starts_over(tmp_path):
    # was a bare JSONDecodeError naming no file (and a traceback from qsal train --resume)
    from qsal.run_folder import CannotResume

    fp = fingerprint("breastmnist", "small_cnn", "fp32", {"epochs": 1})
    out = claim_run_folder(tmp_path / "r", fp)
    (out / "run.json").write_text("garbage{")
    with pytest.raises(CannotResume, match=r"cannot resume .*: its run.json is damaged \(JSONDecodeError\); pass "
                                           r"--force") as e:
        claim_run_folder(out, fp, resume=True)
    assert e.value.why == "its run.json is damaged (JSONDecodeError)"  # a study then starts the cell over
    claim_run_folder(out, fp, force=True)
    assert json.loads((out / "run.json").read_text())["method"] == "fp32"


def test_resume_with_force_from_the_api_starts_over_as_the_demo_asks(tmp_path):
    # qsal demo passes resume=True always and force when asked: the pair must start the run over, not be refused
    # (the CLI refuses --resume with --force as mutually exclusive flags)
    from qsal.run_folder import claim_run_folder, fingerprint

    fp = fingerprint("breastmnist", "small_cnn", "fp32", {"epochs": 1})
    claim_run_folder(tmp_path / "r", fp)
    (tmp_path / "r" / "best.safetensors").write_bytes(b"x")
    claim_run_folder(tmp_path / "r", fingerprint("breastmnist", "small_cnn", "fp32", {"epochs": 2}), resume=True,
                     force=True)
    assert not (tmp_path / "r" / "best.safetensors").exists()


def test_force_leaves_the_old_run_whole_when_the_new_command_is_refused(breast_run, tmp_path, capsys):
    # --force deleted the run's model before the new inputs were checked: a typo destroyed the old model
    import shutil

    from qsal.cli import main

    run, _ = breast_run
    out = tmp_path / "r"
    shutil.copytree(run, out)
    (out / "model.card.md").write_text("card of the old model")
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--force", "--positive-class", "nosuch", "--epochs", "1"]) == 2
    assert sorted(p.name for p in out.iterdir()) == before
    # accepted: the old run's files go, exported artifact and card included (they described the old model)
    assert main(["train", "--out", str(out), "--force", "--epochs", "1", "--no-progress", "-q"]) == 0
    assert not (out / "model.onnx").exists() and not (out / "model.card.md").exists()
    assert (out / "best.safetensors").is_file()


def test_an_operating_point_for_a_set_that_decides_by_argmax_is_refused(shared_data, tmp_path, capsys):
    capsys.readouterr()
    assert main(["train", "--dataset", "retinamnist", "--operating-point", "sensitivity:0.9", "--epochs", "1",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--operating-point applies to binary sets only" in err
    assert not (tmp_path / "r").exists()


def test_a_run_that_failed_before_writing_anything_does_not_hold_its_folder(tmp_path):
    """Diverged at epoch 1 (only run.json written): the next run, with a lower --lr, takes the folder without
    --force; --resume there would have refused (settings changed) and nothing was there to keep."""
    out = tmp_path / "run"
    claim_run_folder(out, fingerprint("breastmnist", "small_cnn", "fp32", {"lr": 1e30}))
    claim_run_folder(out, fingerprint("breastmnist", "small_cnn", "fp32", {"lr": 1e-3}))
    assert json.loads((out / "run.json").read_text())["config"]["lr"] == 1e-3
    (out / "last.pt").write_bytes(b"state")  # from here on there is something to continue
    with pytest.raises(QsalError, match="with other settings"):
        claim_run_folder(out, fingerprint("breastmnist", "small_cnn", "fp32", {"lr": 1e30}))
