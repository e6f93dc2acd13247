import re
import shutil
import subprocess

import numpy as np
import pytest

from qsal.study.report import pareto_front, results_table, write_report
from qsal.saliency.plot import save_saliency_grid


def _results(tmp_path):
    rng = np.random.default_rng(0)
    grid = save_saliency_grid(rng.random((2, 28, 28)), {"fp32": rng.random((2, 1, 28, 28)), "pact-4": rng.random((2, 1, 28, 28))},
                              tmp_path / "saliency_grid.png")
    rows = [
        {"model": "fp32", "test_auc": 0.9, "test_acc": 0.85, "auc_ci": [0.85, 0.95], "size_bytes": 4_000_000,
         "latency_b1_ms": 0.3, "size_ratio": 1.0, "most_changed": []},
        {"model": "ptq-int8", "test_auc": 0.9, "test_acc": 0.84, "auc_ci": [0.85, 0.95], "size_bytes": 1_000_000,
         "latency_b1_ms": 0.1, "size_ratio": 0.25, "most_changed": [{"index": 3, "spearman": 0.2, "topk_iou": 0.1}]},
        {"model": "pact-2", "test_auc": 0.7, "test_acc": 0.6, "auc_ci": [0.6, 0.8], "size_bytes": 2_000_000,
         "latency_b1_ms": 0.5, "size_ratio": 0.5, "most_changed": []},
    ]
    return {"dataset": "breastmnist", "rows": rows, "saliency_grid": str(grid), "environment": {"cpu": "test"}}


def test_pareto_front():
    assert pareto_front([(1, 0.9), (2, 0.95), (3, 0.8), (1, 0.5)]) == [0, 1]


def test_markdown_and_self_contained_html(tmp_path):
    out = write_report(tmp_path, _results(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "| ptq-int8 | 0.900 |" in md and "#3" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # size, latency, AUC-CI plots + saliency grid
    assert not re.search(r"""src=["']https?:""", page)  # no network needed
    assert out["table"].startswith("| model |")


def test_report_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("Debian chromium is not installed (apt-get install chromium); .ci/run installs it")
    write_report(tmp_path, _results(tmp_path))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000", "--enable-logging=stderr"]
    url = (tmp_path / "report.html").as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert 'data-images-ok="true"' in dom.stdout and 'data-image-count="4"' in dom.stdout
    assert not re.search(r"CONSOLE.*(Uncaught|Error)", dom.stderr)
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1200,1600", f"--screenshot={shot}", url],
                   capture_output=True, text=True, timeout=120)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
    artifacts = tmp_path.parents[1] / "report-screenshot.png"
    shutil.copy(shot, artifacts)  # kept beside pytest's tmp dirs as the test artifact
