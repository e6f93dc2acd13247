"""Every committed benchmark table names the script that rewrites it (six named none: a reader could not rerun them)."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TABLES = sorted((ROOT / "benchmarks" / "results").glob("*.md"))


@pytest.mark.parametrize("table", TABLES, ids=[t.name for t in TABLES])
def test_each_benchmark_table_names_an_existing_script(table):
    scripts = set(re.findall(r"`python (benchmarks/[\w]+\.py)", table.read_text()))
    assert scripts, f"{table.name} does not say which `python benchmarks/...py` writes it"
    assert all((ROOT / s).is_file() for s in scripts), scripts


def test_written_by_quotes_the_arguments_as_given(monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import written_by

    monkeypatch.setattr(sys, "argv", ["x", "--artifacts", "qsal weight-only INT8", "--no-peers"])
    assert written_by("/any/where/quantization_latency.py") == (
        "Written by `python benchmarks/quantization_latency.py --artifacts 'qsal weight-only INT8' --no-peers`.")
