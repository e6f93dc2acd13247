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
