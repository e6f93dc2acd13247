"""SIGTERM ends a qsal command as Ctrl-C does: one line saying what was left and how to continue, exit 130.

``kill PID`` (a scheduler's time limit, a closed session) otherwise ended ``qsal train`` silently with exit 143, while
Ctrl-C said "interrupted; ... rerun with --resume". Files are written atomically, so either way what was finished is
intact; the handler only makes the exit say so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

__all__ = ["sigterm_as_interrupt"]


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within it, SIGTERM to this process raises ``KeyboardInterrupt`` in the main thread (the CLI turns it into one
    line and exit 130); a forked worker that inherits the handler dies of SIGTERM as it would without it. Elsewhere
    than the main thread (a signal handler cannot be set there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    parent = os.getpid()

    def interrupt(signum, frame):
        if os.getpid() != parent:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
