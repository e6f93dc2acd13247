"""One training loop, ``fit``; the loss is a swappable *step* object.

``ClassificationStep`` is plain supervised training; ``qsal.saliency.SaliencyGuidedStep`` adds the
saliency-guided KL term; quantization-aware training is the same loop over a model whose layers
fake-quantize (``qsal.quantize``), with callbacks that freeze observers or BatchNorm late.
The best epoch (validation AUC, the MedMNIST selection rule; on a tie the earlier epoch stays, as MedMNIST's
``>`` comparison keeps it) is saved in safetensors + JSON; a
``last.pt`` (read with ``weights_only=True``) lets a killed run resume where it stopped.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from qsal.checkpoint import load_training_state, save_checkpoint, save_training_state
from qsal.data.arrays import ImageSplit, data_meta
from qsal.data.registry import TASK_MULTILABEL
from qsal.ema import WeightEMA
from qsal.errors import QsalError
from qsal.metrics import acc_score, auc_score, predict_logits, scores_from_logits
from qsal.precision import TrainingForward, resolve_channels_last, resolve_precision
from qsal.train_config import TrainConfig, augment, check_augmentation_fits

# TrainConfig and its augmentation live in train_config.py; imported from here as ever
__all__ = ["augment", "check_augmentation_fits", "TrainConfig", "ClassificationStep", "task_loss", "fit", "FitResult",
           "resolve_device", "seed_everything", "parameter_groups"]


def task_loss(logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Cross-entropy (BCE-with-logits for multi-label), averaged over the batch."""
    if task == TASK_MULTILABEL:
        return F.binary_cross_entropy_with_logits(logits, y.float())
    return F.cross_entropy(logits, y)


def regularization(model: nn.Module) -> torch.Tensor | float:
    """Sum of ``module.regularization()`` terms (e.g. the L2 penalty on PACT clipping levels)."""
    total = 0.0
    for m in model.modules():
        reg = getattr(m, "regularization", None)
        if callable(reg) and m is not model:
            total = total + reg()
    return total


def parameter_groups(model: nn.Module) -> list[dict]:
    """Optimizer parameter groups: the model's trainable parameters with ``TrainConfig``'s options, then
    one group per distinct ``module.param_group()`` (e.g. PACT clipping levels with their own lr)."""
    special: dict[int, dict] = {}
    for m in model.modules():
        options = m.param_group() if callable(getattr(m, "param_group", None)) else None
        if options:
            for p in m.parameters(recurse=False):
                special[id(p)] = options
    groups: dict[tuple, dict] = {}
    for p in model.parameters():
        if p.requires_grad and id(p) in special:
            key = tuple(sorted(special[id(p)].items()))
            groups.setdefault(key, {**special[id(p)], "params": []})["params"].append(p)
    main = [p for p in model.parameters() if p.requires_grad and id(p) not in special]
    return [{"params": main}, *groups.values()]


@dataclass
class ClassificationStep:
    """The plain supervised step: task loss plus the model's own regularisation terms."""

    task: str

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        logits = model(x)
        loss = task_loss(logits, y, self.task) + regularization(model)
        return {"loss": loss, "logits": logits}

    def describe(self) -> dict:
        return {"step": "classification"}


