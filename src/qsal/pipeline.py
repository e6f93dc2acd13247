"""The workflows behind the CLI: train, evaluate, quantize and export a checkpoint, each one call.

Each function reads and writes files (checkpoints, metrics JSON, ONNX) and returns a summary dict;
the CLI prints it. Python users can call these or the lower-level API they are built from.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

from qsal._atomic import write_json_atomic
from qsal.data import ImageSplit, data_meta, get_info, load_split
from qsal.data.checks import require_training_classes, require_validation_classes
from qsal.data.folder import check_same_listing
from qsal.checkpoint import check_model_fits_data, trained_saliency_guided
from qsal.errors import QsalError
from qsal.export.card_sources import write_card
from qsal.metrics.operating_point import (DEFAULT_RULE, describe_operating_point, parse_rule, require_binary_for_rule,
                                          resolve_positive_label)
from qsal.provenance import environment
from qsal.scoring import evaluate_model, evaluate_onnx
from qsal.train import TrainConfig, check_augmentation_fits

__all__ = ["dataset_task", "dataset_info", "train_model", "evaluate_checkpoint", "quantize_checkpoint", "export_checkpoint",
           "write_card", "evaluate_onnx", "data_meta", "load_splits", "split_seed"]


def split_seed(meta: dict) -> int:
    """The seed that split the model's data (a folder's train/val/test, MNIST's and CIFAR-10's validation slice):
    recorded at training (``dataset.split_seed``), else the checkpoint's own seed (a model trained before it was
    recorded; a quantized one's may be its fine-tune's), else 0. Scoring or fine-tuning on another seed's split
    would count images the model trained on as test or validation images."""
    seed = (meta.get("dataset") or meta.get("data") or {}).get("split_seed", meta.get("seed"))
    return int(seed) if seed is not None else 0


def load_splits(dataset: str, data_dir=None, size=None, download=False, seed: int = 0,
                n_channels: int | None = None) -> tuple[ImageSplit, ...]:
    """``(train, val, test)`` of a dataset; a training split with a single class is refused (nothing to learn).
    ``n_channels``: a folder dataset read for a model with that many channels (``None``: as its images are)."""
    splits = tuple(load_split(dataset, s, data_dir, size=size, download=download, seed=seed, n_channels=n_channels)
                   for s in ("train", "val", "test"))
    require_training_classes(splits[0])
    return splits


def _write_metrics(out: Path, metrics, extra: dict) -> Path:
    from qsal.run_folder import file_sha256

    # the weights these numbers are about: a model card (or a reader) beside other weights can tell they are not theirs
    weights = out / "best.safetensors"
    sha = {"checkpoint_sha256": file_sha256(weights)} if weights.is_file() else {}
    return write_json_atomic(out / "metrics.json", {**extra, **sha, "test": metrics.to_dict(),
                                                    "environment": environment()})


# whose scores chose a quantized model's threshold: its fake-quantized forward in PyTorch, not the deployed file's
FAKE_QUANTIZED_SCORES = "fake-quantized PyTorch model"


def _decide_and_record(net, val: ImageSplit, checkpoint: Path, *, positive_class, operating_point: str,
                       temperature_scaling: bool, scores: str = "PyTorch model") -> dict:
    """Choose the decision (positive class, threshold, temperature) on the validation split and store it in
    the checkpoint's JSON sidecar, where export, evaluate and predict read it. ``scores``: whose logits chose it."""
    from qsal.checkpoint import read_meta
    from qsal.metrics import choose_decision, predict_logits

    x, y = val.tensors()
    # whose scores chose it (recorded): the exported artifact inherits this threshold
    decision = choose_decision(predict_logits(net, x), y.numpy(), val.info, positive_class=positive_class,
                               rule=operating_point, temperature_scaling=temperature_scaling, scores=scores)
    write_json_atomic(Path(checkpoint).with_suffix(".json"), {**read_meta(checkpoint), "decision": decision})
    return decision


def _finish(out: Path, net, test: ImageSplit, decision: dict, seed: int, extra: dict):
    """Test metrics of the PyTorch model at its decision -> metrics.json + reliability.png; returns ``Metrics``."""
    from qsal.metrics import evaluate, save_reliability_diagram

    metrics = evaluate(net, test, decision=decision, seed=seed)
    _write_metrics(out, metrics, extra)
    save_reliability_diagram({"test": metrics.reliability}, out / "reliability.png",
                             title=f"{test.info.name} test: ECE {metrics.ece:.3f} (T={metrics.temperature:.2f})")
    return metrics


