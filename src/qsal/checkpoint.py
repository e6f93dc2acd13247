"""Checkpoints that never run code on load: weights in safetensors, everything else in JSON.

``<stem>.safetensors`` holds the state dict (quantizer scales and PACT clips included);
``<stem>.json`` holds what is needed to rebuild the model (architecture, quantization config) and
what produced it (training config, dataset, seed, versions, metrics).

The two files form a pair that appears together or not at all: both are written to temporary files
first, the old ``.json`` is removed, the weights are moved into place, and the ``.json`` last. A
``.safetensors`` without its ``.json`` is therefore an interrupted write and is treated as absent.
Everything read back is validated (``validate_meta``; finite weights) before a model is built.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save
from torch import nn

from qsal._atomic import atomic_path
from qsal.errors import QsalError, is_finite_number, is_integer, is_utf8_path, quote
from qsal.metrics.operating_point import validate_decision, validate_labels
from qsal.provenance import environment

__all__ = ["save_checkpoint", "load_checkpoint", "read_meta", "validate_meta", "resolve_checkpoint_path",
           "check_model_fits_data", "save_training_state", "load_training_state", "epochs_trained", "PICKLE_SUFFIXES"]

# files qsal refuses to open (unpickling can run code), named so the refusal can point at the safe format
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"}


def save_checkpoint(model: nn.Module, path: str | os.PathLike, meta: dict) -> Path:
    """Write ``path`` (``.safetensors``) and its ``.json`` sidecar as one atomic pair (see the module doc).

    ``meta`` should hold ``arch`` (``create_model`` arguments) and may hold ``quant`` (a config dict),
    ``train``, ``data``, ``seed`` and ``metrics``; the environment is added here, and for a quantized
    model ``quantization`` (``qsal.quant.describe.describe_quantization``).
    """
    path = Path(path).with_suffix(".safetensors")
    from qsal.quant.describe import describe_quantization

    # what load_checkpoint rebuilds the model from: the model's own record where meta leaves it out (a quantized
    # model saved without its config read back as the FP32 net, and failed on the quantizers' tensors)
    meta = {**meta, "arch": meta.get("arch") or getattr(model, "qsal_arch", None)}
    if getattr(model, "qsal_quant", None) and not meta.get("quant"):
        meta["quant"] = model.qsal_quant
    if not isinstance(meta["arch"], dict):
        raise QsalError(f"cannot save {path} so that it loads back: the model records no architecture (build it with "
                        "qsal.create_model, or pass meta={'arch': {'name', 'num_classes', 'in_channels', "
                        "'image_size'}})")

    quantization = describe_quantization(model)  # scheme, bits, placement, observers, PACT alphas at start/end
    if quantization:
        meta = {**meta, "quantization": quantization}
    side = path.with_suffix(".json")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights = save(state)
    text = json.dumps({**meta, "environment": environment()}, indent=2, default=_json_default) + "\n"
    with atomic_path(side) as tmp_json:
        tmp_json.write_text(text)
        with atomic_path(path) as tmp_weights:
            tmp_weights.write_bytes(weights)
            side.unlink(missing_ok=True)  # from here until the json lands, the pair reads as absent
        # weights are in place here; the json is moved in when this block exits
    return path


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """The ``.safetensors`` file a user meant (``x.json`` -> ``x.safetensors``); pickles are refused by name."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise QsalError(f"{path} is a PyTorch pickle ({suffix}); qsal never unpickles files because that can run code: "
                        "pass the .safetensors checkpoint written by qsal train")
    if suffix == ".json":
        path = path.with_suffix(".safetensors")
    elif suffix != ".safetensors":
        raise QsalError(f"{path} is not a qsal checkpoint; pass the .safetensors file written by qsal train")
    if not path.is_file():
        raise QsalError(f"checkpoint {path} not found; pass the .safetensors file written by qsal train")
    if not path.with_suffix(".json").is_file():
        raise QsalError(f"checkpoint {path} has no {path.with_suffix('.json').name} beside it (the write was interrupted, "
                        "or only half was copied); rerun the command that wrote it or copy both files")
    return path


