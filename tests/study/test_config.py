"""A new user's study config: what it gets wrong is refused at load time, once, with the key path to fix."""

import json

import pytest
import yaml

from qsal.errors import QsalError
from qsal.study.config import load_run_config, parse_run_config

BASE = {"datasets": ["breastmnist"], "models": ["small_cnn"], "methods": ["fp32", "pact"], "bits": [4], "seeds": [0],
        "train": {"epochs": 1}}
FP32 = {**{k: v for k, v in BASE.items() if k != "bits"}, "methods": ["fp32"]}  # bits: set for no method, refused


def _refused(tmp_path, capsys, text: str) -> str:
    """``qsal run --dry-run`` on a config file holding ``text``: exit 2, one line, no run folder; the line."""
    from qsal.cli import main

    path = tmp_path / "study.yaml"
    path.write_text(text)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--no-estimate"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    assert not (tmp_path / "out").exists()
    return lines[0]


def test_a_pact_skip_that_is_not_a_weight_layer_of_a_model_is_refused_at_load_with_its_key(tmp_path, capsys):
    # every PACT cell failed after its FP32 parent trained, naming a --skip flag a study does not have
    err = _refused(tmp_path, capsys, yaml.safe_dump({**BASE, "pact": {4: {"skip": ["nonexistent_layer"]}}}))
    assert "pact.4.skip: names ['nonexistent_layer'] are not layers of small_cnn; its conv and linear layers are " \
           "conv1, conv2, fc1, fc2" in err and "--skip" not in err
    err = _refused(tmp_path, capsys, yaml.safe_dump({**BASE, "pact": {4: {"skip": ["relu1"]}}}))
    assert "pact.4.skip: names ['relu1'], which hold no conv or linear weights" in err and "small_cnn's are" in err
    # more calibration images than the training split: the cell refused it after training, naming --num-calibration
    err = _refused(tmp_path, capsys, yaml.safe_dump({**BASE, "pact": {4: {"num_calibration": 600}}}))
    assert "pact.4.num_calibration: 600 is more than the 546 training images of breastmnist" in err
    assert "--num-calibration" not in err
    cfg = parse_run_config({**BASE, "pact": {4: {"skip": ["conv1"]}}}, authored=True)  # a weight layer: kept FP32
    assert cfg.pact_config(4).skip == ("conv1",)


def test_number_hints_suit_the_type_expected_and_yaml_text_numbers_are_read_as_floats(tmp_path, capsys):
    # an integer field: the hint writes an integer (it said "write 2.0", which was then refused as no integer)
    err = _refused(tmp_path, capsys, "datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\n"
                                     "epochs: {fp32: \"2\"}\ntrain: {batch_size: 1e2}\n")
    assert "epochs.fp32: '2' is not an integer (YAML reads it as text: write 2)" in err
    assert "train.batch_size: '1e2' is not an integer (YAML reads it as text: write 100)" in err
    err = _refused(tmp_path, capsys, "datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\n"
                                     "epochs: {fp32: 2.0}\n")
    assert "epochs.fp32: 2.0 is not an integer (write 2)" in err
    # a float field: 1e-3 (text to PyYAML's YAML 1.1) is the number meant, in every place a float is set
    path = tmp_path / "study.yaml"
    path.write_text("datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32, pact]\nbits: [4]\n"
                    "lr: {finetune: 5e-4}\ntrain: {lr: 1e-3, weight_decay: 1E-4, ema_decay: 9.9e-1}\n"
                    "pact: {4: {alpha_lr: 1e-2}}\n")
    cfg = load_run_config(path)
    assert (cfg.lr.finetune, cfg.train["lr"], cfg.train["weight_decay"], cfg.train["ema_decay"]) == \
           (5e-4, 1e-3, 1e-4, 0.99)
    assert cfg.pact_config(4).alpha_lr == 0.01 and isinstance(cfg.to_dict()["train"]["lr"], float)
    err = _refused(tmp_path, capsys, "datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\n"
                                     "train: {lr: fast}\n")
    assert "train.lr: 'fast' is not a number" in err and "YAML reads" not in err


def test_a_duplicate_key_names_both_lines_once(tmp_path, capsys):
    err = _refused(tmp_path, capsys, "datasets: [breastmnist]\nseeds: [0]\nmodels: [small_cnn]\nmethods: [fp32]\n"
                                     "seeds: [1]\n")
    assert err.endswith("is not valid YAML: key 'seeds' appears twice in one mapping (lines 2 and 5); keep one of them")
    assert err.count("line") == 1