def _summary(checkpoint, metrics, model: str = "the PyTorch model") -> dict:
    op = metrics.operating_point
    scored = f"{model}, test split" + (
        f"; positive class {metrics.positive_class}: accuracy, sensitivity and specificity '@ 0.5' at probability "
        "0.5, '@ op' (JSON: *_at_op) at "
        + (describe_operating_point(op, metrics.positive_class) if op and op.get("threshold") is not None
           else "the operating point") if metrics.positive_class is not None else "")
    m = metrics.to_dict()  # JSON-safe: an undefined figure (NaN) is None, and m["undefined"] says why
    s = {"checkpoint": str(checkpoint), "scored": scored, "test_auc": m["auc"], "test_acc": m["acc"],
         "auc_95ci": m["ci"].get("auc"), **{k: m[k] for k in (
             "positive_class", "sensitivity", "specificity", "operating_point", "sensitivity_at_op",
             "specificity_at_op", "ppv_at_op", "npv_at_op", "accuracy_at_op", "ece", "temperature")}}
    # an undefined figure stays, as None (printed '—'), beside its reason; one that does not apply is left out
    named = {"auc": "test_auc", "acc": "test_acc"}  # the summary's names for Metrics' fields
    undefined = {named.get(k, k): why for k, why in m["undefined"].items() if named.get(k, k) in s}
    return {**{k: v for k, v in s.items() if v is not None or k in undefined},
            **({"undefined": undefined} if undefined else {})}


