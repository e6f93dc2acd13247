"""Shared fixtures: tiny synthetic datasets and tiny models, so unit tests run in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from qsal.data import get_info
from qsal.data.arrays import ImageSplit

SHARED_DATA = Path(os.environ.get("QSAL_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


def make_split(n: int = 96, seed: int = 0, name: str = "breastmnist", split: str = "train") -> ImageSplit:
    """A learnable synthetic binary task: class 1 images have a bright square in the top-left corner."""
    rng = np.random.default_rng(seed)
    info = get_info(name)
    labels = rng.integers(0, info.num_classes, n)
    images = rng.integers(0, 60, (n, 28, 28, info.n_channels)).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 2 + 4 * y:8 + 4 * y, 2:8] = 230
    return ImageSplit(info, split, images, labels.astype(np.int64), "synthetic")


@pytest.fixture
def tiny_splits():
    return make_split(160, 0, split="train"), make_split(64, 1, split="val"), make_split(64, 2, split="test")


@pytest.fixture
def breast_folder(tmp_path):
    """``make(per_class) -> root``: a folder dataset (one sub-folder per class) of the first ``per_class`` BreastMNIST
    training images of each class, as PNG files."""
    from PIL import Image

    from qsal.data import load_split

    def make(per_class: int) -> Path:
        train = load_split("breastmnist", "train")
        root = tmp_path / "folder"
        for c, name in enumerate(("malignant", "normal, benign")):
            (root / name).mkdir(parents=True)
            for i in np.where(train.labels == c)[0][:per_class]:
                Image.fromarray(train.images[i, :, :, 0]).save(root / name / f"{i}.png")
        return root

    return make


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "medmnist" / "breastmnist.npz").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}; set QSAL_DATA_DIR")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def breast_run(tmp_path_factory):
    """A real BreastMNIST small_cnn (2 epochs) in a run folder, exported to ONNX: ``(run dir, onnx path)``."""
    from qsal.pipeline import export_checkpoint, train_model
    from qsal.train import TrainConfig

    run = tmp_path_factory.mktemp("breast") / "fp32"
    train_model("breastmnist", "small_cnn", TrainConfig(epochs=2, progress=False), run)
    onnx_path = run / "model.onnx"
    export_checkpoint(str(run / "best.safetensors"), onnx_path, card=False)
    return run, onnx_path
