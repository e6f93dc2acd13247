"""Per-dataset / per-model schedules in study configs, and that they reach training."""

import hashlib
import json
from dataclasses import fields
from pathlib import Path

import pytest

from qsal.errors import QsalError
from qsal.quant import PACTConfig
from qsal.study.config import load_run_config, parse_run_config
from qsal.study.plan import format_plan, plan_study
from qsal.study.runner import run_study
from qsal.study.schedule import SCHEDULE_FIELDS
from qsal.train import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BASE = {"name": "sched", "datasets": ["breastmnist", "retinamnist"], "models": ["small_cnn", "edge_mbv2"],
        "methods": ["fp32", "pact"], "bits": [4], "seeds": [0],
        "measure": {"latency": False, "saliency": False}}


def test_schedules_layer_defaults_train_finetune_and_matching_overrides_in_order():
    cfg = parse_run_config({**BASE, "epochs": {"fp32": 30, "finetune": 5}, "lr": {"fp32": 0.5, "finetune": 0.2},
                            "train": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-4, "hflip": True},
                            "finetune": {"lr": 0.01},
                            "schedules": [{"datasets": ["retinamnist"], "train": {"epochs": 100, "shift_px": 2}},
                                          {"datasets": ["retinamnist"], "models": ["edge_mbv2"],
                                           "train": {"epochs": 60, "milestones": [0.3, 0.6, 0.9]},
                                           "finetune": {"epochs": 12, "precision": "fp32"}}]})
    train, ft = cfg.train_configs("breastmnist", "small_cnn", seed=3)
    assert (train.epochs, train.optimizer, train.lr, train.weight_decay, train.hflip, train.shift_px, train.seed) == \
        (30, "sgd", 0.1, 1e-4, True, 0, 3)
    assert (ft.epochs, ft.lr, ft.optimizer, ft.hflip, ft.seed) == (5, 0.01, "sgd", True, 3)  # inherits train
    train, ft = cfg.train_configs("retinamnist", "small_cnn", seed=0)
    assert (train.epochs, train.shift_px, ft.epochs, ft.shift_px) == (100, 2, 5, 2)
    train, ft = cfg.train_configs("retinamnist", "edge_mbv2", seed=0)  # both entries match: the last one wins
    assert (train.epochs, train.shift_px, train.milestones) == (60, 2, (0.3, 0.6, 0.9))
    assert (ft.epochs, ft.lr, ft.precision, train.precision) == (12, 0.01, "fp32", "auto")
    assert parse_run_config(cfg.to_dict()) == cfg  # the form worker processes receive


def test_every_schedule_problem_is_listed_with_its_path():
    bad = {**BASE, "train": {"optimiser": "sgd", "lr": "fast", "hflip": 1, "rotate_deg": "some", "zoom": 0.9},
           "finetune": {"optimizer": "rmsprop"},
           "schedules": [{"datasets": ["pathmnist"], "train": {"milestones": [50, 75]}}, {"models": ["small_cnn"]}, 3]}
    with pytest.raises(QsalError) as e:
        parse_run_config(bad, "study.yaml")
    msg = str(e.value)
    for expected in ("train.optimiser: unknown key", "train.lr: 'fast' is not a number", "train.hflip: 1 is not true or false",
                     "train.rotate_deg: rotate_deg 'some' must be a number from 0 to 180, or null for none",
                     "train.zoom: zoom 0.9 must be a number from 0 to 0.5, or null for none",
                     "finetune: optimizer 'rmsprop' is not one of",
                     "schedules[0].datasets[0]: 'pathmnist' is not in the study's datasets",
                     "schedules[0].train.milestones: [50, 75]: every milestone is a fraction",
                     "schedules[1]: sets nothing", "schedules[2]: must be a mapping"):
        assert expected in msg, (expected, msg)
    assert "10 problem(s)" in msg


def test_every_train_config_field_but_seed_device_progress_can_be_scheduled():
    assert set(SCHEDULE_FIELDS) == {f.name for f in fields(TrainConfig)} - {"seed", "device", "progress"}


