"""Shared artifacts for the reliability suite: one real (1-epoch) checkpoint and its ONNX export, built once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qsal.cli import main


@pytest.fixture(scope="session")
def good_run(tmp_path_factory, ) -> Path:
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


def copy_checkpoint(src: Path, dest_dir: Path, meta_edit=None, raw_json: str | None = None) -> Path:
    """``best.safetensors`` + an edited ``best.json`` in ``dest_dir``; returns the .safetensors path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "best.safetensors", dest_dir / "best.safetensors")
    meta = json.loads((src / "best.json").read_text())
    if raw_json is not None:
        (dest_dir / "best.json").write_text(raw_json)
    else:
        (dest_dir / "best.json").write_text(json.dumps(meta_edit(meta) if meta_edit else meta))
    return dest_dir / "best.safetensors"
