"""fit() across invocations and at its edges: outputs that stop being finite, a schedule grown on resume, a resume
where ``precision: auto`` resolves otherwise or that names another positive class, and what an interrupted CLI
command says."""

import argparse
import json

import pytest
import torch

from qsal.checkpoint import load_training_state
from qsal.errors import QsalError
from qsal.models import create_model
from qsal.train import TrainConfig, fit


def test_a_model_whose_validation_outputs_are_not_finite_is_divergence_not_a_best_checkpoint(tiny_splits, tmp_path):
    """A finite training loss with weights blown up to Inf/NaN: the epoch's model was saved as 'best' (every score
    undefined, so the latest stood in) and later called 'the last good checkpoint'."""
    train, val, _ = tiny_splits

    calls = {"n": 0}

    def blowing_up_step(m, x, y):  # the last of epoch 1's 5 batches leaves Inf weights behind a finite loss
        calls["n"] += 1
        logits = m(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        if calls["n"] == 5:  # through .data: in float32 (no autocast copy) the weight is saved for the backward
            next(m.parameters()).data.fill_(float("inf"))
        return {"loss": loss, "logits": logits}

    with pytest.raises(QsalError, match=r"training diverged: the model's outputs on the validation images are not "
                                        r"finite after epoch 1; lower --lr"):
        fit(create_model("small_cnn", 2, 1), train, val, TrainConfig(epochs=2, batch_size=32, progress=False), tmp_path,
            step=blowing_up_step)
    assert not (tmp_path / "best.safetensors").exists() and not (tmp_path / "best.json").exists()


def _every_epoch_better(monkeypatch):
    """Each validation scores higher than the one before, so every epoch is saved as best (what is recorded in
    best.json is then checked on every epoch, not only where the tiny data happened to improve)."""
    import qsal.train as train_module

    real, calls = train_module._validation_score, {"n": 0}

    def rising(*args):
        calls["n"] += 1
        return calls["n"], real(*args)[1]

    monkeypatch.setattr(train_module, "_validation_score", rising)


def test_a_run_resumed_for_more_epochs_follows_the_longer_schedule_and_says_so(tiny_splits, tmp_path, capsys,
                                                                                monkeypatch):
    """The scheduler came back with the 4-epoch run's steps (epochs 2, 3): epochs 5-8 ran at 1e-5 while the
    record said 'x0.1 at 50/75 %' of 8 epochs (epochs 4 and 6)."""
    _every_epoch_better(monkeypatch)
    train, val, _ = tiny_splits
    short = TrainConfig(epochs=4, batch_size=64, progress=False)
    long = TrainConfig(**{**short.to_dict(), "epochs": 8})
    fit(create_model("small_cnn", 2, 1), train, val, short, tmp_path / "grown")
    grown = fit(create_model("small_cnn", 2, 1), train, val, long, tmp_path / "grown")
    fresh = fit(create_model("small_cnn", 2, 1), train, val, long, tmp_path / "fresh")
    lrs = [h["lr"] for h in fresh.history]
    assert lrs == pytest.approx([1e-3] * 4 + [1e-4] * 2 + [1e-5] * 2)
    assert [h["lr"] for h in grown.history[4:]] == pytest.approx(lrs[4:])
    assert "trained 4 epoch(s) on the schedule of 4 epochs; the rest follows the schedule of 8" in capsys.readouterr().err
    # a checkpoint saved after the resume says which schedule its first epochs had, also after a later resume
    changed = {"first_epochs_scheduled_for": 4, "schedule_changed_after_epoch": 4}
    assert json.loads((tmp_path / "grown" / "best.json").read_text())["train"].items() >= changed.items()
    longer = TrainConfig(**{**short.to_dict(), "epochs": 12, "milestones": (0.5, 0.75)})
    fit(create_model("small_cnn", 2, 1), train, val, longer, tmp_path / "grown")  # grown again: the newest change
    record = json.loads((tmp_path / "grown" / "best.json").read_text())["train"]
    assert (record["first_epochs_scheduled_for"], record["schedule_changed_after_epoch"]) == (8, 8)


def test_a_resume_where_auto_resolves_to_another_precision_is_said_and_recorded(tiny_splits, tmp_path, monkeypatch,
                                                                               capsys):
    """A GPU run (bf16) finished on a CPU without bf16 trained in float32 while the checkpoint said fp32 throughout."""
    import qsal.train as train_module

    _every_epoch_better(monkeypatch)
    train, val, _ = tiny_splits
    cfg = TrainConfig(epochs=1, batch_size=32, progress=False, precision="auto")
    monkeypatch.setattr(train_module, "resolve_precision", lambda p, d: "bf16")
    fit(create_model("small_cnn", 2, 1), train, val, cfg, tmp_path)
    monkeypatch.setattr(train_module, "resolve_precision", lambda p, d: "fp32")
    fit(create_model("small_cnn", 2, 1), train, val, TrainConfig(**{**cfg.to_dict(), "epochs": 2}), tmp_path)
    assert "where its epochs from 1 trained in bf16 (channels-last True); the checkpoint records both" in \
        capsys.readouterr().err
    runs = load_training_state(tmp_path / "last.pt")["precision_runs"]
    assert [(r["from_epoch"], r["training"], r["channels_last"]) for r in runs] == [(1, "bf16", True), (2, "fp32", False)]
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["epoch"] == 2 and best["precision"]["training"] == "mixed" and len(best["precision"]["by_epoch"]) == 2


@pytest.mark.parametrize("force,out,said", [
    (False, "run", "rerun the same command with --resume to continue (--force starts over)"),
    (True, "run", "rerun the same command with --resume instead of --force to continue"),
    (False, "empty", "interrupted before the run was recorded; rerun the same command to start it"),
    (False, None, "rerun it with --resume and --out set to its folder (the newest under runs/)"),
])
def test_an_interrupted_train_says_how_to_continue(force, out, said, tmp_path):
    """'a rerun resumes' was printed for qsal train, whose plain rerun into the folder is refused (pass --resume);
    --resume is refused beside --force, and in a folder where the run was not recorded yet."""
    from qsal.cli.app import _interrupted

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    where = str(tmp_path / out) if out else None
    assert said in _interrupted(argparse.Namespace(resume=False, force=force, out=where))
    assert _interrupted(argparse.Namespace(config="x.yaml")) == "interrupted; finished files are intact and a rerun resumes"


def test_a_resume_that_names_another_positive_class_is_another_run(tmp_path):
    """The positive class decides the operating point and what sensitivity is about: a resume naming another one was
    taken as the same run. Named only when asked for, so runs that never named one keep their fingerprint."""
    from qsal.pipeline import train_model
    from qsal.run_folder import CannotResume

    run = tmp_path / "run"
    cfg = TrainConfig(epochs=1, progress=False, precision="fp32")
    train_model("breastmnist", "small_cnn", cfg, run, positive_class="malignant")
    assert json.loads((run / "run.json").read_text())["config"]["positive_class"] == "malignant"
    with pytest.raises(CannotResume, match=r"positive_class changed \('malignant' -> 'normal, benign'\)"):
        train_model("breastmnist", "small_cnn", cfg, run, positive_class="normal, benign", resume=True)
    plain = tmp_path / "plain"
    train_model("breastmnist", "small_cnn", cfg, plain)
    assert "positive_class" not in json.loads((plain / "run.json").read_text())["config"]


def test_a_resume_on_a_folder_whose_files_changed_is_refused_as_another_split(breast_folder, tmp_path):
    """fit's resume identity held the folder's name and image counts only: a file renamed since (same counts) drew
    another split, and the resumed epochs could train on what the first run held out for validation and test."""
    from qsal.pipeline import train_model
    from qsal.run_folder import CannotResume

    root = breast_folder(12)
    run = tmp_path / "run"
    cfg = TrainConfig(epochs=1, batch_size=8, progress=False, precision="fp32")
    train_model(f"folder:{root}", "small_cnn", cfg, run)
    assert "listing_sha256" in load_training_state(run / "last.pt")["run"]["data"]
    train_model(f"folder:{root}", "small_cnn", cfg, run, resume=True)  # the same files: continued (nothing left)
    victim = sorted((root / "malignant").iterdir())[0]
    victim.rename(victim.with_name("renamed.png"))
    with pytest.raises(CannotResume, match="files changed since it started") as e:
        train_model(f"folder:{root}", "small_cnn", cfg, run, resume=True)
    assert "split drawn now is another" in e.value.why
    # a table set records no listing: its resume identity is unchanged
    assert "listing_sha256" not in load_training_state(_table_run(tmp_path))["run"]["data"]


def _table_run(tmp_path):
    from qsal.pipeline import train_model

    run = tmp_path / "table"
    train_model("breastmnist", "small_cnn", TrainConfig(epochs=1, progress=False, precision="fp32"), run)
    return run / "last.pt"
