"""A working directory that shadows standard modules, for the tests that no command runs Python files from it.

``plant(folder)`` writes ``argparse.py``, ``json.py`` and ``concurrent.py`` there, each of which leaves a marker file
when imported; ``markers(folder)`` lists the markers (none may appear); ``run_in`` runs the installed ``qsal`` there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["SHADOWS", "plant", "markers", "qsal_command", "run_in"]

SHADOWS = ("argparse", "json", "concurrent")


def plant(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHADOWS:
        (folder / f"{name}.py").write_text(
            "import os\n"
            f"open(os.path.join({str(folder)!r}, 'IMPORTED_{name}'), 'w').close()\n"
            "raise SystemExit('planted module ran')\n")
    return folder


def markers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("IMPORTED_*"))


def qsal_command() -> list[str]:
    """The installed console script (what a user runs), else the module under -P (no cwd on the path)."""
    script = Path(sys.executable).parent / "qsal"
    return [str(script)] if script.is_file() else [sys.executable, "-P", "-m", "qsal.cli"]


def run_in(folder: Path, *args: str, timeout: int = 300, threads: int | None = 1) -> subprocess.CompletedProcess:
    """``qsal *args`` in ``folder`` (one OpenMP thread unless ``threads=None``: the default of the machine)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    return subprocess.run([*qsal_command(), *args], cwd=folder, capture_output=True, text=True, env=env,
                          timeout=timeout)
