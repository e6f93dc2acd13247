"""``qsal run --dry-run``: what a study will train, with which schedule, and about how long it takes here.

The estimate times a few real training steps of each distinct (model, input shape, batch, precision,
step, augmentation) on this machine, with random inputs of the dataset's shape augmented as ``fit`` augments
them, and multiplies by the images each cell trains on (``epochs x`` the official training split, less the
validation part MNIST and CIFAR-10 hold out of it). It
counts training steps only:
validation, evaluation, export and saliency metrics add some seconds per cell, and fake-quantized
fine-tunes are counted at the float model's step cost (their quantizers make them slower).
"""

from __future__ import annotations

import time

__all__ = ["plan_study", "format_plan", "cell_epochs", "estimate_cells", "format_duration"]


def _seconds_per_image(model_name: str, info, side: int, tc, saliency_guided: bool, cfg, cache: dict,
                       steps: int = 3) -> float:
    import torch

    from qsal.models import create_model
    from qsal.precision import TrainingForward, resolve_channels_last, resolve_precision
    from qsal.saliency import SaliencyGuidedStep
    from qsal.train import ClassificationStep, augment, resolve_device

    device = resolve_device(tc.device)
    precision = resolve_precision(tc.precision, device)
    channels_last = resolve_channels_last(tc.channels_last, precision, device)
    key = (model_name, info.n_channels, side, info.num_classes, tc.batch_size, precision, channels_last, saliency_guided,
           tc.shift_px, tc.hflip, tc.rotate_deg, tc.zoom)
    if key in cache:
        return cache[key]
    torch.manual_seed(0)
    model = create_model(model_name, info.num_classes, info.n_channels, side).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = model if precision == "fp32" else TrainingForward(model, precision, device)
    forward.train()
    step = SaliencyGuidedStep(info.task, k=cfg.sgt.k, lam=cfg.sgt.lam) if saliency_guided else ClassificationStep(info.task)
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(tc.batch_size, info.n_channels, side, side)
    y = torch.randint(0, 2, (tc.batch_size, info.num_classes), device=device) if "multi-label" in info.task \
        else torch.randint(0, info.num_classes, (tc.batch_size,), device=device)

    gen = torch.Generator().manual_seed(0)

    def one():  # a step as qsal.train.fit takes it: the batch augmented on the CPU, then moved
        xb = augment(x, tc, gen).to(device)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss = step(forward, xb, y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    one()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    cache[key] = (time.perf_counter() - t0) / (steps * tc.batch_size)
    return cache[key]


def plan_study(cfg, measure: bool = True) -> dict:
    """Cells of ``cfg`` (a ``RunConfig``) with their resolved schedules; with ``measure``, estimated seconds.

    Returns ``{"n_cells", "rows": [{"dataset", "model", "seeds", "cells", "fine_tunes", "train", "finetune", "n_train",
    "n_fit", "est_seconds", "cell_seconds"}], "est_seconds"}``: ``fine_tunes`` whether a cell uses ``finetune``,
    ``n_fit`` the images an epoch trains on, ``est_seconds`` per
    row for all its seeds, ``cell_seconds`` ``{label: seconds}`` for one seed.
    """
    from qsal.data import held_out_count
    from qsal.precision import resolve_precision
    from qsal.study.config import FINE_TUNED
    from qsal.study.grid import plan_groups
    from qsal.train import resolve_device

    groups = plan_groups(cfg)
    load = _load_average() if measure else None  # before the timed steps add their own
    cache: dict = {}
    rows = []
    for dataset in cfg.datasets:
        info = cfg.dataset_info(dataset)
        side = info.image_size
        n_train = int(info.n_samples.get("train", 0))
        # MNIST and CIFAR-10 have no official validation split: an epoch trains on what qsal.data does not hold out
        n_fit = n_train if info.n_samples.get("val") else n_train - held_out_count(n_train)
        for model in cfg.models:
            mine = [g for g in groups if g[0].dataset == dataset and g[0].model == model]
            train, finetune = cfg.train_configs(dataset, model, cfg.seeds[0], progress=False)
            labels = [c.label for c in mine[0]]
            row = {"dataset": dataset, "model": model, "seeds": len(mine), "cells": labels,
                   "fine_tunes": any(c.kind in FINE_TUNED for c in mine[0]),
                   "n_cells": sum(len(g) for g in mine), "n_train": n_train, "n_fit": n_fit,
                   "folder": info.family == "folder",
                   "train": {k: v for k, v in train.to_dict().items() if k not in ("seed", "progress", "device")},
                   "finetune": {k: v for k, v in finetune.to_dict().items() if k not in ("seed", "progress", "device")}}
            for section, tc in (("train", train), ("finetune", finetune)):
                row[section]["precision_here"] = resolve_precision(tc.precision, resolve_device(tc.device))
            if measure:
                per_cell = {}  # label -> seconds for one seed
                for cell in mine[0]:
                    if cell.kind == "ptq":
                        per_cell[cell.label] = 0.0  # calibration only
                        continue
                    tc = train if cell.kind in ("fp32", "sgt") else finetune
                    guided = cell.kind in ("sgt", "sgt+pact")
                    per_cell[cell.label] = tc.epochs * n_fit * _seconds_per_image(model, info, side, tc, guided,
                                                                                    cfg, cache)
                row["cell_seconds"] = per_cell
                row["est_seconds"] = sum(per_cell.values()) * len(mine)
            rows.append(row)
    out = {"n_cells": sum(r["n_cells"] for r in rows), "rows": rows}
    if measure:
        out["est_seconds"] = sum(r["est_seconds"] for r in rows)
        if load is not None:
            out["load_when_timed"] = load
    return out


def cell_epochs(plan: dict, cell) -> int:
    """The epochs ``cell`` (a ``CellSpec`` of the planned study) trains: its schedule's, or its fine-tune's."""
    row = next(r for r in plan["rows"] if (r["dataset"], r["model"]) == (cell.dataset, cell.model))
    return int(row["train" if cell.kind in ("fp32", "sgt") else "finetune"]["epochs"])


def estimate_cells(plan: dict, cells, trained: dict[str, int] | None = None) -> float:
    """Estimated training seconds of ``cells`` (``CellSpec``s of the planned study) from a measured ``plan``;
    ``trained``: ``{cell id: epochs done}`` of cells a run resumes (``redo.under_way``), which count only the rest."""
    rows = {(r["dataset"], r["model"]): r["cell_seconds"] for r in plan["rows"]}
    total = 0.0
    for c in cells:
        epochs = cell_epochs(plan, c)
        total += rows[(c.dataset, c.model)][c.label] * (1 - min((trained or {}).get(c.id, 0), epochs) / epochs)
    return total


def _load_average() -> dict | None:
    """``{"load_1min", "cores"}``: how busy the machine was when the estimate timed its steps (None where the OS
    does not say). A 2-thread step timed beside a training run took 14x its quiet time here (204 h vs 14.3 h)."""
    import os

    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"load_1min": round(load, 2), "cores": cores}