def validate_meta(meta, where: str) -> dict:
    """Check a checkpoint's JSON: a mapping whose ``arch`` can build a model and whose ``dataset`` (if any)
    is well-formed. Raises one ``QsalError`` naming the first bad field."""
    from qsal.data.registry import TASK_BINARY, TASK_MULTICLASS, TASK_MULTILABEL, TASK_ORDINAL
    from qsal.data.registry import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

    TASKS = (TASK_BINARY, TASK_MULTICLASS, TASK_ORDINAL, TASK_MULTILABEL)

    fix = "it was not written by qsal or was edited; rerun the command that wrote it"
    if not isinstance(meta, dict):
        raise QsalError(f"{where} holds a {type(meta).__name__}, not a mapping; {fix}")
    arch = meta.get("arch")
    if not isinstance(arch, dict):
        raise QsalError(f"{where}: 'arch' is {'missing' if arch is None else type(arch).__name__}, not a mapping; {fix}")
    if not isinstance(arch.get("name"), str) or not arch["name"]:
        raise QsalError(f"{where}: arch.name must be a model name, got {quote(arch.get('name'))}; {fix}")
    for key, ok, want in (("num_classes", lambda v: is_integer(v) and v >= 1, "a positive integer"),
                          ("in_channels", lambda v: v in (1, 3) and is_integer(v), "1 or 3"),
                          ("image_size", lambda v: is_integer(v) and MIN_IMAGE_SIZE <= v <= MAX_IMAGE_SIZE,
                           f"an integer in {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE}")):
        if (key in arch or key != "image_size") and not ok(arch.get(key)):
            raise QsalError(f"{where}: arch.{key} must be {want}, got {quote(arch.get(key))}; {fix}")
    quant = meta.get("quant")
    if quant is not None and not (isinstance(quant, dict) and isinstance(quant.get("method"), str)):
        raise QsalError(f"{where}: 'quant' must be null or a mapping with a 'method', got {quote(quant)}; {fix}")
    for key in ("data", "train", "val"):  # written by fit(); read back for names and records
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise QsalError(f"{where}: {key!r} must be a mapping, got {quote(meta[key])}; {fix}")
    if not isinstance((meta.get("data") or {}).get("name", ""), str):
        raise QsalError(f"{where}: data.name must be a string, got {quote(meta['data']['name'])}; {fix}")
    data = meta.get("dataset")
    if data is not None:
        if not isinstance(data, dict):
            raise QsalError(f"{where}: 'dataset' must be a mapping, got {quote(data)}; {fix}")
        for key in ("name", "task"):
            if key in data and not isinstance(data[key], str):
                raise QsalError(f"{where}: dataset.{key} must be a string, got {quote(data[key])}; {fix}")
        if "image_size" in data and not (is_integer(data["image_size"])
                                         and MIN_IMAGE_SIZE <= data["image_size"] <= MAX_IMAGE_SIZE):
            raise QsalError(f"{where}: dataset.image_size must be an integer in {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE}, got "
                            f"{quote(data['image_size'])}; {fix}")
        for key in ("mean", "std"):
            v = data.get(key)
            if v is not None and not (isinstance(v, list) and v and all(is_finite_number(x) for x in v)
                                      and (key == "mean" or all(x > 0 for x in v))):
                raise QsalError(f"{where}: dataset.{key} must be a list of finite numbers"
                                f"{' > 0' if key == 'std' else ''}, got {quote(v)}; {fix}")
        if data.get("task") is not None and data["task"] not in TASKS:
            raise QsalError(f"{where}: dataset.task must be one of {', '.join(TASKS)}, got {quote(data['task'])}; {fix}")
        channels = arch.get("in_channels")
        if "n_channels" in data and data["n_channels"] != channels:  # the images are prepared with dataset's
            raise QsalError(f"{where}: dataset.n_channels is {quote(data['n_channels'])} but the model takes "
                            f"{channels} channel(s) (arch.in_channels); {fix}")
        for key in ("mean", "std"):
            if data.get(key) is not None and len(data[key]) not in (1, channels):
                raise QsalError(f"{where}: dataset.{key} has {len(data[key])} values for a {channels}-channel model; "
                                f"give one, or one per channel; {fix}")
        validate_labels(data.get("labels"), arch["num_classes"], f"{where}: dataset", fix)
    validate_decision(meta.get("decision"), arch["num_classes"], where, fix, labels=(data or {}).get("labels"))
    return meta


def read_meta(path: str | os.PathLike) -> dict:
    """The validated JSON sidecar of a checkpoint (``x.safetensors`` -> ``x.json``)."""
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        raise QsalError(f"{side} is missing; a qsal checkpoint is a .safetensors file with a .json beside it")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QsalError(f"{side} is not valid JSON ({e}); the checkpoint is corrupt: rerun the command that wrote it") from None
    return validate_meta(meta, str(side))


def trained_saliency_guided(meta: dict) -> bool:
    """Whether a checkpoint's JSON records saliency-guided training (its ``step``)."""
    return isinstance(meta.get("step"), dict) and meta["step"].get("step") == "saliency_guided"


