"""Training throughput (images/s) per model: float32 vs bfloat16 autocast, with and without channels-last.

One training step is what ``qsal.train.fit`` does per batch: the model seen through
``qsal.precision.TrainingForward``, the classification loss in float32, backward, an Adam step.
Inputs are random tensors of the dataset's shape (throughput does not depend on pixel values).
Variants and thread counts are interleaved round by round so that load from other processes hits
them alike; each cell is the median over rounds.

Writes ``benchmarks/results/train_throughput.json`` and ``.md``.

    python benchmarks/train_throughput.py [--threads 1 2] [--rounds 5] [--steps 10] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, markdown_table  # noqa: E402

from qsal._atomic import write_json_atomic, write_text_atomic  # noqa: E402
from qsal.data.registry import TASK_MULTICLASS  # noqa: E402
from qsal.models import create_model  # noqa: E402
from qsal.precision import TrainingForward, cpu_has_native_bf16  # noqa: E402
from qsal.provenance import environment  # noqa: E402
from qsal.train import ClassificationStep  # noqa: E402

# (model, channels, image side, classes, the dataset whose shape this is)
MODELS = [("small_cnn", 1, 28, 10, "mnist"), ("resnet18", 1, 28, 2, "pneumoniamnist"),
          ("resnet20", 3, 32, 10, "cifar10"), ("edge_mbv2", 1, 28, 2, "breastmnist")]
VARIANTS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def _variant_name(precision: str, channels_last: bool) -> str:
    return precision + ("+channels_last" if channels_last else "")


def _trainer(name, channels, side, classes, precision, channels_last, batch, seed):
    torch.manual_seed(seed)
    model = create_model(name, classes, channels, side)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = model if precision == "fp32" else TrainingForward(model, precision, torch.device("cpu"))
    forward.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = ClassificationStep(TASK_MULTICLASS)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, side, side, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), generator=gen)

    def run(steps: int) -> tuple[float, float]:
        """Wall seconds and this process's CPU seconds for ``steps`` training steps."""
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            loss = step(forward, x, y)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0, time.process_time() - c0

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per round and cell")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--models", nargs="+", default=[m[0] for m in MODELS])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2 rounds x 2 steps: a smoke test, not the benchmark")
    ap.add_argument("--shared-cpu", action="store_true",
                    help="say in the table that other jobs were using the cores during the measurement")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps = 2, 2
    variants = VARIANTS if cpu_has_native_bf16() else VARIANTS[:2]  # emulated bf16 is not a candidate
    cells = {}
    for name, channels, side, classes, dataset in (m for m in MODELS if m[0] in args.models):
        for precision, cl in variants:  # one trainer per variant, timed under each thread count
            run = _trainer(name, channels, side, classes, precision, cl, args.batch, args.seed)
            for threads in args.threads:
                torch.set_num_threads(threads)
                run(2)  # warm-up: oneDNN primitive creation, allocator
                cells[(name, dataset, side, threads, precision, cl)] = {"run": run, "seconds": [], "cpu_seconds": []}
    for r in range(args.rounds):
        for key, cell in cells.items():  # interleaved: every cell once per round
            torch.set_num_threads(key[3])
            wall, cpu = cell["run"](args.steps)
            cell["seconds"].append(wall)
            cell["cpu_seconds"].append(cpu)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    rows = []
    for (name, dataset, side, threads, precision, cl), cell in cells.items():
        med, cpu = statistics.median(cell["seconds"]), statistics.median(cell["cpu_seconds"])
        rows.append({"model": name, "shape_of": dataset, "image_px": side, "threads": threads,
                     "variant": _variant_name(precision, cl), "precision": precision, "channels_last": cl,
                     "ms_per_step": 1000 * med / args.steps, "images_per_s": args.batch * args.steps / med,
                     "cpu_ms_per_step": 1000 * cpu / args.steps, "rounds_s": cell["seconds"],
                     "rounds_cpu_s": cell["cpu_seconds"]})
    base = {(r["model"], r["threads"]): r for r in rows if r["variant"] == "fp32"}
    for r in rows:
        r["speedup_vs_fp32"] = r["images_per_s"] / base[(r["model"], r["threads"])]["images_per_s"]
        r["cpu_speedup_vs_fp32"] = base[(r["model"], r["threads"])]["cpu_ms_per_step"] / r["cpu_ms_per_step"]
    config = {"batch": args.batch, "rounds": args.rounds, "steps": args.steps, "threads": args.threads,
              "seed": args.seed, "optimizer": "adam", "input": "random tensors of the dataset's shape",
              "native_bf16": cpu_has_native_bf16(), "shared_cpu": args.shared_cpu, "quick": args.quick}
    env = environment()
    write_json_atomic(RESULTS / "train_throughput.json", {"config": config, "rows": rows, "environment": env})
    table = markdown_table(rows, [("model", "model"), ("image_px", "px"), ("threads", "threads"), ("variant", "variant"),
                                  ("ms_per_step", "ms / step"), ("images_per_s", "images/s"),
                                  ("speedup_vs_fp32", "x fp32"), ("cpu_ms_per_step", "CPU ms / step"),
                                  ("cpu_speedup_vs_fp32", "x fp32 (CPU time)")])
    note = ("**Measured while other jobs shared the cores**: wall-clock numbers (ms / step, images/s) are low and "
            "noisy; rerun quietly before quoting them. The CPU-time columns (this process's CPU seconds per step) "
            "are less sensitive to the load, and at 1 thread approximate a quiet wall clock.\n\n"
            if args.shared_cpu else "")
    quick = "**Smoke test (`--quick`): 2 rounds x 2 steps, not a measurement.**\n\n" if args.quick else ""
    md = (f"# Training throughput: float32 vs bfloat16 autocast (channels-last)\n\n{quick}{note}"
          f"One `fit` training step (forward through `TrainingForward`, float32 loss, backward, Adam), batch "
          f"{args.batch}, random inputs of each dataset's shape; median of {args.rounds} interleaved rounds of "
          f"{args.steps} steps. CPU: {env['cpu']} ({env['cpu_count']} cores), native bf16: "
          f"{config['native_bf16']}; torch {env['versions']['torch']}; {env['utc']}.\n\n{table}\n\n"
          f"Regenerate: `python benchmarks/train_throughput.py` (add `--shared-cpu` if the cores are busy).\n")
    write_text_atomic(RESULTS / "train_throughput.md", md)
    print(md)


if __name__ == "__main__":
    main()