def format_duration(seconds: float) -> str:
    """``seconds`` as "1.5 h" from an hour up, else "25 min"."""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _rotate_zoom(c: dict) -> str:
    text = f", rotation +-{c['rotate_deg']:g} deg" if c.get("rotate_deg") else ""
    return text + (f", zoom +-{c['zoom']:g}" if c.get("zoom") else "")


def _count(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``: a study of one epoch or cell is common (a smoke test)."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_plan(plan: dict, name: str) -> str:
    """The plan as text: one block per (dataset, model), then the total."""
    lines = [f"study {name}: {_count(plan['n_cells'], 'cell')}"]
    for r in plan["rows"]:
        t, f = r["train"], r["finetune"]
        est = f", ~{format_duration(r['est_seconds'])}" if "est_seconds" in r else ""
        lines.append(f"  {r['dataset']}/{r['model']}: {_count(r['seeds'], 'seed')} x {_count(len(r['cells']), 'cell')} "
                     f"({', '.join(r['cells'])}), {r['n_train']} "
                     + ("training images (the folder's split)" if r.get("folder") else "official training images")
                     + (f" ({r['n_fit']} trained on, the rest held out for validation)"
                        if r.get("n_fit", r["n_train"]) != r["n_train"] else "") + est)
        for label, c in (("train", t), ("finetune", f)) if r["fine_tunes"] else (("train", t),):  # what a cell uses
            lines.append(f"    {label}: {_count(c['epochs'], 'epoch')}, {c['optimizer']} lr {c['lr']:g} wd {c['weight_decay']:g}, "
                         f"batch {c['batch_size']}, milestones {list(c['milestones'])} x{c['gamma']:g}, "
                         f"shift {c['shift_px']} px, hflip {c['hflip']}" + _rotate_zoom(c) + f", precision {c['precision']} "
                         f"({c['precision_here']} here)" + (f", weight EMA {c['ema_decay']:g}" if c.get("ema_decay") else ""))
    if "est_seconds" in plan:
        lines.append(f"estimated training time on this machine: {format_duration(plan['est_seconds'])} "
                     "(training steps with their augmentation only, measured with the current load and thread count)")
        load = plan.get("load_when_timed")
        if load and load["load_1min"] >= 0.5 * load["cores"]:
            lines.append(f"  the machine was busy when the steps were timed (1-min load average {load['load_1min']:g} "
                         f"on {load['cores']} cores): other work slows them, so the estimate is too high; rerun "
                         "--dry-run with nothing else running")
    return "\n".join(lines)