def test_fingerprint_of_a_config_without_schedules_is_unchanged_and_schedules_change_it():
    cfg = parse_run_config(BASE)
    old_style = {k: v for k, v in cfg.to_dict().items() if k not in ("data_dir", "train", "finetune", "schedules", "pact", "folders")}
    assert cfg.fingerprint() == hashlib.sha256(json.dumps(old_style, sort_keys=True).encode()).hexdigest()[:16]
    assert parse_run_config({**BASE, "train": {"hflip": True}}).fingerprint() != cfg.fingerprint()


def test_pact_options_per_bit_width_reach_only_those_cells_and_bad_ones_are_listed():
    cfg = parse_run_config({**BASE, "bits": [4, 2], "pact": {2: {"weight_scheme": "dorefa", "fold_bn": False,
                                                                  "alpha_lr": None}}})
    assert cfg.pact_config(2).to_dict() == {**PACTConfig(bits=2).to_dict(), "weight_scheme": "dorefa",
                                            "fold_bn": False, "alpha_lr": None}
    assert cfg.pact_config(4) == PACTConfig(bits=4)  # unlisted bit-widths keep the defaults
    assert parse_run_config(json.loads(json.dumps(cfg.to_dict()))).pact == cfg.pact  # "2" from JSON is 2
    assert cfg.fingerprint() != parse_run_config({**BASE, "bits": [4, 2]}).fingerprint()
    with pytest.raises(QsalError) as e:
        parse_run_config({**BASE, "pact": {2: {"fold_bn": False}, 4: {"bits": 3, "nope": 1}, "x": {}}})
    msg = str(e.value)
    assert "3 problem(s)" in msg and "pact.2: not one of the study's bits ([4])" in msg
    assert "pact.4: unknown option(s) ['bits', 'nope']" in msg and "pact.'x'" in msg
    with pytest.raises(QsalError, match=r"pact.4: weight_per_channel 'some'"):
        parse_run_config({**BASE, "pact": {4: {"weight_per_channel": "some"}}})


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_committed_study_configs_load_and_plan(path):
    cfg = load_run_config(path)
    plan = plan_study(cfg, measure=False)
    assert plan["n_cells"] == sum(r["n_cells"] for r in plan["rows"]) > 0
    assert f"{plan['n_cells']} cells" in format_plan(plan, cfg.name)


def test_yaml_merge_keys_may_be_overridden_but_a_key_given_twice_is_refused(tmp_path):
    """`<<: *anchor` brings defaults the mapping's own keys override (YAML's meaning); only a repeated own key is
    an error, because plain YAML would silently keep the last one."""
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text("defaults: &base {epochs: 30, lr: 0.1, batch_size: 64}\n"
                        "name: merged\ndatasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\n"
                        "train:\n  <<: *base\n  epochs: 12\n")
    with pytest.raises(QsalError, match="defaults: unknown key"):
        load_run_config(cfg_path)  # the anchor's holder is not a study key; the merge itself is not the problem
    cfg_path.write_text("name: merged\ndatasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\n"
                        "train:\n  <<: {epochs: 30, lr: 0.1, batch_size: 64}\n  epochs: 12\n")
    train = load_run_config(cfg_path).train
    assert (train["epochs"], train["lr"], train["batch_size"]) == (12, 0.1, 64)
    # an anchored mapping that itself merges, merged by a later one: its keys are checked as written
    cfg_path.write_text("name: nested\ndatasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32, pact]\n"
                        "train: &t {<<: {epochs: 30, lr: 0.1}, epochs: 12}\nfinetune: {<<: *t, lr: 0.01}\n")
    cfg = load_run_config(cfg_path)
    assert (cfg.train["epochs"], cfg.train["lr"], cfg.finetune["epochs"], cfg.finetune["lr"]) == (12, 0.1, 12, 0.01)
    cfg_path.write_text("name: twice\ndatasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\n"
                        "train:\n  <<: {lr: 0.1}\n  epochs: 12\n  epochs: 13\n")
    with pytest.raises(QsalError, match="key 'epochs' appears twice in one mapping \\(lines 7 and 8\\)"):
        load_run_config(cfg_path)


