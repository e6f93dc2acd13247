"""Latency and size of deployed models.

Two ways to measure:

- ``interleaved_latency``: several artifacts of one network in *one* process, timed in interleaved
  rounds (A B C A B C ...), each round a short burst of calls per artifact; the figure is the median
  of the per-round medians. Drift of a shared CPU (other jobs, frequency scaling) then hits every
  artifact alike, which is what makes ratios between artifacts trustworthy. Every round is kept.
- ``bench_onnx`` / ``bench_torch``: one artifact alone, each (threads, batch) in a fresh
  worker process (the model card's single-artifact figure). The worker runs in Python's isolated mode (``-I``):
  neither the working directory nor ``PYTHONPATH`` is on its import path, so a stray ``json.py`` where the user
  happens to be cannot run; ``worker_command`` hands it the parent's own import path, minus the working directory.

Sessions are onnxruntime defaults apart from the thread count: what any application gets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from qsal.errors import QsalError

__all__ = ["bench_onnx", "bench_torch", "measure", "interleaved_latency", "onnx_session"]


def measure(fn, warmup: int, min_iters: int, min_seconds: float) -> list[float]:
    """Run ``fn`` ``warmup`` times, then at least ``min_iters`` times and ``min_seconds``; per-call ms."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def onnx_session(path: str | os.PathLike, threads: int, meta: dict | None = None):
    """A default onnxruntime CPU session; ``threads`` intra-op threads (0 = onnxruntime's default, one per physical
    core); ``meta``: a qsal file's metadata (None for another tool's file)."""
    import onnxruntime as ort

    from qsal.runtime import session_options

    opts, _ = session_options(threads or None, meta)  # as Runtime runs it: exact kernels where fast ones saturate
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def interleaved_latency(calls: dict, rounds: int, calls_per_round: int, warmup: int = 3) -> dict:
    """Time every ``calls[name]()`` in ``rounds`` interleaved rounds of ``calls_per_round`` calls each.

    Args:
        calls: name -> zero-argument callable (one inference on a fixed batch).
        rounds: rounds; in each, every callable runs its burst once, in the given order, and the order
            rotates by one each round so no artifact always runs first (after a cold cache) or last.
    Returns:
        name -> ``{"median_ms": median of per-round medians, "round_medians_ms": [...],
        "rounds_ms": [[per-call ms, ...] per round], "iqr_of_round_medians_ms": float}``.
    """
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    per_round: dict[str, list[list[float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, times = calls[name], []
            for _ in range(calls_per_round):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            per_round[name].append(times)
    out = {}
    for name, rs in per_round.items():
        medians = [float(np.median(t)) for t in rs]
        q1, q3 = np.percentile(medians, [25, 75])
        out[name] = {"median_ms": float(np.median(medians)), "round_medians_ms": medians,
                     "iqr_of_round_medians_ms": float(q3 - q1), "rounds_ms": rs}
    return out


WARMUP_CALLS = 5  # untimed calls first: onnxruntime allocates its buffers and picks kernels on the first ones
MIN_CALLS = {"batch 1": 50, "larger batches": 20}  # timed calls at least, whatever the seconds


def _min_calls(batch: int) -> int:
    return MIN_CALLS["batch 1" if batch == 1 else "larger batches"]


def _summary(times_ms: list[float], batch: int) -> dict:
    """Latency percentiles of the timed calls, and throughput as the images they scored over the time they took
    (sustained, as onnxruntime_perf_test counts it: a batch size over the *median* latency overstated it up to 3x on a
    shared CPU, where slow calls are the ones a median leaves out)."""
    t = np.asarray(times_ms)
    return {"batch": batch, "iters": int(t.size), "latency_ms_p50": float(np.percentile(t, 50)),
            "latency_ms_p95": float(np.percentile(t, 95)), "latency_ms_mean": float(t.mean()),
            "throughput_img_s": float(batch * t.size * 1e3 / t.sum())}


def _worker_onnx(path: str, threads: int, batch: int, seconds: float) -> dict:
    from qsal.runtime import Runtime

    rt = Runtime(path, threads=threads or None)
    x = np.random.default_rng(0).standard_normal((batch, *rt.input_shape)).astype(np.float32)
    return _summary(measure(lambda: rt.run_normalized(x), WARMUP_CALLS, _min_calls(batch), seconds), batch)


def _worker_torch(checkpoint: str, threads: int, batch: int, seconds: float) -> dict:
    import torch

    from qsal.checkpoint import load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    arch = meta["arch"]
    size = (meta.get("dataset") or {}).get("image_size", arch.get("image_size", 28))
    x = torch.randn(batch, arch["in_channels"], size, size)
    with torch.inference_mode():
        return _summary(measure(lambda: model(x), WARMUP_CALLS, _min_calls(batch), seconds), batch)


def clean_import_path() -> list[str]:
    """This process's ``sys.path`` without the working directory (``''``, ``.`` or its absolute path)."""
    cwd = os.path.realpath(os.getcwd())
    return [p for p in sys.path if p and os.path.isabs(p) and os.path.realpath(p) != cwd]


def worker_command(module: str, *args: str) -> list[str]:
    """``python -I`` running ``module`` as ``__main__`` with ``clean_import_path()`` appended after the
    interpreter's own (standard library first, so nothing can shadow it)."""
    boot = ("import sys, json, runpy; sys.path += [p for p in json.loads(sys.argv.pop(1)) if p not in sys.path]; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-I", "-c", boot, json.dumps(clean_import_path()), *args]


def _spawn(kind: str, target: str, threads: int, batch: int, seconds: float) -> dict:
    if os.path.exists(target):  # a file named "-m.onnx" must not read as an option of the worker
        target = os.path.abspath(target)
    cmd = worker_command("qsal.export.bench", "--worker", kind, target, "--threads", str(threads),
                         "--batch", str(batch), "--seconds", str(seconds))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or os.cpu_count())}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode < 0:
        raise QsalError(f"benchmark worker for {target} was killed by signal {-proc.returncode} (out of memory?); "
                        "rerun with fewer other processes running")
    said = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    if proc.returncode == 2 and said:  # the worker's own one-line QsalError
        raise QsalError(said[-1][len("error: "):])
    if proc.returncode != 0:  # a bug, not bad input: show everything the worker said
        raise RuntimeError(f"benchmark worker failed for {target} (exit {proc.returncode}); its output:\n"
                           f"{proc.stdout}{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_settings(threads: tuple[int, ...], batches: tuple[int, ...], seconds: float) -> None:
    if not threads or any(not isinstance(t, int) or t < 0 for t in threads):
        raise QsalError(f"thread counts must be integers >= 0 (0 = all cores), got {list(threads)}")
    if not batches or any(not isinstance(b, int) or b < 1 for b in batches):
        raise QsalError(f"batch sizes must be integers >= 1, got {list(batches)}")
    if not (isinstance(seconds, (int, float)) and 0 < seconds <= 3600):
        raise QsalError(f"seconds per configuration must be in (0, 3600], got {seconds}")


def _timed_runs(kind: str, target: str, threads: tuple[int, ...], batches: tuple[int, ...], seconds: float) -> list[dict]:
    """One record per (threads, batch), each timed in its own process. A thread count of 0 becomes the cores this
    process may use (not onnxruntime's own default, one per physical core, nor ``os.cpu_count()``, which counts cores a
    container or affinity mask withholds), so a record's ``threads`` is what ran; more threads than usable cores time
    contention, not the model, and the record says so (``oversubscribed``)."""
    from qsal.provenance import usable_cpus

    cores = usable_cpus()
    return [{"threads": t, **_spawn(kind, target, t, b, seconds), **({"oversubscribed": True} if t > cores else {})}
            for t in (t or cores for t in threads) for b in batches]


def bench_onnx(path: str | os.PathLike, threads: tuple[int, ...] = (1, 0), batches: tuple[int, ...] = (1, 64),
               seconds: float = 2.0) -> dict:
    """Size on disk and, per (threads, batch), latency p50/p95 (ms) and throughput (images/s).

    ``threads=0`` means all cores this process may use. Each configuration runs in its own process.
    """
    from qsal.runtime import read_metadata

    _check_settings(tuple(threads), tuple(batches), seconds)
    from qsal.checkpoint import PICKLE_SUFFIXES

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise QsalError(f"{path} is a PyTorch pickle; bench times the deployed ONNX file (qsal never unpickles files: "
                        "that can run code): export the .safetensors checkpoint with `qsal export`, then bench the .onnx")
    if path.is_dir():
        hint = f"; e.g. {path / 'model.onnx'}" if (path / "model.onnx").is_file() else " (qsal export writes one)"
        raise QsalError(f"{path} is a folder; bench times one ONNX file: pass its path{hint}")
    if path.suffix in (".safetensors", ".json") and path.is_file():
        raise QsalError(f"{path} is a checkpoint; bench times the deployed file: export it first with "
                        f"`qsal export {path.with_suffix('.safetensors')}`, then bench the .onnx it writes")
    meta = read_metadata(path)  # a missing, empty or foreign file is refused here, before any worker starts
    fixed = _fixed_batch(path)
    if fixed is not None:  # the graph takes no other batch size: time the one it takes
        batches = (fixed,)
    runs = _timed_runs("onnx", str(path), tuple(threads), tuple(batches), seconds)
    from qsal.provenance import environment

    from qsal.export.card_storage import deployed_kernels
    from qsal.run_folder import file_sha256

    # what was timed, how, where and with what (CPU, cores usable, onnxruntime version, when): a latency means
    # nothing alone
    result = {"model": str(path.resolve()), "sha256": file_sha256(path), "size_bytes": path.stat().st_size,
              "measured": _what_is_timed(seconds), "deployed": deployed_kernels(meta), "runs": runs,
              "environment": environment()}
    if fixed is not None:
        result["fixed_batch"] = fixed
    from qsal.runtime import kernel_notes_here

    # timed on the exact u8 x u8 kernels where this CPU's fast ones saturate, not quite as "deployed" says
    result.update(kernel_notes_here(meta))
    return result


def _what_is_timed(seconds: float) -> dict:
    return {"timed": "the ONNX graph's forward pass (Runtime.run_normalized) on an already-normalised float32 batch: "
                     "no image decoding, resizing or normalisation",
            "input": "standard normal values, numpy seed 0", "warmup_calls": WARMUP_CALLS,
            "min_seconds_per_configuration": seconds, "min_calls": MIN_CALLS,
            "session": "onnxruntime defaults (ORT_ENABLE_ALL, CPU provider), intra-op threads as in each run, inter-op "
                       "1, but on an x86 CPU without VNNI session.x64quantprecision for a file whose 8-bit sums "
                       "saturate there (u8u8_kernels); each (threads, batch) in a fresh process",
            "throughput": "images scored / seconds the timed calls took"}


def _fixed_batch(path: Path) -> int | None:
    """The batch size the graph's input fixes, or ``None`` where it is dynamic."""
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return dim[0].dim_value if dim and dim[0].HasField("dim_value") and dim[0].dim_value >= 1 else None


def bench_torch(checkpoint: str | os.PathLike, threads: tuple[int, ...] = (1,), batches: tuple[int, ...] = (1, 64),
                seconds: float = 2.0) -> dict:
    """The same measurements for PyTorch eager inference of a checkpoint (the baseline a user has)."""
    from qsal.checkpoint import read_meta, resolve_checkpoint_path

    _check_settings(tuple(threads), tuple(batches), seconds)
    read_meta(resolve_checkpoint_path(checkpoint))
    runs = _timed_runs("torch", str(checkpoint), tuple(threads), tuple(batches), seconds)
    return {"model": str(checkpoint), "runs": runs}


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "TARGET"), required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    kind, target = a.worker
    fn = _worker_onnx if kind == "onnx" else _worker_torch
    try:
        print(json.dumps(fn(target, a.threads, a.batch, a.seconds)))
    except QsalError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _main()
