"""A command started in a subprocess and sent SIGTERM once it has written its first files, for the tests that a `kill`
ends every command as Ctrl-C does (one line, exit 130, finished files intact).

``start_until(command, files)`` starts ``command`` and returns once every one of ``files`` exists (a training's
``last.pt``: an epoch is done); ``terminate(proc)`` sends SIGTERM and returns the last line of stderr, having checked
the exit status 130 and that no traceback was printed.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

__all__ = ["start_until", "terminate"]


def start_until(command: list[str], files: list[Path], seconds: float = 240) -> subprocess.Popen:
    """``command`` running, once each of ``files`` exists; fails the test with its stderr if it ended first, or when
    ``seconds`` pass (a loaded machine: an epoch of small_cnn on BreastMNIST takes about a second alone)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + seconds
    while not all(p.is_file() for p in files) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
    if not all(p.is_file() for p in files):
        proc.kill()
        _, err = proc.communicate(timeout=60)
        raise AssertionError(err if proc.returncode not in (-9, None) else f"no epoch in {seconds:g} s")
    return proc


def terminate(proc: subprocess.Popen) -> str:
    """Send ``proc`` SIGTERM; its stderr's last line, once it exited 130 without a traceback."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, f"exit {proc.returncode}: {err[-2000:]}"
    return err.strip().splitlines()[-1]