@pytest.mark.slow
def test_a_schedule_override_reaches_training_and_is_recorded_in_the_checkpoint(shared_data, tmp_path):
    """One tiny study end to end: the per-dataset override, not the study default, is what trained."""
    cfg = parse_run_config({**BASE, "datasets": ["breastmnist"], "models": ["small_cnn"], "data_dir": str(shared_data),
                            "epochs": {"fp32": 5, "finetune": 4}, "train": {"batch_size": 64},
                            "pact": {4: {"weight_per_channel": "all", "alpha_lr": None}},
                            "schedules": [{"datasets": ["breastmnist"],
                                           "train": {"epochs": 1, "shift_px": 2, "hflip": True, "weight_decay": 1e-4},
                                           "finetune": {"epochs": 1, "lr": 2e-4, "precision": "fp32"}}]})
    statuses = run_study(cfg, tmp_path, progress=False)
    assert [s["status"] for s in statuses] == ["done", "done"], statuses
    cell = tmp_path / "breastmnist/small_cnn/seed0"
    fp32 = json.loads((cell / "fp32/best.json").read_text())
    assert {k: fp32["train"][k] for k in ("epochs", "batch_size", "shift_px", "hflip", "weight_decay", "seed")} == \
        {"epochs": 1, "batch_size": 64, "shift_px": 2, "hflip": True, "weight_decay": 1e-4, "seed": 0}
    assert fp32["epoch"] == 1
    pact = json.loads((cell / "pact-4/best.json").read_text())
    assert {k: pact["train"][k] for k in ("epochs", "lr", "batch_size", "shift_px", "precision")} == \
        {"epochs": 1, "lr": 2e-4, "batch_size": 64, "shift_px": 2, "precision": "fp32"}
    assert pact["precision"]["training"] == "fp32"
    assert (pact["quant"]["weight_per_channel"], pact["quant"]["alpha_lr"]) == ("all", None)  # the study's pact.4


def test_dry_run_lists_cells_and_schedules_and_estimates_time_without_writing(tmp_path, capsys):
    import yaml

    from qsal.cli import main

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**BASE, "models": ["small_cnn"], "train": {"epochs": 7, "hflip": True},
                                    "schedules": [{"datasets": ["retinamnist"], "train": {"epochs": 3}}]}))
    assert main(["run", str(path), "--dry-run", "--out", str(tmp_path / "out")]) in (0, None)
    out = capsys.readouterr().out
    assert "study sched: 4 cells" in out
    assert "breastmnist/small_cnn: 1 seed x 2 cells (fp32, pact-4), 546 official training images, ~" in out
    assert "train: 7 epochs" in out and "train: 3 epochs" in out and "hflip True" in out
    assert "estimated training time on this machine:" in out
    assert not (tmp_path / "out").exists()


def test_dry_run_says_when_the_data_a_run_needs_is_missing_and_lists_only_schedules_cells_use(tmp_path, capsys,
                                                                                               monkeypatch):
    """It printed a plan, image counts and exit 0 for a study whose data was not there (the run was then refused),
    and a fine-tune schedule for a study with no fine-tune."""
    import yaml

    from qsal.cli import main

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "fp", "datasets": ["pneumoniamnist"], "models": ["small_cnn"],
                                    "methods": ["fp32"], "epochs": {"fp32": 1}}))
    monkeypatch.setenv("QSAL_DATA_DIR", str(tmp_path / "nowhere"))
    assert main(["run", str(path), "--dry-run", "--no-estimate", "--out", str(tmp_path / "out")]) in (0, None)
    captured = capsys.readouterr()
    assert "train: 1 epoch," in captured.out and "finetune:" not in captured.out
    assert "note: a run would be refused now: data folder" in captured.err and "does not exist" in captured.err


def test_dry_run_estimates_the_part_of_the_study_a_run_would_do(tmp_path, capsys):
    """--only (or finished cells) leaves less than the whole study: the plan's total is not the time a run takes."""
    import yaml

    from qsal.cli import main

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**BASE, "models": ["small_cnn"], "train": {"epochs": 2}}))
    assert main(["run", str(path), "--dry-run", "--out", str(tmp_path / "out"), "--only", "breastmnist/*"]) in (0, None)
    out = capsys.readouterr().out
    assert "a run would train or quantize 2 of the study's 4 cells: ~" in out
    assert main(["run", str(path), "--dry-run", "--out", str(tmp_path / "out")]) in (0, None)
    assert "a run would train" not in capsys.readouterr().out  # the whole study: the plan's total says it