def train_model(dataset: str, model: str, config: TrainConfig, out_dir: str | os.PathLike | None = None, *,
                data_dir=None, size: int | None = None, download: bool = False, saliency_guided: bool = False,
                sgt_k: float = 0.5, sgt_lambda: float = 1.0, pact_bits: int | None = None,
                sgt_target: str = "log_softmax", positive_class: str | int | None = None, operating_point: str | None = None,
                temperature_scaling: bool = False, resume: bool = False, force: bool = False,
                split_seed: int | None = None) -> dict:
    """Train ``model`` on ``dataset`` (optionally PACT-quantized and/or saliency-guided), choose its
    operating point (and temperature) on validation, evaluate on test.

    ``split_seed``: the seed that draws a seeded split (a folder's train/validation/test, MNIST's and CIFAR-10's
    validation slice); by default ``config.seed``, so each seed draws its own. A fixed one keeps one test set across
    seeds that differ in weights and data order only.

    ``out_dir`` (default: a fresh ``runs/train/<dataset>-<model>-N``) gets ``best.safetensors`` +
    ``best.json`` (the checkpoint, with its ``decision``), ``metrics.json``, ``reliability.png`` and the
    run fingerprint ``run.json``; a folder holding another run, or this run with other settings, is
    refused unless ``force`` (``resume`` continues this run).
    """
    from qsal.models import create_model
    from qsal.quant.describe import describe_quantization
    from qsal.run_folder import claim_run_folder, fingerprint, fresh_folder, record_run_folder
    from qsal.train import fit, resolve_device, seed_everything

    rule_asked, operating_point = operating_point is not None, operating_point or DEFAULT_RULE  # None: Youden
    parse_rule(operating_point)  # a typo fails before any training
    method = ("sgt+" if saliency_guided else "") + (f"pact-{pact_bits}" if pact_bits is not None else "fp32")
    run_config = {**{k: v for k, v in config.to_dict().items() if k not in ("progress", "device")}, "size": size,
                  "sgt": {"k": sgt_k, "lambda": sgt_lambda, "target": sgt_target} if saliency_guided else None,
                  # named only when asked for: a resume that names another class is another run (its operating point
                  # and sensitivity are about another class), and runs that never named one keep their fingerprint
                  **({"positive_class": str(positive_class)} if positive_class is not None else {}),
                  # likewise: a resume drawing another split would score on images it trained on (one equal to
                  # --seed draws the split a run without it draws: the same run)
                  **({"split_seed": int(split_seed)} if split_seed is not None and split_seed != config.seed else {})}
    out = Path(out_dir) if out_dir is not None else fresh_folder("runs/train", f"{Path(dataset).name}-{model}")
    fp = fingerprint(dataset, model, method, run_config)
    claim_run_folder(out, fp, resume=resume, force=force, write=False)
    drawn_by = config.seed if split_seed is None else int(split_seed)
    train, val, test = load_splits(dataset, data_dir, size, download, drawn_by)
    if split_seed is not None and train.split_seed is None:  # recorded, it would read as if it had chosen the split
        raise QsalError(f"split_seed {split_seed}: {dataset} comes with its official train/validation/test splits, "
                        "which no seed draws; drop it (it applies to folders, and to MNIST's and CIFAR-10's "
                        "validation slice)")
    require_validation_classes(val, config.select_on, operating_point)
    info = train.info
    resolve_positive_label(info, positive_class)  # a wrong class name fails before any training
    if info.family == "folder" and info.positive_class is not None and positive_class is None:
        # a folder has no table row naming its clinically positive class: say which one sensitivity will be about
        print(f"note: positive class {info.positive_class!r} (the second of the class folders, alphabetically): "
              "sensitivity, specificity and the operating point are about it; pass --positive-class NAME for the "
              "other", file=sys.stderr)
    if rule_asked:
        require_binary_for_rule(info)
    resolve_device(config.device)  # as does --device cuda without one
    seed_everything(config.seed)  # the initial weights are part of the run
    net = create_model(model, info.num_classes, info.n_channels, int(train.images.shape[1]))
    check_augmentation_fits(config, train)
    record_run_folder(out, fp, force=force)  # every input is good: only now does the folder appear (or clear)
    meta = {"dataset": {**data_meta(train), "split_seed": drawn_by}, "quant": None}
    step = None
    if saliency_guided:
        from qsal.saliency import SaliencyGuidedStep

        step = SaliencyGuidedStep(info.task, k=sgt_k, lam=sgt_lambda, seed=config.seed, target=sgt_target)
    if pact_bits is not None:
        # PACT from scratch: a short FP32 warm-up (a quarter of the epochs) first, so the clipping levels
        # are calibrated on meaningful activations; clips calibrated on an untrained net are tiny and
        # cap the logits, and the paper's fixed alpha=10 leaves 2-3-bit codes all zero.
        from qsal.quant import PACTConfig, quantize

        warmup = max(1, config.epochs // 4)
        warmup_seconds = fit(net, train, val, replace(config, epochs=warmup), out / "fp32_warmup", step=step,
                             meta=meta).seconds
        qcfg = PACTConfig(bits=pact_bits)
        net = quantize(net, qcfg, calibration=train)
        meta["quant"] = qcfg.to_dict()
        meta["fp32_warmup_epochs"] = warmup
        config = replace(config, epochs=max(1, config.epochs - warmup))
    result = fit(net, train, val, config, out, step=step, meta=meta)
    if pact_bits is not None:  # the record covers the whole run: warm-up epochs and seconds, then PACT's
        result.seconds += warmup_seconds
    decision = _decide_and_record(net, val, result.best_path, positive_class=positive_class,
                                  operating_point=operating_point, temperature_scaling=temperature_scaling)
    metrics = _finish(out, net, test, decision, config.seed, {
        "checkpoint": str(result.best_path), "best_epoch": result.best_epoch, "train_seconds": result.seconds,
        "config": config.to_dict(), "seed": config.seed, "dataset": dataset, "model": model, "quant": meta["quant"],
        "decision": decision, "quantization": describe_quantization(net),
        "fp32_warmup_epochs": meta.get("fp32_warmup_epochs"),  # config.epochs: the PACT epochs after it
        "saliency_guided": step.describe() if saliency_guided else None})
    return {**_summary(result.best_path, metrics), "best_epoch": result.best_epoch,
            "train_seconds": round(result.seconds, 1)}


def dataset_task(checkpoint: str | os.PathLike) -> str:
    """The task (binary, multi-class, ...) of the dataset a checkpoint was trained on."""
    from qsal.checkpoint import read_meta, resolve_checkpoint_path

    meta = read_meta(resolve_checkpoint_path(checkpoint))
    task = (meta.get("dataset") or {}).get("task")
    return task if isinstance(task, str) else dataset_info(_dataset_name(meta, None)).task


def dataset_info(name: str, n_channels: int | None = None):
    """The ``DatasetInfo`` of a table name or ``folder:PATH`` (without loading images; a folder's channels are
    ``n_channels``, a model's, or as its images are)."""
    from qsal.data.folder import folder_info, folder_root

    return folder_info(folder_root(name), n_channels) if name.startswith("folder:") else get_info(name)


def _dataset_name(meta: dict, dataset: str | None) -> str:
    name = dataset or (meta.get("dataset") or meta.get("data") or {}).get("name")
    if not name:
        raise QsalError("the checkpoint does not name its dataset; pass --dataset")
    return name


def evaluate_checkpoint(checkpoint: str, *, dataset: str | None = None, split: str = "test", data_dir=None,
                        size: int | None = None, out: str | None = None, other_dataset: bool = False) -> dict:
    """Metrics of a checkpoint or an exported ``.onnx`` file (``scoring.evaluate_model``)."""
    return evaluate_model(checkpoint, dataset=dataset, split=split, data_dir=data_dir, size=size, out=out,
                          other_dataset=other_dataset)


def quantize_checkpoint(checkpoint: str, qconfig, out_dir: str | os.PathLike | None = None, *, epochs: int = 5,
                        lr: float = 1e-4, data_dir=None, seed: int = 0, progress: bool = True, step=None,
                        train_subset: int | None = None, operating_point: str | None = None,
                        temperature_scaling: bool | None = None, resume: bool = False, force: bool = False,
                        train_config: TrainConfig | None = None, num_calibration_given: bool | None = None) -> dict:
    """Quantize a float checkpoint with ``qconfig`` (PTQ: calibrate; QAT/PACT: also fine-tune ``epochs``,
    on ``train_subset`` images of the training split if given). ``train_config`` gives the whole fine-tune
    schedule instead (a study's ``finetune``; its seed is ``seed``), ``epochs`` and ``lr`` are then unused.

    ``out_dir`` (default: a fresh ``runs/quantized/<dataset>-<model>-<method>-N``) gets ``best.safetensors`` (the quantized
    model, reloadable with ``load_checkpoint``), ``metrics.json`` with test metrics of the fake-quantized
    model and the fingerprint ``run.json`` (see ``train_model`` for ``resume``/``force``). The decision
    is chosen again on validation for the quantized model, with the parent's positive class, rule and
    temperature scaling unless ``operating_point`` / ``temperature_scaling`` are given.
    ``num_calibration_given``: the config's ``num_calibration`` was asked for (then it must not exceed the training
    images) rather than its default (an upper bound); ``None`` takes any value but the default as asked for.
    """
    from qsal.checkpoint import load_checkpoint, resolve_checkpoint_path, save_checkpoint
    from qsal.quant import PACTConfig, QATConfig, qat_callbacks, quantize
    from qsal.quant.api import skip_problem
    from qsal.quant.describe import describe_quantization
    from qsal.run_folder import claim_run_folder, file_sha256, fingerprint, fresh_folder, record_run_folder
    from qsal.train import fit, resolve_device

    model, meta = load_checkpoint(checkpoint)
    checkpoint = resolve_checkpoint_path(checkpoint)  # x.json names x.safetensors: the parent is the weights file
    if meta.get("quant"):
        raise QsalError(f"{checkpoint} is already quantized ({meta['quant']['method']}); start from the FP32 checkpoint")
    if (problem := skip_problem(model, getattr(qconfig, "skip", ()), meta["arch"]["name"])) is not None:
        raise QsalError(f"--skip {problem}")
    parent = meta.get("decision") or {}
    rule = operating_point or (parent.get("operating_point") or {}).get("rule") or DEFAULT_RULE
    parse_rule(rule)
    if temperature_scaling is None:
        temperature_scaling = bool(parent.get("temperature_scaling"))
    name = _dataset_name(meta, None)
    label = f"{qconfig.label}".replace("/", "_")
    # named like a training run's folder (dataset-model), then the method: "pact-4-1" alone did not say whose it was
    out = Path(out_dir) if out_dir is not None else fresh_folder(
        "runs/quantized", f"{Path(str(name)).name}-{meta['arch']['name']}-{label}")
    if out.resolve() == Path(checkpoint).resolve().parent:  # --force there would replace the model being read
        raise QsalError(f"--out {out} is the folder of the checkpoint it quantizes ({checkpoint}); its files would "
                        "be replaced by the quantized model's: choose another --out")
    run_config = {"quant": qconfig.to_dict(), "epochs": epochs, "lr": lr, "seed": seed, "train_subset": train_subset,
                  "train_config": train_config.to_dict() if train_config is not None else None,
                  "parent": str(Path(checkpoint).resolve()),
                  # what the parent is, wherever the folders are: a resume elsewhere (a study copied from a GPU
                  # machine) is the same run, one from a retrained parent at the same path is not
                  "parent_sha256": file_sha256(checkpoint),
                  "step": step.describe() if hasattr(step, "describe") else None}
    fp = fingerprint(name, meta["arch"]["name"], label, run_config)
    claim_run_folder(out, fp, resume=resume, force=force, write=False)
    size = (meta.get("dataset") or {}).get("image_size")
    channels = meta["arch"].get("in_channels")  # a folder is read as the parent was trained on it
    check_model_fits_data(meta["arch"], dataset_info(name, channels), str(checkpoint))
    # the parent's split, whatever --seed (which draws the calibration images and seeds the fine-tune) says
    train, val, test = load_splits(name, data_dir, size, seed=split_seed(meta), n_channels=channels)
    check_same_listing(train, (meta.get("dataset") or {}).get("listing_sha256"), str(checkpoint))
    if operating_point is not None:
        require_binary_for_rule(train.info)
    asked = getattr(qconfig, "num_calibration", None)
    if num_calibration_given is None:  # the API cannot tell an explicit default from none: a default is "up to"
        num_calibration_given = asked != type(qconfig)().num_calibration if asked is not None else False
    if asked is not None and asked > len(train) and num_calibration_given:
        # a default reads "up to N"; a number asked for is recorded, so it must be the number used
        raise QsalError(f"num_calibration {asked} is more than the {len(train)} training images of {name}; pass "
                        f"--num-calibration {len(train)} or fewer")
    cfg = None  # the fine-tune's schedule (QAT/PACT); PTQ and weight-only train nothing
    if isinstance(qconfig, (QATConfig, PACTConfig)):
        cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed, progress=progress) if train_config is None \
            else replace(train_config, seed=seed, progress=progress)
    require_validation_classes(val, cfg.select_on if cfg else None, rule)
    if cfg is not None:
        check_augmentation_fits(cfg, train)
    if train_config is not None:
        resolve_device(train_config.device)
    n_calibration = getattr(qconfig, "num_calibration", None)
    # --seed draws the calibration images (quantize() alone takes a seed-0 draw): seeds are independent replicates
    qmodel = quantize(model, qconfig, calibration=train.subset(n_calibration, seed) if n_calibration else train)
    record_run_folder(out, fp, force=force)  # every input is good: only now does the folder appear (or clear)
    guided_step = hasattr(step, "describe") and step.describe().get("step") == "saliency_guided"
    if guided_step and not trained_saliency_guided(meta):  # a note once every input is checked, not a refusal
        print(f"note: {checkpoint} was not trained saliency-guided; qsal's SGT+PACT fine-tunes an SGT parent "
              "(`qsal train --saliency-guided`), and its tables and cards compare SGT+PACT with that parent",
              file=sys.stderr)
    if train_subset:  # fine-tune on a seeded subset (a CPU-time budget), calibrated on the full split
        train = train.subset(train_subset, seed)
    # the parent by absolute path (a card written from another folder finds it) and by content (a parent retrained
    # in place since is not compared with: export.card_sources.write_card)
    parent_path = str(Path(checkpoint).resolve())
    qmeta = {"dataset": {**(meta.get("dataset") or data_meta(train)), "split_seed": split_seed(meta)},
             "quant": qconfig.to_dict(), "calibration_images": qmodel.qsal_calibration_images,  # num_calibration: at most
             "parent_checkpoint": parent_path, "parent_sha256": run_config["parent_sha256"]}
    seconds, best_epoch = 0.0, None
    if cfg is not None:
        result = fit(qmodel, train, val, cfg, out, step=step, meta=qmeta, callbacks=qat_callbacks(qconfig))
        path, seconds, best_epoch = result.best_path, result.seconds, result.best_epoch
    else:
        path = save_checkpoint(qmodel, out / "best.safetensors", {**qmeta, "arch": qmodel.qsal_arch, "seed": seed})
    decision = _decide_and_record(qmodel, val, path, positive_class=parent.get("positive_label"),
                                  operating_point=rule, temperature_scaling=temperature_scaling,
                                  scores=FAKE_QUANTIZED_SCORES)
    # what made this model, as train_model's metrics.json says it: the fine-tune's settings and, for SGT+PACT,
    # the saliency-guided step (a PACT and an SGT+PACT result must not read alike)
    method = ("sgt+" if step is not None else "") + qconfig.label
    metrics = _finish(out, qmodel, test, decision, seed, {
        "checkpoint": str(path), "method": method, "dataset": name, "model": meta["arch"]["name"],
        "quant": qconfig.to_dict(), "calibration_images": qmodel.qsal_calibration_images, "seed": seed,
        "config": cfg.to_dict() if cfg is not None else None,
        "best_epoch": best_epoch, "train_seconds": seconds, "parent_checkpoint": parent_path, "decision": decision,
        "quantization": describe_quantization(qmodel),
        "saliency_guided": step.describe() if hasattr(step, "describe") else None})
    # the fake-quantized model's numbers: its ONNX file rounds alike but not always identically (onnxruntime's kernels)
    return {**_summary(path, metrics, "the fake-quantized PyTorch model (the deployed file can differ a little: `qsal "
                                      "export` it, then `qsal evaluate model.onnx` gives the file's own numbers)"),
            "method": method}


