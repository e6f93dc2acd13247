"""Model cards in the Hugging Face format with the sections of Mitchell et al. (2019), *Model Cards for
Model Reporting*: YAML metadata (licence, tags, datasets, metrics, base model, ``model-index``), then
model details, intended and out-of-scope use, data, metrics of the deployed *artifact* with CIs, factors
(per class), the change against the parent (FP32, or SGT for SGT+PACT), explanation metrics, and caveats.

Written beside an exported model as ``<name>.card.md`` (the card) and ``<name>.card.json`` (the same
facts, machine-readable). Everything comes from records: the checkpoint's JSON, its ``metrics.json``,
a scoring and a timing of the ONNX file itself, and the ONNX graph (storage type of each layer).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import yaml

from qsal._atomic import write_json_atomic, write_text_atomic
from qsal.checkpoint import trained_saliency_guided
from qsal.data import DATASETS, describe_splits
from qsal.train import TrainConfig
from qsal.errors import printable_path
from qsal.run_folder import file_sha256
from qsal.export.card_storage import kernels_run, kernels_scored, onnx_layer_storage, quant_bits
from qsal.metrics.operating_point import describe_operating_point
from qsal.runtime import KERNEL_NOTE_KEYS, NO_OPERATING_POINT

__all__ = ["write_model_card", "onnx_layer_storage", "hf_license"]  # onnx_layer_storage: card_storage's

_OUT_OF_SCOPE = [
    "Clinical diagnosis, triage or treatment decisions: this is a research prototype, not a medical device, and it "
    "has not been validated prospectively or by a regulator.",
    "Images unlike the training data: other modalities, scanners, resolutions, populations or acquisition "
    "protocols; the model gives no warning when it sees them.",
    "Screening populations whose prevalence differs from the test split: predictive values change with prevalence "
    "even when sensitivity and specificity do not.",
    "Reading the saliency maps as causal or clinical explanations: they show what the model is sensitive to.",
]
MEDMNIST_NAMES = frozenset(n for n, info in DATASETS.items() if info.family == "medmnist")  # cited in the card

# the first caveat names the data the test split came from (_caveats)
_CAVEATS = [
    "The operating point is fixed in the card; moving it trades sensitivity for specificity (see the ROC curve in "
    "`qsal report`).",
    "Latency was measured on the CPU named in the Latency section, possibly shared with other work; compare "
    "latencies within one machine.",
    "Quantization changes individual predictions and saliency maps even when aggregate metrics agree; the "
    "comparison with the parent model and the map agreement metrics show by how much.",
]
_EXPLANATIONS = {
    "faithfulness_gap": "accuracy lost when the most salient pixels are removed minus that lost for random pixels "
                        "(higher = the map points at evidence the model uses)",
    "faithfulness_changed": "share of the explained images whose decision some removal moved (0: none moved, so the "
                            "faithfulness gap is 0 whatever the map and ranks nothing)",
    "gini": "sparseness of the map, 0 = spread evenly, 1 = one pixel",
    "map_spearman_vs_fp32": "rank correlation with the plain FP32 model's map of the same image (the FP32 model of the "
                            "same run, which is not the parent of an SGT+PACT model; 1 = same ranking)",
    "map_top10_iou_vs_fp32": "overlap of the 10% most salient pixels with the plain FP32 model's map",
    "deletion_auc": "probability area as salient pixels are deleted (lower = more faithful)",
    "insertion_auc": "probability area as salient pixels are inserted (higher = more faithful)",
}
def hf_license(text: str | None) -> str:
    """The Hugging Face licence id of a dataset licence string (``"CC BY 4.0"`` -> ``"cc-by-4.0"``), else ``other``."""
    t = (text or "").lower().replace(" ", "-")
    for key in ("cc-by-nc-sa-4.0", "cc-by-nc-4.0", "cc-by-sa-4.0", "cc-by-4.0", "cc-by-sa-3.0", "cc0-1.0", "mit",
                "apache-2.0"):
        if t.startswith(key):
            return key
    return "other"


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if v == 0 or abs(v) >= 10 ** -digits else f"{v:.1e}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x, digits) for x in v) if v else "none"
    return str(v)


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows] + [""])


def _ci(m: dict, key: str) -> str:
    ci = (m.get("ci") or {}).get(key)
    return f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "—"


def _uses_wilson(m: dict | None) -> bool:
    """Whether the metrics record Wilson intervals (metrics written before ``ci_method``: bootstrap only)."""
    from qsal.metrics.classification import WILSON

    return WILSON in ((m or {}).get("ci_method") or {}).values()


def _ci_methods(m: dict | None) -> str:
    """How the card's CIs were made, from the metrics' own record (files written before it: all bootstrap)."""
    from qsal.metrics.classification import WILSON

    methods = (m or {}).get("ci_method")
    if methods is None:
        return "95% CIs: percentile bootstrap, 1,000 resamples." if (m or {}).get("ci") else "No CIs recorded."
    parts = []
    bootstrap = sorted({v for v in methods.values() if v != WILSON})
    if bootstrap:
        parts.append(f"AUC and accuracy at 0.5 by the {' / '.join(bootstrap)}")
    if _uses_wilson(m):
        parts.append("sensitivity, specificity" + (", PPV, NPV and accuracy at the operating point"
                                                   if "ppv_at_op" in methods else "")
                     + " by the Wilson score interval (exact counts at a fixed threshold: a proportion of 1.000 on few "
                       "images gets an interval, not [1, 1])")
    return f"95% CIs: {'; '.join(parts)}." if parts else "No CIs recorded."


def _operating_point_outcomes(m: dict, classes: list, positive: str | None) -> list[str]:
    """What the stored decision does on the test split, in counts a clinician reads: the confusion matrix at the
    operating point, and that PPV/NPV hold at this split's prevalence only."""
    cm = m.get("confusion_at_op") or []
    if len(cm) != 2 or len(classes) != 2 or m.get("prevalence") is None:
        return []
    lines = ["At the operating point, test images by true class (rows) and decision (columns):", ""]
    lines += _table(("true class / decided", *classes), [(c, *row) for c, row in zip(classes, cm)])
    lines += [f"PPV and NPV hold at this test split's prevalence of {positive} ({m['prevalence']:.1%}); at a "
              "clinic's own prevalence they differ (sensitivity and specificity do not depend on it).", ""]
    return lines


