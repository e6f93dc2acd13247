"""What every result file records about where it came from: versions, machine, time."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from importlib import metadata

__all__ = ["environment", "usable_cpus"]

_PACKAGES = ("qsal", "torch", "numpy", "onnx", "onnxruntime", "captum", "scikit-learn")


def environment() -> dict:
    """Versions of the packages that shape results, the CPU, thread count, the GPU this process used (or None) and a UTC timestamp."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        import torch

        threads = torch.get_num_threads()
        # the GPU this process used (initialised), not merely one that exists: starts no CUDA context
        gpu = torch.cuda.get_device_name(torch.cuda.current_device()) if torch.cuda.is_initialized() else None
    except ImportError:  # the runtime side never imports torch
        threads = gpu = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "torch_threads": threads,
        "gpu": gpu,
        "versions": versions,
        "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cpus() -> int:
    """Cores this process may run on: its CPU affinity (``taskset``, cgroup cpusets), else ``os.cpu_count()``.
    ``os.cpu_count()`` alone counts the whole machine, so a study pinned to one core would start two threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)
