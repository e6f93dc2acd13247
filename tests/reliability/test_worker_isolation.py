"""No command runs Python files from the working directory.

A folder with ``argparse.py``, ``json.py`` and ``concurrent.py`` (each writes a marker file when imported)
is the working directory of every command that starts a worker process: bench, export (its model card
is benchmarked), run (local worker pool + bench) and demo (in tests/study/test_demo.py, whose one demo run is made
from such a folder). No marker may appear.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from shadowing import markers, plant, run_in

def test_the_planted_modules_do_run_under_python_m(tmp_path):
    """The control: ``python -m`` (how the worker used to start) imports them."""
    cwd = plant(tmp_path / "cwd")
    subprocess.run([sys.executable, "-m", "qsal.export.bench", "--help"], cwd=cwd, capture_output=True, timeout=120)
    assert markers(cwd)


def test_bench_and_export_workers_ignore_the_working_directory(good_run, good_onnx, tmp_path):
    cwd = plant(tmp_path / "cwd")
    proc = run_in(cwd, "bench", str(good_onnx), "--threads", "1", "--seconds", "0.05", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["batch"] for r in json.loads(proc.stdout)["runs"]] == [1, 64]
    proc = run_in(cwd, "export", str(good_run / "best.safetensors"), "--out", str(tmp_path / "m.onnx"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "latency" in (tmp_path / "m.card.md").read_text().lower()
    assert markers(cwd) == []


@pytest.mark.slow
def test_run_with_a_worker_pool_ignores_the_working_directory(tmp_path):
    cwd = plant(tmp_path / "cwd")
    cfg = tmp_path / "s.yaml"
    cfg.write_text("datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\nseeds: [0, 1]\n"
                   "epochs: {fp32: 1}\nmeasure: {latency: true, saliency: false}\n")
    proc = run_in(cwd, "run", str(cfg), "--out", str(tmp_path / "run"), "--workers", "2", "--no-progress", timeout=500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sum(ln.startswith("done ") for ln in proc.stdout.splitlines()) == 2  # the status table
    assert markers(cwd) == []