def write_model_card(onnx_path: str | Path, meta: dict, metrics: dict | None, bench: dict | None,
                     explanations: dict | None = None, *, artifact_metrics: dict | None = None,
                     parent_metrics: dict | None = None, parent_scored: str = "its PyTorch model", data_stats: dict | None = None,
                     n_parameters: int | None = None, versions: dict | None = None, parent_kind: str | None = "FP32",
                     unfinished: str | None = None, parent_training: dict | None = None) -> dict:
    """Write ``<name>.card.md`` and ``<name>.card.json`` beside ``onnx_path``; returns the card dict.

    Args:
        meta: the checkpoint's JSON (``dataset``, ``arch``, ``quant``, ``train``, ``seed``, ``parent_checkpoint``).
        metrics: the checkpoint's ``metrics.json`` (``test``: metrics of the PyTorch model), if evaluated.
        bench: ``bench_onnx`` output for the artifact (size, latency, ``cpu``).
        explanations: saliency metrics (``faithfulness_gap``, ``gini``, ``map_spearman_vs_fp32``...), if measured.
        artifact_metrics: metrics of the ONNX file itself on the test split (with ``ci``); preferred over ``metrics``.
        parent_metrics: test metrics of the parent a quantized model was made from, for the change against it;
            ``parent_scored`` says what was scored (its ONNX file or its PyTorch model), ``parent_kind`` what the
            parent is (``"FP32"``, or ``"SGT"`` for SGT+PACT fine-tuned from a saliency-guided model).
        data_stats: ``{"counts": {split: n}, "class_counts": {split: [n per class]}}``.
        n_parameters: trainable parameters of the architecture.
        versions: package versions (``qsal``, ``onnxruntime``...).
        unfinished: why the checkpoint is an unfinished run's (``run_folder.unfinished_run``), shown first.
        parent_training: the parent's ``{"seed", "epochs", "best_epoch"}`` (its checkpoint's JSON), if readable.
    """
    onnx_path = Path(onnx_path)
    data = meta.get("dataset") or {}
    arch = meta.get("arch") or {}
    quant = meta.get("quant") or {"method": "fp32"}
    versions = versions or {}
    classes = list(data.get("labels") or [])
    pytorch = (metrics or {}).get("test")
    scored = artifact_metrics or pytorch
    scored_what = "the ONNX file run by onnxruntime" if artifact_metrics else "the PyTorch model (ONNX file not scored)"
    opset, storage = onnx_layer_storage(onnx_path)
    recorded = (meta.get("quantization") or {}).get("weights")
    bits = quant_bits(quant, storage, recorded if isinstance(recorded, list) else None) \
        if quant.get("method") != "fp32" else {k: 32 for k in storage}
    size = onnx_path.stat().st_size
    sha256 = file_sha256(onnx_path)  # the card is about these bytes: a reader holding another file can tell
    if bench:  # timed where the file was made (a staging folder): named as the card's own file
        bench = {**bench, "model": printable_path(onnx_path.name), "sha256": sha256}
    binary = data.get("task") == "binary-class"
    positive = (scored or {}).get("positive_class")
    if isinstance(positive, str) and positive.isdigit() and int(positive) < len(classes):
        positive = classes[int(positive)]  # metrics computed without the dataset table name the label id
    positive = positive or (_table_positive_class(data.get("name")) if binary else None) \
        or (classes[-1] if binary and classes else None)
    op = (scored or {}).get("operating_point") or ({"rule": NO_OPERATING_POINT} if binary else
                                                    {"rule": "argmax of the class probabilities"})
    # a saliency-guided model (or fine-tune) is named so: an SGT+PACT card must not read as a PACT one
    guided = trained_saliency_guided(meta)
    method = str(quant.get("method")).replace("_", "-")  # as the CLI spells it (weight-only)
    method = ("sgt" if method == "fp32" else f"sgt+{method}") if guided else method
    name = f"qsal-{arch.get('name', 'model')}-{data.get('name', 'data')}-{method}"
    if quant.get("method") != "fp32":
        from qsal.export.card_storage import deployed_kernels

        widths = deployed_kernels(meta)  # its bit-widths as bench and export name them (act_bits only apart: W7A8)
        name += f"-w{widths['bits']}a{widths['act_bits']}" if "act_bits" in widths else f"-{widths['bits']}bit"
    today = _dt.date.today().isoformat()

    accuracy = "accuracy at 0.5" if binary else "accuracy (argmax)"  # what "acc" is, in the tables below
    hf_metrics = []
    if scored:
        hf_metrics += [{"type": "roc_auc", "value": round(scored["auc"], 4), "name": "test AUC"},
                       # at 0.5 (argmax), not at the operating point of the recall/specificity below: named so
                       {"type": "accuracy", "value": round(scored["acc"], 4), "name": f"test {accuracy}"}]
        # the deployed decision's figures where the card has them (the stored operating point), else at 0.5: a
        # header saying "sensitivity 0.0" for a model that finds 95 % of the positives at its operating point misleads
        for k, hf in (("sensitivity", "recall"), ("specificity", "specificity")):
            at_op = scored.get(f"{k}_at_op") is not None
            value = scored.get(f"{k}_at_op") if at_op else scored.get(k)
            if value is not None:
                hf_metrics.append({"type": hf, "value": round(value, 4), "name": f"test {k} ({positive} positive) "
                                   + ("at the operating point" if at_op else "at 0.5")})
        if scored.get("accuracy_at_op") is not None:  # the accuracy of the decision the deployed file makes
            hf_metrics.append({"type": "accuracy", "value": round(scored["accuracy_at_op"], 4),
                               "name": "test accuracy at the operating point"})
    front = {"license": hf_license(data.get("license")), "library_name": "onnx", "pipeline_tag": "image-classification",
             "tags": ["qsal", "onnx", "medical-imaging", "edge", data.get("name") or "custom",
                      *dict.fromkeys(["fp32" if quant.get("method") == "fp32" else "quantized", quant.get("method")])],
             "datasets": [data.get("name")], "metrics": ["roc_auc", "accuracy"] + (["recall", "specificity"] if binary else [])}
    # no base_model: Hugging Face takes a Hub model id there, and the parent is a local file (named in the details)
    front["model-index"] = [{"name": name, "results": [{
        "task": {"type": "image-classification", "name": "Image Classification"},
        "dataset": {"type": data.get("name"), "name": data.get("name"), "split": "test"},
        "metrics": hf_metrics}]}]

    md = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
          f"# Model card: {name}", "",
          f"A {arch.get('name')} image classifier for {data.get('name')} ({data.get('task')}), "
          f"{'stored in FP32' if quant.get('method') == 'fp32' else 'quantized with ' + str(quant.get('method'))}, "
          f"exported to ONNX for CPU inference. Card written by qsal {versions.get('qsal', '')} on {today}.", ""]
    if unfinished:
        md += [f"> **Unfinished training run.** {unfinished}.", ""]
    md += ["## Model details", ""]
    train = meta.get("train") or {}
    parent = meta.get("parent_checkpoint")
    # the parent by its folder and name (the exporting machine's absolute path says nothing to a reader, and the
    # ONNX metadata strips it too) and by content
    parent_file = printable_path(f"{Path(parent).parent.name}/{Path(parent).name}") if parent else None
    pt = parent_training or {}
    about_parent = [f"sha256 {meta['parent_sha256'][:12]}..." if meta.get("parent_sha256") else "",
                    f"seed {pt['seed']}" if pt.get("seed") is not None else "",
                    f"{pt['epochs']} epochs" + (f", best at epoch {pt['best_epoch']}" if pt.get("best_epoch") else "")
                    if pt.get("epochs") else ""]
    parent_named = parent_file and parent_file + (f" ({'; '.join(a for a in about_parent if a)})"
                                                  if any(about_parent) else "")
    kernels = kernels_run(onnx_path, quant)
    details = [("name / version", f"{name} / qsal {versions.get('qsal', '?')}, {today}"),
               ("architecture", f"{arch.get('name')} ({arch.get('in_channels')} channel(s) in, {arch.get('num_classes')} outputs)"),
               ("parameters", f"{n_parameters:,}" if n_parameters else None),
               ("file", f"{printable_path(onnx_path.name)}, {size / 1024:,.1f} KiB ({size:,} bytes), sha256 {sha256}"),
               ("format", f"ONNX opset {opset}" + (", QDQ with integer weights" if any(v != "FP32" for v in storage.values())
                                                 else ", float weights")),
               ("kernels", kernels["text"]),
               ("runtime", f"onnxruntime {versions.get('onnxruntime', '')} (CPU); `qsal.runtime.Runtime` applies the "
                           "preprocessing stored in the file"),
               ("software", ", ".join(f"{k} {v}" for k, v in versions.items() if v) or None),
               ("input", f"uint8 images {data.get('image_size')}x{data.get('image_size')}, {data.get('n_channels')} "
                         f"channel(s); x/255, then (x - {data.get('mean')}) / {data.get('std')}"),
               ("fine-tune" if parent else "training", f"{TrainConfig.describe_record(train)}, seed {meta.get('seed')}"
                            + (f"; selected at epoch {meta['epoch']}" if meta.get("epoch") else "")
                            + ("; the weights are that moving average (with warm-up), as validated and selected"
                               if train.get("ema_decay") else "")
                            + (f"; saliency-guided (Ismail et al. 2021: k {step.get('k')}, lambda {step.get('lambda')})"
                               if guided and isinstance(step := meta.get("step"), dict) else "")
                            if train else None),
               ("seed", None if train or meta.get("seed") is None else
                f"{meta['seed']} (picks the calibration images)" if parent and quant.get("method") != "weight_only"
                else meta["seed"]),
               ("calibration images", f"{meta['calibration_images']} training images (num_calibration "
                f"{quant.get('num_calibration')}: at most that many)" if meta.get("calibration_images") else None),
               (f"parent ({parent_kind or 'unreadable now'})", parent_named)]
    md += _table(("item", "value"), [d for d in details if d[1] is not None and d[1] != ""])
    md += ["### Quantization", ""]
    if quant.get("method") == "fp32":
        md += ["None: FP32 weights and activations.", ""]
    else:
        md += _table(("setting", "value"), [(k, v) for k, v in quant.items() if not isinstance(v, dict)])
        md += ["Per-layer weights (bits from the quantization record; storage read from the ONNX graph; ONNX has no "
               "2- or 3-bit type, so those use INT4 containers):", ""]
        md += _table(("layer", "weight bits", "ONNX storage"), [(k, bits.get(k), v) for k, v in storage.items()])
        for key, value in quant.items():
            if isinstance(value, dict) and value:
                md += [f"`{key}`:", ""] + _table(("entry", "value"), list(value.items()))

    md += ["## Intended use", "",
           "Research on compressing and explaining medical-image classifiers for edge CPUs; decision-support "
           "studies on images like the training data, with a clinician in the loop.", "",
           "## Out-of-scope use", ""] + [f"- {t}" for t in _OUT_OF_SCOPE] + [""]

    md += ["## Training and evaluation data", "",
           f"{data.get('name')} ({data.get('task')}; classes: {' · '.join(f'{i}: {c}' for i, c in enumerate(classes))}); licence {data.get('license')}; "
           f"{describe_splits(data.get('name') or '')}; model selected on the validation split, metrics on test.", ""]
    if data_stats:
        counts, per_class = data_stats.get("counts") or {}, data_stats.get("class_counts") or {}
        md += _table(("split", "images") + tuple(classes),
                     [(s, counts.get(s), *(f"{c} ({c / max(counts.get(s) or 1, 1):.0%})" for c in per_class.get(s, [])))
                      for s in counts])

    md += ["## Metrics", "", f"Measured on {scored_what}, test split"
           + (f", n = {scored['n']}" if scored else "") + "; operating point: "
           + (describe_operating_point(op, positive) if op.get("threshold") is not None else str(op.get("rule")))
           + (f"; positive class: **{positive}**" if positive else "") + ". " + _ci_methods(scored)
           + kernels_scored(artifact_metrics), ""]
    if scored:
        about = f" (positive: {positive})" if positive else ""  # specificity is the other class's recall
        # these count the most probable class as the decision: for a binary model that is 0.5, not the operating point
        at_argmax = " at 0.5" if binary else " (most probable class)"
        keys = [("AUC", "auc"), (accuracy, "acc"), (f"sensitivity{about} at 0.5", "sensitivity"),
                (f"specificity{about} at 0.5", "specificity"),
                (f"sensitivity{about} at the operating point", "sensitivity_at_op"),
                (f"specificity{about} at the operating point", "specificity_at_op"),
                ("PPV (precision" + (f"; positive: {positive}" if positive else "") + ") at the operating point",
                 "ppv_at_op"),
                ("NPV at the operating point", "npv_at_op"), ("accuracy at the operating point", "accuracy_at_op"),
                (f"balanced accuracy{at_argmax}", "balanced_accuracy"), (f"macro F1{at_argmax}", "macro_f1"),
                ("ECE (calibration error, 15 bins)", "ece"), ("temperature", "temperature")]
        undefined = scored.get("undefined") or {}
        # an operating-point figure with no value says why (no image decided positive: no PPV), not vanish
        md += _table(("metric", "value", "95% CI"), [
            (label, scored[k] if scored.get(k) is not None else f"undefined ({undefined[k]})", _ci(scored, k))
            for label, k in keys if scored.get(k) is not None or (k.endswith("_at_op") and k in undefined)])
        md += _operating_point_outcomes(scored, classes, positive)
        md += ["## Factors", "", f"Per-class recall{at_argmax} (how often images of each class are recognised"
               + ("; at the operating point, sensitivity and specificity above" if binary else "") + "); other factors "
               "(site, device, age, sex) are not recorded in the dataset and were not evaluated.", ""]
        recall = scored.get("per_class_recall") or {}
        cm = scored.get("confusion") or []
        if not recall and cm and classes:
            recall = {c: (row[i] / sum(row) if sum(row) else None) for i, (c, row) in enumerate(zip(classes, cm))}
        if recall:
            support = {c: sum(row) for c, row in zip(classes, cm)} if cm else {}
            md += _table(("class", "recall", "test images"), [(c, r, support.get(c)) for c, r in recall.items()])
    else:
        md += ["Not measured (run `qsal evaluate`, or export with the data available).", ""]

    if parent_metrics and scored:
        parent_name = f"{parent_kind} parent" if parent_kind else "parent"
        md += [f"## Change against the {parent_name}", "", f"This model ({scored_what}) minus its {parent_name} "
               f"({parent_scored}), on the same test split; each model decides at its own operating point, chosen on "
               "validation for it:", ""]
        rows = [("AUC", "auc"), (accuracy, "acc")]
        for k in ("sensitivity", "specificity"):  # at the operating point where both sides have it, else at 0.5
            at_op = scored.get(f"{k}_at_op") is not None and parent_metrics.get(f"{k}_at_op") is not None
            rows.append((f"{k} (positive: {positive}) " + ("at the operating point" if at_op else "at 0.5"),
                         f"{k}_at_op" if at_op else k))
        md += _table(("metric", "this model", parent_name, "change"),
                     [(label, scored[k], parent_metrics[k], f"{scored[k] - parent_metrics[k]:+.3f}")
                      for label, k in rows if scored.get(k) is not None and parent_metrics.get(k) is not None])
    if bench:
        # a CPU without VNNI: the 8-bit layers were timed on the exact kernels (or, by the user's choice, the fast ones)
        here = next((f" ({bench[k]})" for k in KERNEL_NOTE_KEYS if bench.get(k)), "")
        md += ["## Latency", "", f"CPU: {bench.get('cpu', 'this machine')}; onnxruntime default session{here}; each "
               "configuration in a fresh process, after 5 untimed calls; timed: the graph's forward pass on an "
               "already-normalised batch (no image decoding or resizing); images/s: images scored over the time the "
               "timed calls took.", ""]
        md += _table(("threads", "batch", "p50 ms", "p95 ms", "images/s"),
                     [(r["threads"], r["batch"], r["latency_ms_p50"], r["latency_ms_p95"], f"{r['throughput_img_s']:,.0f}")
                      for r in bench.get("runs", [])])
    md += ["## Explanation metrics", ""]
    if explanations:
        md += _table(("metric", "value", "meaning"), [(k, v, _EXPLANATIONS.get(k, "")) for k, v in explanations.items()])
    else:
        md += ["Not measured (`qsal demo`, `qsal run` and `qsal report` measure them).", ""]
    caveats = [("Metrics come from the test part of one image folder" if str(data.get("name")).startswith("folder:")
                else "Metrics come from one public test split of low-resolution images")
               + "; confidence intervals (" + ("percentile bootstraps for AUC and accuracy at 0.5, Wilson intervals "
                                               "for proportions at a fixed threshold" if _uses_wilson(scored) else
                                               "percentile bootstraps") +
               ") are over that split and do not cover other sites or shifts.", *_CAVEATS]
    md += ["## Caveats and recommendations", ""] + [f"- {t}" for t in caveats] + [""]
    if data.get("name") in MEDMNIST_NAMES:  # MNIST and CIFAR-10 are not MedMNIST's
        md += ["## Citation", "", "Data: Yang et al., MedMNIST v2, Scientific Data 10, 41 (2023) and the subset's source. "
               "Card format: Mitchell et al., Model Cards for Model Reporting, FAT* 2019.", ""]

    card = {"name": name, "date": today, "metadata": front, "model": printable_path(onnx_path.name), "architecture": arch,
            "parameters": n_parameters, "size_bytes": size, "sha256": sha256, "opset": opset, "layers": {k: {"storage": v, "bits": bits.get(k)}
                                                                                    for k, v in storage.items()},
            "quantization": quant, "data": {**{k: data.get(k) for k in ("name", "task", "labels", "license")},
                                            **(data_stats or {})},
            "metrics": {"scored": "onnx" if artifact_metrics else "pytorch", "test": scored, "operating_point": op,
                        "positive_class": positive, "pytorch_test": pytorch, "parent_test": parent_metrics,
                        "parent_scored": parent_scored if parent_metrics else None,
                        "parent_kind": parent_kind if meta.get("parent_checkpoint") else None},
            "kernels": {k: v for k, v in kernels.items() if k != "text"}, "versions": versions,
            "latency": bench, "explanations": explanations,
            "training": {"config": train, "seed": meta.get("seed"), "fine_tune": bool(parent and train),
                         "best_epoch": meta.get("epoch"), "unfinished": unfinished,
                         "parent": parent_file, "parent_sha256": meta.get("parent_sha256"),
                         "parent_training": parent_training},
            "out_of_scope": _OUT_OF_SCOPE, "caveats": caveats}
    write_json_atomic(onnx_path.with_suffix(".card.json"), card)
    write_text_atomic(onnx_path.with_suffix(".card.md"), "\n".join(md))
    return card


def _table_positive_class(name: str | None) -> str | None:
    """The dataset table's clinically positive class (BreastMNIST: malignant), when metrics do not name one."""
    from qsal.data.registry import get_info

    try:
        return get_info(name).positive_class if name else None
    except Exception:  # a folder dataset or an unknown name: no table entry
        return None