def export_checkpoint(checkpoint: str, out: str | os.PathLike | None = None, card: bool = True, *,
                      force: bool = False, data_dir=None) -> dict:
    """Export a checkpoint (float or quantized) to ONNX with its preprocessing and decision (positive class,
    operating point, temperature) in the metadata, and (``card``) a model card beside it with the
    *artifact's* test metrics and measured latency.

    ``out`` defaults to ``model.onnx`` beside the checkpoint; an existing file is never overwritten
    unless ``force``.
    """
    from qsal._atomic import staging_dir
    from qsal.checkpoint import load_checkpoint, resolve_checkpoint_path
    from qsal.data.registry import resolve_data_dir
    from qsal.export import export_onnx
    from qsal.run_folder import file_sha256, refuse_overwrite

    out = refuse_overwrite(Path(out) if out is not None else Path(checkpoint).with_name("model.onnx"), force)
    cards = (out.with_suffix(".card.md"), out.with_suffix(".card.json")) if card else ()
    # the card's files are outputs too: someone's notes named like them are not overwritten either
    for written in cards:
        refuse_overwrite(written, force, written_for=str(out))
    if card:  # named for the card's metrics (or by $QSAL_DATA_DIR): a typo must not quietly leave it unscored
        resolve_data_dir(data_dir, must_exist=True)
    model, meta = load_checkpoint(checkpoint)
    checkpoint = resolve_checkpoint_path(checkpoint)  # x.json names x.safetensors: the hash is of the weights
    data = meta.get("dataset") or meta.get("data") or {}  # "data": a checkpoint qsal.fit wrote by itself
    arch = meta["arch"]
    side = data.get("image_size", arch.get("image_size", 28))
    channels = arch["in_channels"]
    preprocessing = {"decode": "qsal.data.folder image reader (PNG/JPEG/DICOM)",
                     "channels": "PIL convert('L')" if channels == 1 else "PIL convert('RGB')",
                     "resize": f"PIL bilinear to {side}x{side} px", "scale": "x / 255",
                     "normalise": {"mean": data.get("mean"), "std": data.get("std")}}
    # The file and its card are made in a staging folder beside --out and moved into place only once all are
    # written: a failed export (bad metrics.json, no data, Ctrl-C) leaves an earlier export (--force) as it was.
    with staging_dir(out) as stage:
        staged = export_onnx(model, stage / out.name, input_shape=(channels, side, side),
                             meta={"data": data, "arch": arch, "quant": meta.get("quant"), "checkpoint": str(checkpoint),
                                   # which weights made this file: a report handed the checkpoint scores this file
                                   # only while it matches (every study file is named best.safetensors)
                                   "checkpoint_sha256": file_sha256(checkpoint),
                                   "decision": meta.get("decision"), "preprocessing": preprocessing})
        if card:
            write_card(checkpoint, staged, data_dir=data_dir)
        for written in (*cards, out):
            try:
                os.replace(stage / written.name, written)
            except OSError as e:
                raise QsalError(f"cannot write {written} ({e.strerror}); choose another --out") from None
    quant = meta.get("quant") or {}
    from qsal.export.card_storage import deployed_kernels, describe_kernels
    from qsal.runtime import kernel_notes_here, read_metadata

    exported = read_metadata(out)
    deployed = deployed_kernels(exported)
    # "bits" is the weights'; "act_bits" only where PTQ's activations differ from them (W7A8)
    result = {"onnx": str(out), "size_bytes": out.stat().st_size, "quant": quant.get("method", "fp32"),
              **{k: deployed[k] for k in ("bits", "act_bits") if k in deployed}, "runs_on": describe_kernels(deployed),
              # the kernels qsal runs it on here where this CPU decides them (no VNNI), as predict and bench will
              **kernel_notes_here(exported)}
    if card:
        result["card"] = str(cards[0])
    return result