@dataclass
class FitResult:
    """What ``fit`` produced: the best checkpoint and the per-epoch history."""

    best_path: Path | None
    best_epoch: int
    best_score: float
    history: list = field(default_factory=list)
    seconds: float = 0.0
    best_state: dict | None = field(default=None, repr=False)  # in memory when there is no out_dir


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise QsalError("--device cuda was asked for but no CUDA device is available; use --device auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _validation_score(model, xv, yv, task, select_on, device) -> tuple[float, dict] | None:
    """(selection score, validation metrics); ``None`` when the model's outputs are not all finite: it diverged."""
    logits = predict_logits(model, xv, device=str(device))
    if not np.isfinite(logits).all():
        return None
    loss = float(task_loss(torch.from_numpy(logits), yv, task))
    scores = scores_from_logits(logits, task)
    auc, acc = auc_score(yv.numpy(), scores, task), acc_score(yv.numpy(), scores, task)
    score = {"auc": auc, "acc": acc, "loss": -loss}[select_on]
    return (score if not math.isnan(score) else -math.inf), {"val_loss": loss, "val_auc": auc, "val_acc": acc}


def fit(model: nn.Module, train: ImageSplit, val: ImageSplit, config: TrainConfig, out_dir: str | Path | None = None,
        step: Callable | None = None, meta: dict | None = None,
        callbacks: list[Callable[[nn.Module, int, int], None]] | None = None, resume: bool = True) -> FitResult:
    """Train ``model`` on ``train``, select on ``val``, save the best epoch under ``out_dir``.

    Args:
        step: ``step(model, x, y) -> {"loss", "logits"}``; defaults to ``ClassificationStep``. A step
            with random state exposes ``state_dict()`` (tensors) / ``load_state_dict()`` for the resume state.
        meta: extra JSON for the checkpoint (``arch``, ``quant``, ``data``...); config and seed are added.
        callbacks: ``cb(model, epoch, epochs)`` run at the start of every epoch, after ``model.train()``;
            ``None``: a QAT model's ``qat_callbacks`` (its observers and BatchNorm freeze when its config says).
        resume: continue the run whose ``last.pt`` is in ``out_dir`` (said in a note; a finished one trains nothing
            and loads its best epoch); ``False`` refuses a folder holding one.
    Returns:
        ``FitResult``; the model is left with the *best* epoch's weights loaded.
    """
    task = train.info.task
    arch = (meta or {}).get("arch") or getattr(model, "qsal_arch", None)
    info = train.info
    if isinstance(arch, dict) and {"num_classes", "in_channels"} <= set(arch) and \
            (arch["num_classes"], arch["in_channels"]) != (info.num_classes, info.n_channels):
        # a wrong model fails here, not inside torch
        raise QsalError(f"{info.name} has {info.num_classes} classes / {info.n_channels} channels but the model "
                        f"({arch.get('name')}) was built for {arch.get('num_classes')} / {arch.get('in_channels')}; "
                        f"build it for this data: qsal.create_model({arch.get('name')!r}, {info.num_classes}, "
                        f"{info.n_channels})")
    quant = getattr(model, "qsal_quant", None)
    if callbacks is None:
        from qsal.quant import qat_callbacks
        from qsal.quant.config import config_from_dict

        callbacks = qat_callbacks(config_from_dict(quant)) if quant and quant.get("method") == "qat" else []
    if out_dir and not isinstance(arch, dict):  # refused before training, not at the first checkpoint
        raise QsalError("fit(out_dir=...) saves checkpoints that load_checkpoint rebuilds from the model's architecture, "
                        "and this model records none: build it with qsal.create_model, pass meta={'arch': {...}}, or "
                        "leave out_dir out (the best weights are then kept in memory)")
    if out_dir and (Path(out_dir) / "last.pt").is_file() and not resume:
        raise QsalError(f"{out_dir} holds a run (last.pt); pass resume=True to continue it, or another out_dir")
    step = step or ClassificationStep(task)
    device = resolve_device(config.device)
    gen = seed_everything(config.seed)
    model.to(device)
    precision = resolve_precision(config.precision, device)
    channels_last = resolve_channels_last(config.channels_last, precision, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # The step sees the model through TrainingForward (bf16 autocast, float32 logits) when training in bf16.
    forward = model if precision == "fp32" else TrainingForward(model, precision, device)
    ema = WeightEMA(model, config.ema_decay) if config.ema_decay else None
    evaluated = ema.module if ema else model  # what is validated, selected and saved
    x, y = train.tensors()
    xv, yv = val.tensors()
    params = parameter_groups(model)
    if config.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True)
    milestones = sorted({max(1, int(round(f * config.epochs))) for f in config.milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=config.gamma)
    out = Path(out_dir) if out_dir else None
    meta = {**(meta or {}), "arch": arch, **({"quant": quant} if quant and not (meta or {}).get("quant") else {}),
            "train": config.to_dict(),
            "step": step.describe() if hasattr(step, "describe") else {"step": type(step).__name__},
            "seed": config.seed, "data": {**data_meta(train), "source": train.source, "n_train": len(train),
                                          "n_val": len(val)},
            "precision": {"training": precision, "channels_last": channels_last, "evaluation": "fp32"}}
    best = FitResult(None, -1, -math.inf)
    start_epoch, earlier_seconds = 0, 0.0
    precision_runs = [{"from_epoch": 1, "training": precision, "channels_last": channels_last}]
    schedule_change = None  # a run resumed for another number of epochs: which schedule its first epochs had
    # what the run trains on and how (not where the files are: a run moved between machines resumes): a last.pt
    # left by another run in out_dir is not continued as if it were this one. A folder's split as drawn
    # (listing_sha256) too: files renamed, added or removed since draw another split, whose validation and test
    # images the first epochs may have trained on.
    identity = json.loads(json.dumps({"data": {k: meta["data"][k] for k in ("name", "n_train", "n_val",
                                                                            "listing_sha256") if k in meta["data"]},
                                      "step": meta["step"]}, default=str))
    if out and (out / "last.pt").is_file():
        state = load_training_state(out / "last.pt", model)
        _check_same_settings(out, state.get("config"), config)
        if "run" in state:  # last.pt files from before the field: not compared
            _check_same_run(out, state["run"], identity)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        if "step" in state and hasattr(step, "load_state_dict"):
            step.load_state_dict(state["step"])  # e.g. SGT's random-fill generator
        if ema is not None:
            try:
                ema.load_state_dict(state["ema"])
            except (KeyError, TypeError, RuntimeError):
                raise QsalError(f"cannot resume from {out / 'last.pt'}: it holds no usable weight average for "
                                f"ema_decay {config.ema_decay}; delete it to start the training over") from None
        start_epoch = int(state["epoch"]) + 1
        before = _follow_new_schedule(sched, opt, milestones, config, state.get("epochs"))
        if before and start_epoch < config.epochs:
            schedule_change = {"first_epochs_scheduled_for": before if isinstance(before, int) else None,
                               "schedule_changed_after_epoch": start_epoch}
            print(f"note: {out} trained {start_epoch} epoch(s) on the schedule of "
                  f"{before if isinstance(before, int) else 'an unrecorded number of'} epochs; the rest follows the "
                  f"schedule of {config.epochs} (its learning-rate steps at epochs {milestones})", file=sys.stderr)
        elif isinstance(state.get("schedule_change"), dict):  # an earlier invocation changed it: still said
            schedule_change = state["schedule_change"]
        if schedule_change:
            meta["train"] = {**meta["train"], **schedule_change}
        precision_runs = _precision_runs(state.get("precision_runs"), start_epoch, config.epochs, precision,
                                         channels_last, out)
        if len(precision_runs) > 1:  # "mixed" only where the precision itself differed, not only the layout
            trained = {r["training"] for r in precision_runs} - {"unrecorded"}
            meta["precision"] = {**meta["precision"], "by_epoch": precision_runs,
                                 **({"training": "mixed"} if len(trained) > 1 else {})}
        if config.progress:  # a rerun of the same call continues (or, finished, reloads) the run in out_dir
            print(f"note: resuming {out} at epoch {start_epoch + 1} of {config.epochs}" if start_epoch < config.epochs
                  else f"note: {out} holds this run finished; its best epoch is loaded, nothing is trained (another output "
                       "folder trains anew)", file=sys.stderr)
        earlier_seconds = float(state.get("seconds", 0.0))  # the invocations before this one (absent: not recorded)
        best = FitResult(out / "best.safetensors", int(state["best_epoch"]), float(state["best_score"]),
                         list(state.get("history", [])))
        missing = [f for f in (best.best_path, best.best_path.with_suffix(".json")) if not f.is_file()]
        if best.best_epoch > 0 and missing:  # else the end would keep the last epoch's weights, or fail to load them
            raise QsalError(f"cannot resume from {out / 'last.pt'}: the best epoch so far ({best.best_epoch}) was "
                            f"saved as {best.best_path} and its .json, and {missing[0].name} is missing; put it back "
                            "beside last.pt, or delete last.pt to start the training over")
    t0 = time.perf_counter()
    n_batches = math.ceil(len(x) / config.batch_size)
    # Progress: one bar (never nested) on a terminal; one plain line per epoch into a log file or pipe.
    on_terminal = config.progress and sys.stderr.isatty()
    bar = tqdm(total=config.epochs * n_batches, initial=start_epoch * n_batches, desc="training", leave=False,
               disable=not on_terminal, unit="batch")
    for epoch in range(start_epoch, config.epochs):
        model.train()
        for cb in callbacks:  # after train(), so a callback that puts BatchNorm in eval mode keeps it there
            cb(model, epoch, config.epochs)
        order = torch.randperm(len(x), generator=gen)
        running, seen = 0.0, 0
        lr_used = opt.param_groups[0]["lr"]  # this epoch's rate: sched.step() below sets the next epoch's
        for b in range(n_batches):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            xb, yb = x[idx], y[idx]
            xb = augment(xb, config, gen)
            xb, yb = xb.to(device), yb.to(device)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            result = step(forward, xb, yb)
            loss = result["loss"]
            if not torch.isfinite(loss):
                where = f"; the last good checkpoint is {best.best_path}" if best.best_path else ""
                raise QsalError(f"training diverged: loss is {loss.item()} at epoch {epoch + 1}, batch {b + 1}; "
                                f"lower --lr (now {config.lr}){where}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model)
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.update(1)
        sched.step()
        validated = _validation_score(evaluated, xv, yv, task, config.select_on, device)
        if validated is None:  # a finite training loss, but NaN/Inf logits: saving it as "best" would ship it
            where = f"; the last good checkpoint is {best.best_path}" if best.best_path else ""
            raise QsalError(f"training diverged: the model's outputs on the validation images are not finite after "
                            f"epoch {epoch + 1}; lower --lr (now {config.lr}){where}")
        score, val_metrics = validated
        record = {"epoch": epoch + 1, "train_loss": running / seen, **val_metrics, "lr": lr_used}
        best.history.append(record)
        bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{record['train_loss']:.4f}",
                        val_auc=f"{val_metrics['val_auc']:.4f}")
        if config.progress and not on_terminal:
            print(f"epoch {epoch + 1}/{config.epochs}  train_loss {record['train_loss']:.4f}  val_auc "
                  f"{val_metrics['val_auc']:.4f}  val_acc {val_metrics['val_acc']:.4f}  lr {record['lr']:.2g}",
                  file=sys.stderr, flush=True)
        # An undefined validation score (-inf) never beats a defined one; while every score so far is undefined the
        # latest epoch stands in, so a run always ends with a saved model.
        if score > best.best_score or score == best.best_score == -math.inf:
            best.best_score, best.best_epoch = score, epoch + 1
            if out:
                best.best_path = save_checkpoint(evaluated, out / "best.safetensors",
                                                 {**meta, "epoch": epoch + 1, "val": val_metrics,
                                                  **({"weight_ema": ema.describe()} if ema is not None else {})})
            else:
                best.best_state = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
        if out:
            save_training_state(out / "last.pt", {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch,
                **({"step": step.state_dict()} if hasattr(step, "state_dict") else {}),
                **({"ema": ema.state_dict()} if ema is not None else {}),
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
                "config": _resume_settings(config), "run": identity, "epochs": config.epochs,
                "precision_runs": precision_runs, **({"schedule_change": schedule_change} if schedule_change else {}),
                "best_epoch": best.best_epoch, "best_score": best.best_score, "history": best.history,
                "seconds": earlier_seconds + time.perf_counter() - t0})
    bar.close()
    best.seconds = earlier_seconds + time.perf_counter() - t0  # the whole training, resumed or not
    if best.best_score == -math.inf:  # a warning, not progress: printed whatever the progress setting
        print(f"note: no epoch had a defined validation {config.select_on}; the last epoch was kept", file=sys.stderr)
    _restore_best(model, best)
    model.qsal_untrained = False
    return best


def _follow_new_schedule(sched, opt, milestones: list[int], config: TrainConfig, saved_epochs) -> int | str | None:
    """A run resumed for more (or fewer) epochs: its scheduler came back with the old run's learning-rate steps, so
    the epochs ahead would decay at the old epochs. Set the new steps and each group's rate as the new schedule has it
    after the epochs trained (MultiStepLR: initial lr x gamma ** steps passed). Returns the old epoch count (or
    ``"unrecorded"``), ``None`` when the steps are the same."""
    if sorted(sched.milestones) == milestones:
        return None
    sched.milestones = Counter(milestones)
    passed = sum(m <= sched.last_epoch for m in milestones)
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * config.gamma ** passed
    sched._last_lr = [g["lr"] for g in opt.param_groups]
    return saved_epochs if isinstance(saved_epochs, int) and not isinstance(saved_epochs, bool) else "unrecorded"


def _check_same_run(out: Path, recorded, identity: dict) -> None:
    """Refuse to continue ``out/last.pt`` in a run on other data or with another step (``fit``'s ``identity``). A
    folder's listing is compared where the last.pt records one (those from before the field: not compared); another
    listing is ``CannotResume``, which a study answers by starting the cell over."""
    from qsal.run_folder import CannotResume

    # a last.pt without the record (or with a damaged one) is compared as one that records nothing: it differs
    recorded = recorded if isinstance(recorded, dict) else {}
    data = dict(recorded.get("data") or {}) if isinstance(recorded.get("data"), dict) else {}
    step = recorded.get("step")
    was = data.pop("listing_sha256", None)
    now = identity["data"].get("listing_sha256")
    same_data = data == {k: v for k, v in identity["data"].items() if k != "listing_sha256"}
    if not (recorded and same_data and step == identity["step"]):
        raise QsalError(f"cannot resume {out}: its last.pt is from a run on {data or None} with "
                        f"{step.get('step') if isinstance(step, dict) else None}, not this one on {identity['data']} "
                        f"with {identity['step'].get('step')}; choose another out_dir, or delete last.pt to start over")
    if was is not None and was != now:
        why = ("its folder's files changed since it started (added, removed or renamed: the split drawn now is "
               "another, whose validation and test images it may have trained on)")
        raise CannotResume(f"cannot resume {out}: {why}; pass --force to start over on the folder as it is, or "
                           "restore its files", why)


def _precision_runs(saved: list | None, start_epoch: int, epochs: int, precision: str, channels_last: bool,
                    out: Path) -> list[dict]:
    """Which precision trained which epochs: a run resumed where ``auto`` resolves otherwise (a GPU run finished on a
    CPU without bf16) adds an entry and says so; the checkpoint records them all (a ``last.pt`` from before this
    record: its epochs as ``unrecorded``)."""
    here = {"training": precision, "channels_last": channels_last}
    runs = [dict(r) for r in saved] if isinstance(saved, list) and all(isinstance(r, dict) for r in saved) else []
    if not runs:  # a last.pt from before this record: its epochs' precision is not known
        return ([{"from_epoch": 1, "training": "unrecorded", "channels_last": None}] if start_epoch else []) + \
            [{"from_epoch": start_epoch + 1, **here}]
    last = runs[-1]
    if {k: last.get(k) for k in here} != here and start_epoch < epochs:  # a finished run trains nothing here
        print(f"note: resuming {out} in {precision} (channels-last {channels_last}) where its epochs from "
              f"{last.get('from_epoch')} trained in {last.get('training')} (channels-last {last.get('channels_last')}); "
              "the checkpoint records both", file=sys.stderr)
        runs.append({"from_epoch": start_epoch + 1, **here})
    return runs


def _resume_settings(config: TrainConfig) -> dict:
    """The settings a resumed run must share with the run it continues (display and device may change, and
    ``epochs`` may grow: continuing a finished run for more epochs is a resume)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items()
            if k not in ("progress", "device", "epochs")}


def _check_same_settings(out: Path, saved: dict | None, config: TrainConfig) -> None:
    # a rerun into the same folder must not silently continue with the old hyper-parameters
    now = _resume_settings(config)
    changed = sorted(k for k in now if saved is not None and saved.get(k) != now[k])
    if changed:
        k = changed[0]
        raise QsalError(f"cannot resume {out}: {k} changed ({saved.get(k)!r} -> {now[k]!r}); pass --force to start "
                        "over with the new settings, or choose another --out (another out_dir)")


def _restore_best(model: nn.Module, best: FitResult) -> None:
    if best.best_path is not None and Path(best.best_path).is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(best.best_path)))
    elif best.best_state is not None:
        model.load_state_dict(best.best_state)
    model.to("cpu", memory_format=torch.contiguous_format)