def test_n_explain_above_a_test_split_is_refused_not_capped_while_recorded(tmp_path, capsys):
    # explaining caps at the test split: a result.json recording 100000 overstated what was explained
    err = _refused(tmp_path, capsys, yaml.safe_dump({**FP32, "measure": {"n_explain": 100000},
                                                     "datasets": ["pneumoniamnist", "breastmnist"]}))
    assert "measure.n_explain: 100000 is more than the 156 test images of breastmnist" in err and "156 or fewer" in err
    assert parse_run_config({**FP32, "measure": {"n_explain": 156}}, authored=True)


def test_a_relative_data_dir_is_read_from_the_config_files_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "cfgdir" / "mydata").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "cfgdir" / "dd.yaml"
    path.write_text(yaml.safe_dump({**FP32, "data_dir": "mydata"}))
    monkeypatch.chdir(tmp_path / "elsewhere")  # not where the config is
    cfg = load_run_config("../cfgdir/dd.yaml")
    assert cfg.data_dir == str((tmp_path / "cfgdir" / "mydata").resolve())  # recorded absolute
    assert cfg.fingerprint() == parse_run_config({**FP32}).fingerprint()
    path.write_text(yaml.safe_dump({**FP32, "data_dir": "nodata"}))
    monkeypatch.chdir(tmp_path)
    from qsal.cli import main

    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--no-estimate"]) == 2
    err = capsys.readouterr().err
    assert (f"data_dir {tmp_path.resolve() / 'cfgdir' / 'nodata'} in {path} is not a folder (a relative data_dir is "
            "read from the config file's folder)") in err


def _stamp(run_dir, cfg) -> None:
    """A run folder as `qsal run` with ``cfg`` leaves it, before any cell."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run_config.json").write_text(json.dumps({"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()}))


def test_a_changed_config_names_what_changed_and_how_to_go_on(tmp_path, capsys):
    from qsal.cli import main
    from qsal.study.runner import run_study

    before = parse_run_config({**FP32})
    _stamp(tmp_path / "out", before)
    now = parse_run_config({**FP32, "seeds": [0, 1], "train": {"epochs": 1, "lr": 0.01}})
    with pytest.raises(QsalError) as e:  # refused before any cell: nothing trains
        run_study(now, tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "was made by a different config (seeds: added 1, train.lr: unset -> 0.01)" in msg
    assert "--dry-run with this --out lists the finished cells a run would redo" in msg and "--force" in msg
    assert "fingerprint" not in msg
    path = tmp_path / "now.yaml"
    path.write_text(yaml.safe_dump({**FP32, "seeds": [0, 1], "train": {"epochs": 1, "lr": 0.01}}))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--no-estimate"]) in (0, None)
    assert "(made by a different config: seeds: added 1, train.lr: unset -> 0.01; a run there needs --force" \
           in capsys.readouterr().out
    # a list's change is its items, not the list cut off at three ('fp32', 'ptq', 'pact', ... hid the added sgt)
    from qsal.study.config_checks import changed_settings

    wide = parse_run_config({**FP32, "methods": ["fp32", "ptq", "pact"]})
    wider = parse_run_config({**FP32, "methods": ["fp32", "ptq", "pact", "sgt"], "seeds": [1]})
    assert changed_settings(wide.to_dict(), wider) == ["methods: added sgt", "seeds: added 1; removed 0"]


def test_dry_run_counts_in_words_and_says_a_failed_cell_is_tried_again(tmp_path, capsys):
    from qsal.cli import main

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**FP32}))
    cfg = load_run_config(path)
    _stamp(tmp_path / "out", cfg)
    cell = tmp_path / "out" / "breastmnist/small_cnn/seed0/fp32"
    cell.mkdir(parents=True)
    (cell / "error.json").write_text(json.dumps({"error": "out of memory\nmore", "type": "RuntimeError"}))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--no-estimate"]) in (0, None)
    out = capsys.readouterr().out
    assert "study study: 1 cell\n" in out and "1 seed x 1 cell (fp32)" in out and "train: 1 epoch," in out
    assert "0 of these 1 cells finished; a run would redo 0 of them\n" \
           "1 cell failed in an earlier run; a run tries it again (fix the cause first):\n" \
           "  breastmnist/small_cnn/seed0/fp32: RuntimeError: out of memory\n" in out


def test_a_folder_dataset_in_a_study_says_how_to_study_ones_own_images():
    """`datasets: [folder:/data/scans]` was 'unknown value ...; choose from bloodmnist, ...', with no way forward; a
    study names its folders under `folders:` (tests/study/test_folders.py)."""
    from qsal.errors import QsalError
    from qsal.study.config import parse_run_config

    with pytest.raises(QsalError, match=r"datasets\[0\]: 'folder:/data/scans': a study names its own folders under "
                                        r"folders: \(e.g. folders: \{clinic: \{path: /data/scans, positive_class: "
                                        r"...\}\}\) and lists the short name here \(datasets: \[clinic\]\)"):
        parse_run_config({"datasets": ["folder:/data/scans"], "models": ["small_cnn"], "methods": ["fp32"]}, "s.yaml")
