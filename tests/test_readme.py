"""Finding 6: the README's Python example runs as written (it failed at its sixth line)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    return blocks[0]


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env)


def test_readme_python_block_runs_with_one_epoch(tmp_path):
    """The block exactly as written except the epoch counts (40 and 10 -> 1), so it runs in seconds."""
    code = _python_block()
    short = re.sub(r"epochs=\d+", "epochs=1", code)
    assert short.count("epochs=1") == 2 and short.replace("epochs=1", "") == re.sub(r"epochs=\d+", "", code)
    proc = _run(short, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sensitivity (malignant)" in proc.stdout
    assert (tmp_path / "int8.onnx").is_file() and (tmp_path / "runs/fp32/best.safetensors").is_file()


@pytest.mark.slow
def test_readme_python_block_runs_as_written(tmp_path):
    proc = _run(_python_block(), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sensitivity (malignant)" in proc.stdout
