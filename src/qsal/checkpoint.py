"""Checkpoints that never run code on load: weights in safetensors, everything else in JSON.

``<stem>.safetensors`` holds the state dict (quantizer scales and PACT clips included);
``<stem>.json`` holds what is needed to rebuild the model (architecture, quantization config) and
what produced it (training config, dataset, seed, versions, metrics).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from qsal._atomic import atomic_path, write_json_atomic
from qsal.errors import QsalError
from qsal.provenance import environment

__all__ = ["save_checkpoint", "load_checkpoint", "read_meta"]


def save_checkpoint(model: nn.Module, path: str | os.PathLike, meta: dict) -> Path:
    """Write ``path`` (``.safetensors``) and its ``.json`` sidecar atomically.

    ``meta`` should hold ``arch`` (``create_model`` arguments) and may hold ``quant`` (a config dict),
    ``train``, ``data``, ``seed`` and ``metrics``; the environment is added here, and for a quantized
    model ``quantization`` (``qsal.quant.describe.describe_quantization``).
    """
    path = Path(path).with_suffix(".safetensors")
    from qsal.quant.describe import describe_quantization

    quantization = describe_quantization(model)  # scheme, bits, placement, observers, PACT alphas at start/end
    if quantization:
        meta = {**meta, "quantization": quantization}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    write_json_atomic(path.with_suffix(".json"), {**meta, "environment": environment()})
    return path


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON sidecar of a checkpoint (``x.safetensors`` -> ``x.json``)."""
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        raise QsalError(f"{side} is missing; a qsal checkpoint is a .safetensors file with a .json beside it")
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise QsalError(f"{side} is not valid JSON ({e}); the checkpoint is corrupt") from None


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint describes and load its weights. Returns ``(model, meta)``."""
    from qsal.models import create_model

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise QsalError(f"checkpoint {path} not found; pass the .safetensors file written by qsal train")
    meta = read_meta(path)
    arch = meta.get("arch")
    if not arch:
        raise QsalError(f"{path.with_suffix('.json')} has no 'arch' entry; it was not written by qsal")
    model = create_model(arch["name"], arch["num_classes"], arch["in_channels"], arch.get("image_size", 28))
    if meta.get("quant"):
        from qsal.quant import config_from_dict, prepare_structure

        model = prepare_structure(model, config_from_dict(meta["quant"]))
    try:
        state = load_file(str(path))
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
    model.load_state_dict(state)
    model.qsal_arch = arch
    model.qsal_untrained = False
    return model, meta


def save_training_state(path: Path, state: dict) -> None:
    """Resume state (optimizer, scheduler, RNG, epoch): plain tensors and numbers, read with weights_only."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise QsalError(f"cannot resume from {path} ({type(e).__name__}); delete it to start over") from None
