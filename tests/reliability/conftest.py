"""Shared artifacts for the reliability suite: one real (1-epoch) checkpoint and its ONNX export, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from qsal.cli import main


@pytest.fixture(scope="session")
def good_run(tmp_path_factory) -> Path:
    """A 1-epoch small_cnn on the embedded BreastMNIST: best.safetensors + best.json + last.pt + metrics.json."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("good") / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def good_onnx(good_run, tmp_path_factory) -> Path:
    from qsal.pipeline import export_checkpoint

    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_checkpoint(str(good_run / "best.safetensors"), path, card=False)
    return path
