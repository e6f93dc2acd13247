"""Per-dataset and per-model training schedules of a study config.

    epochs: {fp32: 100, finetune: 10}   # shorthand for train.epochs / finetune.epochs (and lr the same)
    train:                               # every FP32 and SGT parent: any TrainConfig field but seed/device/progress
      optimizer: sgd
      lr: 0.1
      weight_decay: 1.0e-4
      shift_px: 4
      hflip: true
    finetune: {lr: 0.01}                 # QAT / PACT / SGT+PACT fine-tunes: start from the resolved `train`
    schedules:                           # overrides for some datasets / models, applied in order (last wins)
      - datasets: [breastmnist]
        models: [resnet18]
        train: {epochs: 100}
        finetune: {epochs: 20}

A cell's training config is, in order: the ``TrainConfig`` defaults, ``epochs.fp32`` / ``lr.fp32``,
``train``, then every matching schedule's ``train``. Its fine-tune config starts from that, then
``epochs.finetune`` / ``lr.finetune``, ``finetune``, and every matching schedule's ``finetune``.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field, fields, replace

from qsal.errors import TYPE_WORDS, QsalError
from qsal.study.config_yaml import number_hint, text_number
from qsal.train import TrainConfig

__all__ = ["SCHEDULE_FIELDS", "Schedule", "parse_overrides", "parse_schedules", "resolve_train_configs"]

# TrainConfig fields a study may set; the seed comes from `seeds`, device and progress from the runner.
SCHEDULE_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("seed", "device", "progress"))


@dataclass(frozen=True)
class Schedule:
    """Overrides for the cells of ``datasets`` x ``models`` (empty = all of the study's)."""

    datasets: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    train: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)

    def matches(self, dataset: str, model: str) -> bool:
        return (not self.datasets or dataset in self.datasets) and (not self.models or model in self.models)


def _check_value(name: str, value, default):
    """``value`` converted to the type of the TrainConfig default, or a problem string."""
    if name == "milestones":
        value = [text_number(v) for v in value] if isinstance(value, (list, tuple)) else value
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return None, f"{value!r} is not a list of fractions of the epochs"
        if not all(0 < v < 1 for v in value):
            return None, f"{value!r}: every milestone is a fraction of the epochs in (0, 1)"
        return tuple(float(v) for v in value), None
    if name == "channels_last":
        if value == "auto" or isinstance(value, bool):
            return value, None
        return None, f"{value!r} is not one of auto, true, false"
    if default is None:  # null (off) or a number in range: TrainConfig's own check, run for this field alone so
        try:              # every problem of a file is listed at once (each such field takes a float)
            return getattr(TrainConfig(**{name: text_number(value)}), name), None
        except QsalError as e:
            return None, str(e)
    want = type(default)
    if want is float:
        value = text_number(value)  # 1e-3, which YAML 1.1 reads as text
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        return None, f"{value!r} is not {TYPE_WORDS.get(want, want.__name__)}{number_hint(value, want)}"
    if want is float and not math.isfinite(value):
        return None, f"must be a finite number, got {value!r}"
    if want in (int, float) and value < 0 or (name in ("epochs", "batch_size", "lr", "gamma") and value == 0):
        return None, f"must be positive, got {value!r}"
    return value, None


def parse_overrides(problems: list[str], path: str, raw) -> dict:
    """Validate a mapping of TrainConfig fields; each problem is appended with its ``path``."""
    if not isinstance(raw, dict):
        problems.append(f"{path}: must be a mapping of training settings, got {raw!r}")
        return {}
    defaults = TrainConfig()
    out = {}
    already = len(problems)
    for key, value in raw.items():
        if key not in SCHEDULE_FIELDS:
            problems.append(f"{path}.{key}: unknown key; known: {', '.join(SCHEDULE_FIELDS)}")
            continue
        value, problem = _check_value(key, value, getattr(defaults, key))
        if problem:
            problems.append(f"{path}.{key}: {problem}")
        else:
            out[key] = value
    if len(problems) > already:  # TrainConfig's own message would quote defaults for the values refused above
        return out
    try:  # choices (optimizer, precision, select_on...) are TrainConfig's own checks
        TrainConfig(**out)
    except QsalError as e:
        problems.append(f"{path}: {e}")
    return out


def parse_schedules(problems: list[str], raw, datasets: list, models: list) -> list[Schedule]:
    """Validate the ``schedules`` list against the study's datasets and models."""
    if not isinstance(raw, (list, tuple)):
        problems.append(f"schedules: must be a list of {{datasets, models, train, finetune}}, got {raw!r}")
        return []
    out = []
    for i, entry in enumerate(raw):
        path = f"schedules[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{path}: must be a mapping with datasets / models / train / finetune, got {entry!r}")
            continue
        for key in entry:
            if key not in ("datasets", "models", "train", "finetune"):
                problems.append(f"{path}.{key}: unknown key; known: datasets, models, train, finetune")
        selected = {}
        for key, known in (("datasets", datasets), ("models", models)):
            names = entry.get(key, [])
            names = [names] if isinstance(names, str) else names
            if not isinstance(names, (list, tuple)):
                problems.append(f"{path}.{key}: must be a list of names, got {names!r}")
                names = []
            for j, n in enumerate(names):
                if isinstance(known, (list, tuple)) and n not in known:
                    problems.append(f"{path}.{key}[{j}]: {n!r} is not in the study's {key} ({', '.join(map(str, known))})")
            selected[key] = tuple(names)
        if "train" not in entry and "finetune" not in entry:
            problems.append(f"{path}: sets nothing; give train and/or finetune")
        out.append(Schedule(selected["datasets"], selected["models"],
                            parse_overrides(problems, f"{path}.train", entry.get("train", {})),
                            parse_overrides(problems, f"{path}.finetune", entry.get("finetune", {}))))
    return out


def resolve_train_configs(cfg, dataset: str, model: str, seed: int, progress: bool = True) -> tuple[TrainConfig, TrainConfig]:
    """``(train, finetune)`` TrainConfigs of one (dataset, model, seed) of the study ``cfg`` (a ``RunConfig``)."""
    train = TrainConfig(epochs=cfg.epochs.fp32, lr=cfg.lr.fp32, seed=seed, progress=progress)
    train = replace(train, **cfg.train)
    matching = [s for s in cfg.schedules if s.matches(dataset, model)]
    for s in matching:
        train = replace(train, **s.train)
    finetune = replace(train, **{"epochs": cfg.epochs.finetune, "lr": cfg.lr.finetune, **cfg.finetune})
    for s in matching:
        finetune = replace(finetune, **s.finetune)
    return train, finetune
