"""The experiment-grid config for ``qsal run``: a typed, validated YAML schema.

    name: breast-study
    datasets: [breastmnist]
    models: [small_cnn, edge_mbv2]
    methods: [fp32, ptq, qat, pact, sgt, sgt+pact]
    bits: [8, 4, 2]            # PACT and SGT+PACT bit-widths
    observers: [minmax, mse]   # PTQ observers
    seeds: [0, 1]
    epochs: {fp32: 40, finetune: 10}
    lr: {fp32: 0.001, finetune: 0.0005}
    sgt: {k: 0.5, lambda: 1.0, target: log_softmax}
    measure: {latency: true, saliency: true, n_explain: 64}
    train: {optimizer: sgd, weight_decay: 1.0e-4, shift_px: 4, hflip: true}   # qsal.study.schedule
    finetune: {lr: 0.01}
    schedules: [{datasets: [breastmnist], models: [edge_mbv2], train: {epochs: 100}}]
    pact: {2: {weight_scheme: dorefa, fold_bn: false}}   # PACTConfig options per bit-width (PACT and SGT+PACT)
    folders: {clinic: {path: scans/, positive_class: malignant}}   # your own image folders (qsal.study.folders)

Every problem in a file is reported at once, each with its path (``epochs.fp32: ...``); unknown keys are errors.
The file is read by ``study.config_yaml``; settings are checked against each other, the models and the datasets'
splits by ``study.config_checks``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from qsal.errors import TYPE_WORDS, QsalError, is_finite_number, is_integer
from qsal.study.config_yaml import number_hint, text_number
from qsal.study.folders import NAME

__all__ = ["RunConfig", "load_run_config", "METHODS"]

METHODS = ("fp32", "ptq", "qat", "pact", "sgt", "sgt+pact")
FINE_TUNED = frozenset({"qat", "pact", "sgt+pact"})  # the methods whose cells fine-tune a parent


@dataclass
class Epochs:
    fp32: int = 40
    finetune: int = 10


@dataclass
class LearningRates:
    fp32: float = 1e-3
    finetune: float = 5e-4


@dataclass
class SGTSettings:
    k: float = 0.5
    lam: float = 1.0
    target: str = "log_softmax"  # saliency target: log_softmax (the authors') | logit


@dataclass
class Measure:
    latency: bool = True
    saliency: bool = True
    n_explain: int = 64


@dataclass
class RunConfig:
    """One study: the product datasets x models x methods (x bits / observers) x seeds."""

    name: str = "study"
    datasets: list = field(default_factory=lambda: ["breastmnist"])
    models: list = field(default_factory=lambda: ["small_cnn"])
    methods: list = field(default_factory=lambda: ["fp32", "ptq"])
    bits: list = field(default_factory=lambda: [4])
    observers: list = field(default_factory=lambda: ["minmax"])
    seeds: list = field(default_factory=lambda: [0])
    epochs: Epochs = field(default_factory=Epochs)
    lr: LearningRates = field(default_factory=LearningRates)
    sgt: SGTSettings = field(default_factory=SGTSettings)
    measure: Measure = field(default_factory=Measure)
    train: dict = field(default_factory=dict)  # TrainConfig overrides for FP32/SGT parents (qsal.study.schedule)
    finetune: dict = field(default_factory=dict)  # ... for QAT/PACT/SGT+PACT fine-tunes
    schedules: list = field(default_factory=list)  # [Schedule]: per-dataset / per-model overrides
    # {bits: {PACTConfig field: value}} for the PACT and SGT+PACT cells of that bit-width (others: the defaults)
    pact: dict = field(default_factory=dict)
    # {short name: {"path", "positive_class", "size"}}: image folders ``datasets`` may list (qsal.study.folders)
    folders: dict = field(default_factory=dict)
    data_dir: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def train_configs(self, dataset: str, model: str, seed: int, progress: bool = True):
        """``(train, finetune)`` ``TrainConfig`` of the cells of (``dataset``, ``model``, ``seed``)."""
        from qsal.study.schedule import resolve_train_configs

        return resolve_train_configs(self, dataset, model, seed, progress)

    def pact_config(self, bits: int):
        """The ``PACTConfig`` of this study's PACT and SGT+PACT cells of ``bits``: the defaults and ``pact[bits]``."""
        from qsal.quant import PACTConfig

        return PACTConfig(bits=bits, **self.pact.get(bits, self.pact.get(str(bits), {})))  # "2": a RunConfig from JSON

    def dataset_source(self, dataset: str) -> str:
        """The name ``qsal.data`` loads ``dataset`` (a listed name) by: ``folder:PATH`` for one of ``folders``."""
        return f"folder:{self.folders[dataset]['path']}" if dataset in self.folders else dataset

    def dataset_size(self, dataset: str) -> int | None:
        """The image side ``dataset`` is read at, in px: a folder's ``size``; ``None`` for a table set (its own)."""
        return self.folders[dataset]["size"] if dataset in self.folders else None

    def positive_class(self, dataset: str) -> str | None:
        """The positive class this study names for ``dataset`` (a folder's); ``None``: the dataset table's."""
        return self.folders[dataset]["positive_class"] if dataset in self.folders else None

    def fixed_split_seed(self, dataset: str) -> int | None:
        """A folder's ``split_seed``: the seed that draws its split for every seed of the study; ``None`` where the
        study fixes none (a table set, or a folder each seed splits anew)."""
        return self.folders.get(dataset, {}).get("split_seed")

    def split_seed(self, dataset: str, seed: int) -> int:
        """The seed that draws ``dataset``'s seeded split for the cells of ``seed``: a folder's ``split_seed`` where
        the study fixes one, else the cells' own seed (each seed its own split, as ``qsal train --seed``)."""
        fixed = self.fixed_split_seed(dataset)
        return seed if fixed is None else fixed

    def dataset_info(self, dataset: str):
        """``dataset``'s ``DatasetInfo``; a folder's reads its class folders, and its ``n_samples`` are the counts
        of its split (names listed, no image decoded)."""
        from dataclasses import replace

        from qsal.data import get_info
        from qsal.data.folder import folder_info, folder_split_files

        if dataset not in self.folders:
            return get_info(dataset)
        root = Path(self.folders[dataset]["path"])
        split = folder_split_files(root, seed=self.split_seed(dataset, self.seeds[0]))  # stratified: same counts
        return replace(folder_info(root, size=self.folders[dataset]["size"]),
                       n_samples={part: len(files) for part, files in split.items()})

    def fingerprint(self) -> str:
        """Hash of everything that changes results (not ``data_dir``, which only says where files are)."""
        d = self.to_dict()
        d.pop("data_dir")
        # absent when unused: older run folders keep their fingerprint
        for key in ("train", "finetune", "schedules", "pact", "folders"):
            if not d[key]:
                d.pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_NESTED = {"epochs": Epochs, "lr": LearningRates, "sgt": SGTSettings, "measure": Measure}
