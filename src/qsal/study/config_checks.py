"""A study config's settings checked against each other, the models and the datasets' splits (``study.config``
checks each value on its own first): what a valid-looking config may still not run as it reads.

- a shift augmentation as large as a dataset's images (every config);
- in a config a user wrote (``authored``), not a recorded one: a setting no cell uses or another overrides, a
  ``pact.N.skip`` that is not a weight layer of each model, a ``num_calibration`` above a training split, an
  ``n_explain`` above a test split. Each would otherwise fail every cell after hours of training, or be quietly
  ignored or capped.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from qsal.study.config import FINE_TUNED, _short

if TYPE_CHECKING:
    from qsal.study.config import RunConfig

__all__ = ["settings_without_effect", "beyond_models_and_data", "shifts_too_large", "changed_settings"]


def settings_without_effect(raw: dict, cfg: RunConfig) -> list[str]:
    """Settings that change nothing in this study (no cell uses them) or that another setting overrides: a config
    that reads as one study must be that study."""
    methods = set(cfg.methods)
    problems = [f"{key}: set, but no method uses it ({uses}); drop it, or add such a method"
                for key, used, uses in (("pact", methods & {"pact", "sgt+pact"}, "pact, sgt+pact"),
                                        ("observers", methods & {"ptq"}, "ptq"),
                                        ("sgt", methods & {"sgt", "sgt+pact"}, "sgt, sgt+pact"),
                                        ("finetune", methods & FINE_TUNED, "qat, pact, sgt+pact"),
                                        ("bits", methods & {"pact", "sgt+pact"}, "pact, sgt+pact"))
                if key in raw and not used]
    fine_tunes = methods & FINE_TUNED
    for short in ("epochs", "lr"):  # every group trains FP32: only the fine-tune's part can go unused
        if "finetune" in (raw.get(short) or {}) and not fine_tunes:
            problems.append(f"{short}.finetune: set, but no method uses it (qat, pact, sgt+pact); drop it, or add such "
                            "a method")
    for i, sc in enumerate(raw.get("schedules") or []):
        if isinstance(sc, dict) and sc.get("finetune") and not fine_tunes:
            problems.append(f"schedules[{i}].finetune: set, but no method fine-tunes (qat, pact, sgt+pact); drop it")
    measure = raw.get("measure") or {}
    if isinstance(measure, dict) and "n_explain" in measure and measure.get("saliency") is False:
        problems.append("measure.n_explain: set, but measure.saliency is false (nothing is explained); drop one")
    for short in ("epochs", "lr"):
        for part, long_part in (("fp32", "train"), ("finetune", "finetune")):
            if part in (raw.get(short) or {}) and short in (raw.get(long_part) or {}):
                problems.append(f"{short}.{part} and {long_part}.{short} both set; {long_part}.{short} wins: keep one")
    return problems


def beyond_models_and_data(cfg: RunConfig) -> list[str]:
    """Settings a cell would refuse only after its parent trained (a ``pact`` skip that is not a weight layer of a
    model, more calibration images than a training split holds), or that the registry's split sizes cannot honour
    (more images explained than a test split holds: a result recording the number asked for would overstate what
    was explained). Not for a recorded config: a model's layers may change names in a later qsal."""
    from qsal.data import held_out_count
    from qsal.models import create_model
    from qsal.quant.api import skip_problem

    problems = []
    infos = {ds: cfg.dataset_info(ds) for ds in cfg.datasets}  # by the name listed: a folder's info names its path
    tests = {ds: int(i.n_samples.get("test", 0)) for ds, i in infos.items()}
    if cfg.measure.saliency and cfg.measure.n_explain > (n := min(tests.values())):
        smallest = min(tests, key=tests.get)
        problems.append(f"measure.n_explain: {cfg.measure.n_explain} is more than the {n} test images of {smallest} "
                        f"(every cell explains the same number of images); set it to {n} or fewer")
    built: dict = {}  # model name -> a model: its layer names do not depend on a dataset's classes, channels or size
    first = next(iter(infos.values()))
    for b, options in cfg.pact.items() if {"pact", "sgt+pact"} & set(cfg.methods) else ():
        for model in cfg.models if options.get("skip") else ():
            if model not in built:
                built[model] = create_model(model, first.num_classes, first.n_channels, first.image_size)
            if (problem := skip_problem(built[model], options["skip"], model)) is not None:
                problems.append(f"pact.{b}.skip: {problem}")
        if "num_calibration" in options:
            for ds, i in infos.items():  # what quantize_checkpoint draws from: the training images not held out
                n_train = int(i.n_samples.get("train", 0))
                n_fit = n_train if i.n_samples.get("val") else n_train - held_out_count(n_train)
                if options["num_calibration"] > n_fit:
                    problems.append(f"pact.{b}.num_calibration: {options['num_calibration']} is more than the "
                                    f"{n_fit} training images of {ds}; set it to {n_fit} or fewer")
    return problems


def shifts_too_large(cfg: RunConfig) -> list[str]:
    """A shift augmentation as large as the images cannot be drawn (reflect padding): refused here, not by every cell."""
    from qsal.data import get_info
    from qsal.data.transforms import shift_too_large

    problems = []
    for ds in cfg.datasets:
        size = cfg.dataset_size(ds) or get_info(ds).image_size  # a folder's own setting: its files are not read here
        for model in cfg.models:
            train, finetune = cfg.train_configs(ds, model, 0, progress=False)
            # a fine-tune takes train's shift unless it sets its own: inherited, it is one fix, named once
            own = "shift_px" in cfg.finetune or any("shift_px" in sc.finetune for sc in cfg.schedules
                                                   if sc.matches(ds, model))
            parts = [("train", train)] + ([("finetune", finetune)] if own else [])
            for part, tc in parts:
                if (problem := shift_too_large(tc.shift_px, size, size, f"{part}.shift_px")) is not None:
                    problems.append(f"{problem} ({ds}/{model})")
    return list(dict.fromkeys(problems))


def changed_settings(recorded: dict, cfg: RunConfig) -> list[str]:
    """What differs between the config ``recorded`` (a run folder's ``run_config.json`` ``config``) and ``cfg``, as
    ``lr.fp32: 0.001 -> 0.01`` (a list by its items: ``seeds: added 1; removed 0``), in key order; ``data_dir`` is left
    out, as the fingerprint leaves it (where files are, not what the study is)."""

    def flat(d, prefix=""):
        out = {}
        for k, v in (d.items() if isinstance(d, dict) else ()):
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            elif v != {}:  # an empty mapping sets nothing: an older record may lack the key (train: {})
                out[f"{prefix}{k}"] = v
        return out

    # through JSON, as the record was: tuples read back as lists, pact's bit-width keys as strings
    old, new = flat(recorded), flat(json.loads(json.dumps(cfg.to_dict(), default=str)))
    unset = object()
    shown = lambda d, k: _short(d[k]) if k in d else "unset"  # noqa: E731

    def change(k: str) -> str:
        was, now = old.get(k, unset), new.get(k, unset)
        if isinstance(was, list) and isinstance(now, list):  # the items that changed: a long list's are cut off
            added, removed = [v for v in now if v not in was], [v for v in was if v not in now]
            if added or removed:
                return f"{k}: " + "; ".join(f"{what} {', '.join(map(str, items))}" for what, items in
                                            (("added", added), ("removed", removed)) if items)
        return f"{k}: {shown(old, k)} -> {shown(new, k)}"

    return [change(k) for k in sorted(set(old) | set(new))
            if k != "data_dir" and old.get(k, unset) != new.get(k, unset)]