def check_model_fits_data(arch: dict, info, where: str) -> None:
    """Refuse a dataset whose class or channel count differs from the model's (``info``: a ``DatasetInfo``)."""
    if info.num_classes != arch["num_classes"] or info.n_channels != arch["in_channels"]:
        raise QsalError(f"{info.name} has {info.num_classes} classes / {info.n_channels} channels but {where} was built "
                        f"for {arch['num_classes']} / {arch['in_channels']}; pass the dataset it was trained on")


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint describes and load its weights. Returns ``(model, meta)``.

    Refuses (``QsalError``) pickles, a half-written pair, malformed JSON, weights that do not fit the
    architecture and non-finite (NaN/Inf) weights.
    """
    from qsal.models import create_model

    path = resolve_checkpoint_path(path)
    meta = read_meta(path)
    arch = meta["arch"]
    model = create_model(arch["name"], arch["num_classes"], arch["in_channels"], arch.get("image_size", 28))
    if meta.get("quant"):
        from qsal.quant import config_from_dict, prepare_structure

        try:
            qcfg = config_from_dict(meta["quant"])
        except (TypeError, ValueError) as e:
            raise QsalError(f"{path.with_suffix('.json')}: 'quant' is not a valid quantization config ({e}); "
                            "rerun the command that wrote it") from None
        model = prepare_structure(model, qcfg)
    try:
        # a name that is not valid UTF-8 (bytes from another system) is read by Python, not by the Rust loader,
        # which refuses such paths and would have the file called corrupt
        state = load_file(str(path)) if is_utf8_path(path) else load(path.read_bytes())
    except (SafetensorError, OSError) as e:
        raise QsalError(f"{path} is not a readable safetensors file ({e}); it is truncated or corrupt") from None
    own = model.state_dict()
    for k in own:  # PACT checkpoints written before alpha_start existed: the start is unknown, record the clip held
        if k.endswith(".alpha_start") and k not in state and k[:-len("_start")] in state:
            state[k] = state[k[:-len("_start")]].clone()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = (missing or unexpected or wrong)[:3]
        raise QsalError(f"{path} does not fit model {arch['name']} ({len(missing)} missing, {len(unexpected)} "
                        f"unexpected, {len(wrong)} mis-shaped tensors, e.g. {detail}); was it trained for another model?")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise QsalError(f"{path} has NaN/Inf values in {len(bad)} tensor(s) (e.g. {bad[0]}); the training diverged: "
                        "retrain with a lower --lr or use an earlier checkpoint")
    model.load_state_dict(state)
    model.qsal_arch = arch
    model.qsal_untrained = False
    return model, meta


def save_training_state(path: Path, state: dict) -> None:
    """Resume state (optimizer, scheduler, RNG, epoch): plain tensors and numbers, read with weights_only."""
    import io

    buf = io.BytesIO()  # serialised in memory so that a full disk surfaces as the OSError of a plain write
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


_TRAINING_STATE_TYPES = {"model": dict, "optimizer": dict, "scheduler": dict, "generator": torch.Tensor,
                         "torch_rng": torch.Tensor, "epoch": int, "best_epoch": int, "best_score": (int, float)}


def load_training_state(path: Path, model: nn.Module | None = None) -> dict:
    """Read ``last.pt`` (``weights_only``: tensors and containers, never code) and check that it is a qsal
    resume state for ``model`` (same tensor names and shapes)."""
    fix = f"delete {path} to start the training over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise QsalError(f"cannot resume from {path} ({type(e).__name__}); {fix}") from None
    if not isinstance(state, dict):
        raise QsalError(f"cannot resume from {path}: it holds a {type(state).__name__}, not a qsal training state; {fix}")
    for key, want in _TRAINING_STATE_TYPES.items():
        if not isinstance(state.get(key), want) or isinstance(state.get(key), bool):
            raise QsalError(f"cannot resume from {path}: field {key!r} is {type(state.get(key)).__name__}, "
                            f"not a qsal training state; {fix}")
    if model is not None:
        own = model.state_dict()
        saved = state["model"]
        if set(saved) != set(own) or any(not isinstance(saved[k], torch.Tensor) or saved[k].shape != own[k].shape
                                         for k in own):
            raise QsalError(f"cannot resume from {path}: it was written for another model (its tensors do not match "
                            f"{getattr(model, 'qsal_arch', {}).get('name', 'this model')}); {fix}")
    return state


def epochs_trained(path: Path) -> int | None:
    """How many epochs the resume state ``last.pt`` at ``path`` has trained (``None``: missing, unreadable or not a
    qsal training state). Read memory-mapped with ``weights_only``: a 135 MB ResNet-18 state costs a few ms."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - for a progress line: resuming says what is wrong with the file
        return None
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return epoch + 1 if is_integer(epoch) and epoch >= 0 else None