def test_dry_run_names_a_part_trained_cell_and_how_far_it_got(tmp_path, capsys):
    import json

    import yaml

    from qsal.checkpoint import save_training_state
    from qsal.cli import main
    from qsal.study.config import load_run_config

    path, out = tmp_path / "study.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump({**BASE, "models": ["small_cnn"], "train": {"epochs": 20}}))
    cfg = load_run_config(path)
    out.mkdir()
    (out / "run_config.json").write_text(json.dumps({"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()}))
    cell = out / "retinamnist/small_cnn/seed0/fp32"
    cell.mkdir(parents=True)
    save_training_state(cell / "last.pt", {"epoch": 4, "model": {}})  # a run stopped after its fifth epoch
    assert main(["run", str(path), "--dry-run", "--no-estimate", "--out", str(out)]) in (0, None)
    printed = capsys.readouterr().out
    assert "retinamnist/small_cnn/seed0/fp32: 5 of 20 epochs trained (its last.pt); a run continues from there" in printed


def test_dry_run_without_estimate_times_nothing(tmp_path, capsys, monkeypatch):
    import yaml

    import qsal.study.plan
    from qsal.cli import main

    def timed(*args, **kwargs):
        raise AssertionError("--no-estimate timed a training step")

    monkeypatch.setattr(qsal.study.plan, "_seconds_per_image", timed)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**BASE, "models": ["small_cnn"]}))
    assert main(["run", str(path), "--dry-run", "--no-estimate", "--out", str(tmp_path / "out")]) in (0, None)
    out = capsys.readouterr().out
    assert "study sched: 4 cells" in out and "official training images\n" in out
    assert "estimated training time" not in out and not (tmp_path / "out").exists()


def test_a_plan_timed_on_a_busy_machine_says_so():
    """A dry-run estimate timed beside other work was 14x too high here (204 h vs 14.3 h): the plan says when."""
    plan = {"n_cells": 1, "rows": [], "est_seconds": 7200.0}
    quiet = format_plan({**plan, "load_when_timed": {"load_1min": 0.2, "cores": 2}}, "s")
    busy = format_plan({**plan, "load_when_timed": {"load_1min": 2.1, "cores": 2}}, "s")
    assert "estimated training time on this machine: 2.0 h" in quiet and "busy" not in quiet
    assert "the machine was busy when the steps were timed (1-min load average 2.1 on 2 cores)" in busy
    assert "rerun --dry-run with nothing else running" in busy


def test_the_estimate_counts_the_images_an_epoch_trains_on(monkeypatch):
    """MNIST and CIFAR-10 hold 10 % of train out for validation: an epoch is 54,000 MNIST images, not 60,000."""
    import qsal.study.plan

    monkeypatch.setattr(qsal.study.plan, "_seconds_per_image", lambda *a, **k: 1.0)
    cfg = parse_run_config({**BASE, "datasets": ["mnist", "breastmnist"], "models": ["small_cnn"],
                            "train": {"epochs": 2}})
    plan = plan_study(cfg)
    mnist, breast = plan["rows"]
    assert (mnist["n_train"], mnist["n_fit"], mnist["cell_seconds"]["fp32"]) == (60000, 54000, 2 * 54000.0)
    assert (breast["n_train"], breast["n_fit"]) == (546, 546)  # MedMNIST's own validation split
    text = format_plan(plan, "s")
    assert "60000 official training images (54000 trained on, the rest held out for validation)" in text
    assert "546 official training images, ~" in text


def test_a_dry_run_of_a_finished_study_times_nothing_and_says_a_run_would_do_nothing(tmp_path, capsys, monkeypatch,
                                                                                    shared_data):
    """A finished study's dry run timed training steps for a minute and printed '33.6 h', then '0 of 54 cells'."""
    import shutil

    import qsal.study.plan as plan_module
    from qsal.cli.app import main

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "study"
    shutil.copytree(root / "benchmarks" / "results" / "study_breast_quick", out)
    monkeypatch.setattr(plan_module, "_seconds_per_image", lambda *a, **k: pytest.fail("a finished study was timed"))
    assert main(["run", str(root / "configs" / "breast_quick.yaml"), "--out", str(out), "--dry-run"]) in (0, None)
    printed = capsys.readouterr().out
    assert "is finished and up to date: a run would train or quantize nothing" in printed
    assert "estimated training time" not in printed
