import pytest

from qsal.data import DATASETS, TASK_BINARY, TASK_MULTILABEL, TASK_ORDINAL, get_info, list_datasets, resolve_data_dir
from qsal.errors import QsalError


def test_table_has_all_twelve_medmnist_2d_sets_with_four_sizes():
    med = [n for n in list_datasets() if DATASETS[n].family == "medmnist"]
    assert len(med) == 12
    for n in med:
        info = DATASETS[n]
        assert set(info.md5) == {"28", "64", "128", "224"}
        assert all(len(h) == 32 for h in info.md5.values())
        assert info.num_classes == len(info.labels) >= 2


def test_task_types_and_official_values():
    assert get_info("breastmnist").task == TASK_BINARY
    assert get_info("retinamnist").task == TASK_ORDINAL
    assert get_info("chestmnist").task == TASK_MULTILABEL and get_info("chestmnist").num_classes == 14
    assert get_info("pneumoniamnist").n_samples == {"train": 4708, "val": 524, "test": 624}
    assert get_info("pneumoniamnist").md5["28"] == "28209eda62fecd6e6a2d98b1501bb15f"
    assert get_info("retinamnist").n_channels == 3


def test_unknown_dataset_names_the_choices():
    with pytest.raises(QsalError, match="unknown dataset 'nope'.*breastmnist"):
        get_info("nope")


def test_data_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("QSAL_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("QSAL_DATA_DIR")
    assert resolve_data_dir(None).name == ".medmnist"


def test_a_mistyped_data_folder_is_refused_not_replaced_by_the_embedded_copy(monkeypatch, tmp_path, capsys):
    from qsal.cli import main
    from qsal.data import load_split

    # BreastMNIST 28 px is embedded: before, a wrong --data-dir trained on that copy and said nothing.
    with pytest.raises(QsalError, match=r"data folder .*typo \(--data-dir\) does not exist; give the folder"):
        load_split("breastmnist", "train", data_dir=tmp_path / "typo")
    monkeypatch.setenv("QSAL_DATA_DIR", str(tmp_path / "typo"))
    with pytest.raises(QsalError, match=r"typo \(from \$QSAL_DATA_DIR\) does not exist"):
        load_split("breastmnist", "train")
    (tmp_path / "file").write_text("")
    with pytest.raises(QsalError, match="is a file, not a folder"):
        load_split("breastmnist", "train", data_dir=tmp_path / "file", download=True)
    (tmp_path / "typo").mkdir()  # an existing folder without the file: the embedded copy, as documented
    assert load_split("breastmnist", "test").source == "embedded"
    capsys.readouterr()
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(tmp_path / "nope"), "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope (--data-dir) does not exist" in err and not out.exists()
    assert main(["datasets", "--data-dir", str(tmp_path / "nope")]) == 2


def test_qsal_datasets_names_each_binary_sets_positive_class(capsys):
    """The README says binary sets name their positive class in the dataset table; `qsal datasets` showed neither it
    nor its label (BreastMNIST's is label 0, malignant)."""
    import json

    from qsal.cli import main

    assert main(["datasets", "--no-verify", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    # --json gives typed fields a program can use (it gave the table's headers and "546/78/156" strings)
    breast = rows["breastmnist"]
    assert (breast["positive_class"], breast["positive_label"]) == ("malignant", 0)
    assert breast["labels"] == ["malignant", "normal, benign"] and breast["splits"] == {"train": 546, "val": 78, "test": 156}
    assert breast["md5"] in ("not checked", None)  # --no-verify
    assert rows["pneumoniamnist"]["positive_label"] == 1 and rows["mnist"]["positive_class"] is None
    assert main(["datasets", "--no-verify"]) == 0
    table = capsys.readouterr().out
    assert "malignant (label 0)" in table and "546/78/156" in table and "pneumonia (label 1)" in table


def test_every_image_size_setting_accepts_the_same_sides():
    """`--size` and a study folder's `size` accept qsal.data.registry's bounds, which checkpoints and models are
    checked against (the CLI writes them out to stay light): each accepts the ends and refuses one past them."""
    import argparse

    from qsal.cli.arguments import IMAGE_SIZE
    from qsal.data.registry import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
    from qsal.study.folders import parse_folders

    assert IMAGE_SIZE(str(MIN_IMAGE_SIZE)) == MIN_IMAGE_SIZE and IMAGE_SIZE(str(MAX_IMAGE_SIZE)) == MAX_IMAGE_SIZE
    for outside in (MIN_IMAGE_SIZE - 1, MAX_IMAGE_SIZE + 1):
        with pytest.raises(argparse.ArgumentTypeError):
            IMAGE_SIZE(str(outside))
    for size, refused in ((MIN_IMAGE_SIZE, False), (MAX_IMAGE_SIZE, False), (MIN_IMAGE_SIZE - 1, True),
                          (MAX_IMAGE_SIZE + 1, True)):
        problems = []
        parse_folders(problems, {"s": {"path": "scans", "size": size}})
        assert any(".size:" in p for p in problems) == refused, (size, problems)