_ALIASES = {"sgt": {"lambda": "lam"}}


_REQUIRED = ("datasets", "models", "methods")
_MAX_PROBLEMS = 10  # an error message stays readable however broken the file is


def _short(value) -> str:
    """A bounded ``repr``: a YAML alias bomb expands to gigabytes when printed in full."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 1, 3, 3, 40, 40
    return r.repr(value)


def _check_list(problems, key, value, allowed=None, kind=str):
    if not isinstance(value, list) or not value:
        scalar = isinstance(value, (str, int, float)) and not isinstance(value, bool) and value != ""
        fix = f" (write it in brackets: {key}: [{value}])" if scalar else " (name at least one)" if value == [] else ""
        problems.append(f"{key}: must be a non-empty list, got {_short(value)}{fix}")
        return
    for i, v in enumerate(value):
        if not isinstance(v, kind) or isinstance(v, bool) and kind is int:
            problems.append(f"{key}[{i}]: {_short(v)} is not {TYPE_WORDS.get(kind, kind.__name__)}")
        elif key == "datasets" and v.startswith("folder:"):  # cell folders are named by dataset: a path cannot be
            problems.append(f"{key}[{i}]: {_short(v)}: a study names its own folders under folders: (e.g. folders: "
                            f"{{clinic: {{path: {v[len('folder:'):] or 'scans/'}, positive_class: ...}}}}) and lists "
                            "the short name here (datasets: [clinic])")
        elif allowed is not None and v not in allowed:
            own = (f"; or, for your own images, name a folder under folders: (e.g. folders: {{{v}: {{path: scans/, "
                   "positive_class: ...}})") if key == "datasets" and NAME.fullmatch(v) else ""
            problems.append(f"{key}[{i}]: unknown value {_short(v)}; choose from {', '.join(map(str, allowed))}{own}")
        elif v in value[:i]:  # two seeds 0 would train one cell folder twice, at once with --workers 2
            problems.append(f"{key}[{i}]: {_short(v)} is listed twice; give each value once")


def parse_run_config(raw: dict, where: str = "config", authored: bool = False, base: Path | None = None) -> RunConfig:
    """Validate a dict (from YAML) into a ``RunConfig``; raises one error that lists every problem. ``authored``: a
    config a user wrote (``load_run_config``), also refused where a setting changes nothing or another overrides it,
    or its folders' files contradict it; a recorded one (``RunConfig.to_dict()``: every field, defaults included) is
    not. ``base``: the folder relative ``folders`` paths are read from (the config file's)."""
    from qsal.data import list_datasets
    from qsal.models import list_models
    from qsal.quant.observers import OBSERVERS

    problems: list[str] = []
    if not isinstance(raw, dict):
        raise QsalError(f"{where}: the top level must be a mapping of keys (name, datasets, models, methods, ...), "
                        f"got {_short(raw)}; see configs/ for an example")
    top = {f for f in RunConfig.__dataclass_fields__}
    for key in raw:
        if key not in top:
            problems.append(f"{key if isinstance(key, str) else _short(key)}: unknown key; known keys: "
                            f"{', '.join(sorted(top))}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        problems.append(f"{', '.join(missing)}: missing; a study names its datasets, models and methods "
                        "(see configs/ for an example)")
    values = {}
    for key, value in raw.items():
        if key not in top or key in ("schedules", "pact", "folders"):
            continue
        if key in ("train", "finetune"):
            from qsal.study.schedule import parse_overrides

            values[key] = parse_overrides(problems, key, value)  # wins over epochs.* / lr.* (the shorthand)
            continue
        if key in _NESTED:
            cls = _NESTED[key]
            if not isinstance(value, dict):
                problems.append(f"{key}: must be a mapping, got {_short(value)}")
                continue
            kwargs = {}
            for sub, v in value.items():
                name = _ALIASES.get(key, {}).get(sub, sub)
                if name != sub and name in value:  # sgt: {lambda: 1, lam: 2}: the last one silently won
                    problems.append(f"{key}.{sub} and {key}.{name} both set (one setting, two names): keep one")
                    continue
                if name not in cls.__dataclass_fields__:
                    # named as configs write them (sgt's lambda, not the field lam it is stored in)
                    spelled = {field: alias for alias, field in _ALIASES.get(key, {}).items()}
                    known = ", ".join(spelled.get(f, f) for f in cls.__dataclass_fields__)
                    named = sub if isinstance(sub, str) else _short(sub)
                    problems.append(f"{key}.{named}: unknown key; known: {known}")
                    continue
                want = type(getattr(cls(), name))
                if want is float:
                    v = text_number(v)  # 1e-3, which YAML 1.1 reads as text
                if want is float and is_integer(v) and is_finite_number(v):  # a 400-digit integer: float() would raise
                    v = float(v)
                if want is float and is_integer(v) or not isinstance(v, want) or (want is int and isinstance(v, bool)):
                    problems.append(f"{key}.{sub}: {_short(v)} is not {TYPE_WORDS.get(want, want.__name__)}"
                                    f"{number_hint(v, want)}")
                    continue
                if want is float and not math.isfinite(v):
                    problems.append(f"{key}.{sub}: must be a finite number, got {_short(v)}")
                    continue
                # sgt.lam 0 and sgt.k 0 are plain training (checked as fractions below)
                if want in (int, float) and v <= 0 and not (key == "sgt" and name in ("lam", "k") and v == 0):
                    problems.append(f"{key}.{sub}: must be positive, got {_short(v)}")
                kwargs[name] = v
            values[key] = cls(**kwargs)
        else:
            values[key] = value
    if "folders" in raw:
        from qsal.study.folders import parse_folders

        values["folders"] = parse_folders(problems, raw["folders"], base)
    # a folder named with a problem is still a name datasets may list: its problem is reported once, under folders
    named = [k for k in raw["folders"] if isinstance(k, str)] if isinstance(raw.get("folders"), dict) else []
    for key, allowed, kind in (("datasets", list_datasets() + named, str), ("models", list_models(), str),
                               ("methods", METHODS, str), ("bits", (2, 3, 4, 5, 6, 7, 8), int),
                               ("observers", OBSERVERS, str), ("seeds", None, int)):
        if key in values:
            _check_list(problems, key, values[key], allowed, kind)
    if isinstance(values.get("seeds"), list) and any(isinstance(v, int) and not 0 <= v < 2**32 for v in values["seeds"]):
        problems.append(f"seeds: must be integers in 0 .. 2**32-1, got {_short(values['seeds'])}")
    if "sgt" in values and not 0 <= values["sgt"].k < 1:
        problems.append(f"sgt.k: must be a fraction in [0, 1), got {values['sgt'].k}")
    if "sgt" in values and values["sgt"].target not in ("log_softmax", "logit"):
        problems.append(f"sgt.target: must be log_softmax or logit, got {values['sgt'].target!r}")
    if "name" in values and not isinstance(values["name"], str):
        problems.append(f"name: must be a string, got {_short(values['name'])}")
    if values.get("data_dir") is not None and not (isinstance(values["data_dir"], str) and values["data_dir"]):
        problems.append(f"data_dir: must be a folder path (a string), got {_short(values['data_dir'])}")
    if "schedules" in raw:
        from qsal.study.schedule import parse_schedules

        values["schedules"] = parse_schedules(problems, raw["schedules"], values.get("datasets", RunConfig().datasets),
                                              values.get("models", RunConfig().models))
    if "pact" in raw:
        values["pact"] = _parse_pact(problems, raw["pact"], values.get("bits", RunConfig().bits))
    if not problems:
        from qsal.study.config_checks import beyond_models_and_data, settings_without_effect, shifts_too_large
        from qsal.study.folders import folder_problems

        cfg = RunConfig(**values)
        problems += shifts_too_large(cfg)
        if authored:  # the models and splits are read only once the folders are known to be there
            problems += settings_without_effect(raw, cfg) + (folder_problems(cfg, raw.get("folders"), base)
                                                               or beyond_models_and_data(cfg))
    if problems:
        shown = problems[:_MAX_PROBLEMS] + ([f"... and {len(problems) - _MAX_PROBLEMS} more"]
                                            if len(problems) > _MAX_PROBLEMS else [])
        raise QsalError(f"{where} has {len(problems)} problem(s): " + "; ".join(shown))
    return cfg


# PACTConfig's options as YAML gives them: (check, words). The dataclass takes any value, and a string "no" for
# fold_bn is truthy: it would fold BatchNorm, the opposite of what was meant.
_PACT_TYPES = {
    "first_last_bits": (lambda v: is_integer(v) and 2 <= v <= 8, "a bit-width 2-8"),
    "alpha_decay": (lambda v: is_finite_number(v) and v >= 0, "a number >= 0"),
    "alpha_init": (lambda v: v is None or (is_finite_number(v) and v > 0), "a positive number or null"),
    "alpha_lr": (lambda v: v is None or (is_finite_number(v) and v > 0), "a positive number or null"),
    "weight_scheme": (lambda v: isinstance(v, str), "a string"),
    "weight_per_channel": (lambda v: isinstance(v, str), "a string"),
    "quantize_add_inputs": (lambda v: isinstance(v, bool), "true or false"),
    "add_input_bits": (lambda v: v is None or (is_integer(v) and 2 <= v <= 8), "a bit-width 2-8 or null"),
    "fold_bn": (lambda v: isinstance(v, bool), "true or false"),
    "input_clip": (lambda v: isinstance(v, str), "a string"),
    "alpha_calibration": (lambda v: isinstance(v, str), "a string"),
    "weight_clip": (lambda v: isinstance(v, str), "a string"),
    "num_calibration": (lambda v: is_integer(v) and v > 0, "a positive integer"),
    "skip": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of layer names"),
}

_PACT_NUMBERS = {"first_last_bits": int, "add_input_bits": int, "num_calibration": int, "alpha_decay": float,
                 "alpha_init": float, "alpha_lr": float}


def mapping_problem(where: str, options, known, what: str, noun: str = "key") -> str | None:
    """Why ``options`` at ``where`` is not ``what`` (a mapping) of ``known`` keys only; ``None`` when it is."""
    if not isinstance(options, dict):
        return f"{where}: must be {what}, got {_short(options)}"
    unknown = [k for k in options if k not in known]
    return f"{where}: unknown {noun}(s) {_short(unknown)}; known: {', '.join(known)}" if unknown else None


def _parse_pact(problems: list[str], raw, bits) -> dict:
    """``pact: {2: {weight_scheme: dorefa}}``: PACTConfig options per bit-width of ``bits`` (``bits`` comes from the
    cell); each bit-width's options are checked by building its PACTConfig. Keys may be strings ("2": JSON)."""
    from qsal.quant import PACTConfig

    if not isinstance(raw, dict):
        problems.append(f"pact: must map bit-widths to PACTConfig options, e.g. {{2: {{weight_scheme: dorefa}}}}, "
                        f"got {_short(raw)}")
        return {}
    allowed = [f.name for f in fields(PACTConfig) if f.name != "bits"]  # not the ClassVars
    out = {}
    for key, options in raw.items():
        b = int(key) if isinstance(key, str) and key.isdigit() else key
        if not isinstance(b, int) or isinstance(b, bool) or not isinstance(bits, list) or b not in bits:
            problems.append(f"pact.{_short(key)}: not one of the study's bits ({_short(bits)})")
            continue
        if (problem := mapping_problem(f"pact.{b}", options, allowed, "a mapping of PACTConfig options",
                                       "option")) is not None:
            problems.append(problem)
            continue
        options = {k: text_number(v) if _PACT_NUMBERS.get(k) is float else v for k, v in options.items()}
        wrong = [f"{k}: {_short(v)} is not {_PACT_TYPES[k][1]}{number_hint(v, _PACT_NUMBERS.get(k))}"
                 for k, v in options.items() if not _PACT_TYPES[k][0](v)]
        if wrong:
            problems.append(f"pact.{b}: " + "; ".join(wrong))
            continue
        try:
            PACTConfig(bits=b, **options)
        except (QsalError, TypeError, ValueError) as e:
            problems.append(f"pact.{b}: {e}")
            continue
        out[b] = dict(options)
    return out


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML study config. A relative ``data_dir`` (and ``folders`` path) is read from the file's
    folder, as other config files' paths are (docker-compose's, for one), and recorded absolute: the study reads the
    same files from whichever working folder it is run."""
    from qsal.study.config_yaml import read_config_yaml

    cfg = parse_run_config(read_config_yaml(path), str(path), authored=True, base=Path(path).parent)
    if cfg.data_dir is not None:
        cfg.data_dir = str((Path(path).parent / Path(cfg.data_dir).expanduser()).resolve())
    return cfg
