"""Report text: the results table, the environment table and the glossary (markdown; HTML from it)."""

from __future__ import annotations

import html

__all__ = ["COLUMNS", "GLOSSARY", "glossary_entries", "results_table", "results_text_table", "environment_table", "glossary_markdown", "md_to_html_table",
           "format_cell"]

COLUMNS = [("model", "model"), ("seed_ids", "seed ids"), ("scored", "scored as"), ("test_auc", "AUC"),
           ("test_auc_std", "AUC std"), ("auc_ci", "AUC 95% CI"), ("test_acc", "ACC"), ("test_acc_std", "ACC std"),
           ("acc_ci", "ACC 95% CI"), ("sensitivity", "sens. @ 0.5"), ("specificity", "spec. @ 0.5"),
           ("sensitivity_at_op", "sens. @ op"), ("sensitivity_at_op_std", "sens. @ op std"),
           ("specificity_at_op", "spec. @ op"), ("specificity_at_op_std", "spec. @ op std"), ("threshold", "op threshold"),
           ("ece", "ECE"),
           ("pytorch_acc", "PyTorch ACC"), ("size_bytes", "ONNX size"), ("size_ratio", "size vs FP32"),
           ("kernels", "runs on"), ("latency_b1_ms", "b1 p50 ms"), ("throughput_b64", "b64 img/s"),
           ("throughput_definition", "img/s by"), ("latency_cpus", "timed on (CPUs)"), ("faithfulness_gap", "faithfulness gap"),
           ("faithfulness_gap_std", "gap std"), ("deletion_auc", "deletion AUC ↓"), ("insertion_auc", "insertion AUC ↑"),
           ("agreement_spearman", "map ρ vs ref."), ("gini", "Gini")]

GLOSSARY = [
    ("Seeds, mean and std", "A row with several seeds shows the mean over its finished seeds (latency and "
                            "throughput: the median, as the seeds time one network and differ by noise only) and, in "
                            "the std columns, their population standard deviation (ddof 0, numpy's default); the "
                            "sample standard deviation (ddof 1) is 1.22x that for 3 seeds, 1.41x for 2."),
    ("AUC", "Area under the ROC curve of the positive-class probability (binary) or the mean one-vs-rest AUC "
            "(multi-class), as the MedMNIST evaluator defines it. 0.5 is chance, 1 is perfect ranking."),
    ("ACC", "Fraction of test images whose most probable class is the true one (MedMNIST's ACC: for two classes, "
            "probability 0.5), not at the operating point; the '@ op' columns are."),
    ("95% CI", "Percentile bootstrap interval over 1,000 resamples of the test set: the range the metric would "
               "plausibly take on another test set of the same size. Overlapping intervals mean the data cannot "
               "tell the models apart. A row with several seeds shows the interval of its mean over seeds: each "
               "resample draws the test images once and scores every seed's artifact on that draw (seeds with test "
               "splits of their own, each on its own draw), so it covers test-set sampling only; the std column is "
               "the seed-to-seed spread. Where a seed saved no test predictions (cells made before qsal saved "
               "them), the row shows its lowest-numbered seed's interval instead (the JSON's ci_seeds: 1)."),
    ("Sensitivity / specificity", "Recall of the positive class / of the negative class. Which class is "
                                  "positive is stated in the header; for BreastMNIST label 0 is malignant."),
    ("Operating point", "The decision threshold on the positive-class probability (0.5 unless a rule chose "
                        "another one on the validation split); '@ op' columns are measured there, '@ 0.5' ones at "
                        "probability 0.5. Each model has its own ('op threshold'; a row of several seeds shows its "
                        "first seed's, the seed its plots and captions show), which the deployed file applies. In a "
                        "row of several seeds, each seed decides at its own threshold: '@ op' is the mean of those "
                        "seeds' figures ('@ op std' their spread), not the figure at the threshold shown."),
    ("Explanation columns", "Faithfulness gap, deletion/insertion AUC, Gini and map ρ: in a `qsal run` report, "
                            "measured on each cell's PyTorch model (a quantized cell's fake-quantized forward, the "
                            "grid the deployed file computes on) with |input gradient| maps; in a report of files, "
                            "the maps are the PyTorch checkpoints' integrated gradients (occlusion of the ONNX files "
                            "when one has no checkpoint) and the removal curves run the ONNX files."),
    ("ECE", "Expected calibration error: the gap between confidence and accuracy, averaged over 15 equal-width "
            "confidence bins weighted by their size. 0 means the probabilities can be read as frequencies."),
    ("Scored as", "'ONNX artifact': the metrics are the exported ONNX file's, run by onnxruntime (the artifact "
                  "that would be deployed), not the PyTorch model's it came from; 'PyTorch model': the checkpoint's."),
    ("PyTorch ACC", "Test accuracy of the PyTorch model the ONNX file was exported from (a quantized cell's "
                    "fake-quantized model), beside the file's own: a gap between the two is what export changed."),
    ("Size vs FP32", "ONNX file size divided by the FP32 model's. Sizes are in KiB/MiB (1 KiB = 1,024 bytes)."),
    ("Latency / throughput", "Median time for one image on one thread (batch 1), and images per second at "
                             "batch 64: 'img/s by' says how, 'total' = the images scored over the time the timed calls "
                             "took; 'median' = the batch over the median call (cells measured before 2026-11-28 10:27 "
                             "UTC), which reads higher on a busy CPU; 'mixed' = seeds of both. Each cell is measured in "
                             "a fresh process on the machine that ran it ('Where the cells ran'; a report of files: "
                             "the environment table); a row whose seeds ran on several CPUs says how many ('timed on'): "
                             "its mean mixes machines. The ONNX graph's forward pass only, no image decoding."),
    ("Runs on", "What onnxruntime runs the deployed file on, as its export measured on onnxruntime's optimised graph: "
                "'integer' (QLinearConv/QGemm kernels), 'float' (an FP32 file), 'float, dequantized per call' "
                "(weight-only: smaller file, but every call dequantizes the weights, so it is slower than FP32), "
                "'integer + float' (layers kept in FP32); 'integer, exact u8u8 (no VNNI)': scored and timed on a "
                "CPU whose fast integer kernels saturate (x86-64 without VNNI), its 8-bit layers on onnxruntime's "
                "exact, slower u8 x u8 kernels; 'integer, saturating (no VNNI, QSAL_INTEGER_KERNELS=1)': on the "
                "fast ones although they saturate there (numbers can differ from the validated model's); 'float, "
                "dequantized (no VNNI)': run there as its dequantized float graph (what qsal did before it used the "
                "exact kernels); '—' or 'k of N seeds recorded': cells exported before qsal recorded it."),
    ("Pareto front", "Models that no other model beats on both axes. Here a model counts as beaten only when "
                     "another is at least as small (or, within 10 %, as fast: latency is noisy) and not worse "
                     "beyond its 95% CI, so models that tie within their CIs are not separated. The bars are the "
                     "CIs (of a row's mean over seeds, as the table's), widened to reach the plotted value where one "
                     "lies outside (a row that fell back to its first seed's interval)."),
    ("Faithfulness gap", "Test accuracy after removing the most salient pixels compared with removing as many "
                         "random pixels, averaged over removal fractions: mean accuracy (random removal) minus "
                         "mean accuracy (salient removal). Larger means the map points at pixels the model uses; "
                         "near 0, the map is no better than chance, or the model's accuracy does not move when "
                         "pixels go (a model that gives one class to every image scores 0 whatever its maps); below "
                         "0, removing the salient pixels hurts less than removing random ones (the map points away "
                         "from what the model uses, or the removal fill itself is evidence for the class). "
                         "Measured on the sample the header names, not the whole test split."),
    ("Deletion / insertion AUC", "Area under the probability curve as salient pixels are removed (deletion, "
                                 "lower is better) or added to a blank image (insertion, higher is better)."),
    ("Gini", "Gini index of the map's absolute values: 0 spreads attribution evenly over all pixels, 1 puts it "
             "on a single pixel. Higher means a sparser, more focused map. An all-zero map (Grad-CAM of a class "
             "the evidence is against) attributes nothing: it has no Gini and is left out of the mean."),
    ("Map ρ (Spearman)", "Rank correlation between a model's saliency map and the reference model's map of the "
                         "same image, averaged over images; 1 means the same pixel ranking."),
    ("Top-10% IoU", "Overlap (intersection over union) of the 10% most salient pixels of two maps."),
    ("SSIM", "Structural similarity of two maps (1 = identical structure)."),
]


def format_cell(key: str, v) -> str:
    """A value as the report shows it: sizes in KiB/MiB, CIs as ``lo–hi``, 3 decimals."""
    if v is None:
        return "—"
    if key == "size_bytes":
        return f"{v / 1024 ** 2:,.2f} MiB" if v >= 1024 ** 2 else f"{v / 1024:,.1f} KiB"
    if key.endswith("_ci"):
        return f"{v[0]:.3f}–{v[1]:.3f}"
    if key == "throughput_b64":
        return f"{v:,.0f}"
    if key == "size_ratio":
        return f"{v:.3f}x"
    if key == "threshold":  # a threshold near 0.05 (Youden on a rare class) needs its significant digits
        return f"{v:#.4g}"  # 0.3660 beside 0.5409: one width in a column
    if key == "scored":
        return "ONNX artifact" if v == "onnx" else "PyTorch model"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _named_columns(rows: list[dict], columns) -> list[tuple[str, str]]:
    """The columns some row has; sensitivity/specificity headers name the positive class they are about."""
    positives = {r.get("positive_class") for r in rows if r.get("positive_class") is not None}
    about = f" (positive: {positives.pop()})" if len(positives) == 1 else ""  # specificity is the other class's recall
    if len(positives) > 1:  # a study of several datasets: each row says which class its sensitivity is about
        at = [k for k, _ in columns].index("scored") + 1 if any(k == "scored" for k, _ in columns) else 1
        columns = [*columns[:at], ("positive_class", "positive class"), *columns[at:]]
    named = {"sensitivity", "specificity", "sensitivity_at_op", "specificity_at_op"}
    return [(k, h.replace(".", "." + about, 1) if k in named and about else h) for k, h in columns
            if any(r.get(k) is not None for r in rows)
            # shown only where some row's seeds were timed on several CPUs (their mean mixes machines), and where
            # some row's throughput is not today's definition
            and (k != "latency_cpus" or any((r.get(k) or 0) > 1 for r in rows))
            and (k != "throughput_definition" or any(r.get(k) not in (None, "total") for r in rows))]


def results_table(rows: list[dict], columns=COLUMNS) -> str:
    """Markdown table of the rows, only the columns that some row has."""
    cols = _named_columns(rows, columns)
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(format_cell(k, r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines)


def results_text_table(rows: list[dict], columns=COLUMNS) -> str:
    """The results as aligned plain text for a terminal (names left, numbers right)."""
    cols = _named_columns(rows, columns)
    cells = [[h for _, h in cols]] + [[format_cell(k, r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in cells)


def environment_table(env: dict) -> str:
    """Markdown table: machine, Python, threads, time, then one row per package version."""
    rows = [("CPU", env.get("cpu")), ("cores", env.get("cpu_count")), ("torch threads", env.get("torch_threads")),
            ("platform", env.get("platform")), ("Python", env.get("python")), ("measured (UTC)", env.get("utc"))]
    rows += [(name, version or "not installed") for name, version in (env.get("versions") or {}).items()]
    lines = ["| item | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v is not None]
    return "\n".join(lines)


def machines_table(machines: list[dict]) -> str:
    """Markdown table of where a study's cells ran (``collect_results``'s ``machines``)."""
    # torch threads are the training's; latency is always ONNX Runtime on 1 thread (qsal.study.cell)
    lines = ["| trained on | CPU (ONNX scoring, latency) | torch | torch threads (training) | cells | datasets |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {m['trained_on']} | {m['cpu']} | {m['torch']} | {m['torch_threads']} | {m['cells']} | "
              f"{', '.join(m['datasets'])} |" for m in machines]
    return "\n".join(lines)


# the columns an entry explains: it is printed only in a report that shows one of them (a CIFAR-10 report described
# sensitivity and operating points it has no column for); entries not listed here are about every report
_GLOSSARY_COLUMNS = {
    "Sensitivity / specificity": {"sensitivity", "specificity", "sensitivity_at_op", "specificity_at_op"},
    "Operating point": {"threshold", "sensitivity_at_op", "specificity_at_op"},
    "Explanation columns": {"faithfulness_gap", "deletion_auc", "insertion_auc", "gini", "agreement_spearman"},
    "ECE": {"ece"}, "Scored as": {"scored"}, "PyTorch ACC": {"pytorch_acc"}, "Size vs FP32": {"size_ratio"},
    "Latency / throughput": {"latency_b1_ms", "throughput_b64"}, "Runs on": {"kernels"},
    "Faithfulness gap": {"faithfulness_gap"}, "Deletion / insertion AUC": {"deletion_auc", "insertion_auc"},
    "Gini": {"gini"}, "Map ρ (Spearman)": {"agreement_spearman", "most_changed"},
    "Top-10% IoU": {"agreement_spearman", "most_changed"}, "SSIM": {"agreement_spearman"},
}


def glossary_entries(rows: list[dict] | None = None) -> list[tuple[str, str]]:
    """The glossary's ``(term, text)`` entries for a report of ``rows`` (every entry without rows)."""
    if rows is None:
        return list(GLOSSARY)
    shown = {k for k, _ in _named_columns(rows, COLUMNS)}
    if any(r.get("most_changed") for r in rows):  # the table of images whose explanation changed most
        shown.add("most_changed")
    return [(t, d) for t, d in GLOSSARY if t not in _GLOSSARY_COLUMNS or _GLOSSARY_COLUMNS[t] & shown]


def glossary_markdown(rows: list[dict] | None = None) -> str:
    return "\n".join(f"- **{term}**: {text}" for term, text in glossary_entries(rows))


def md_to_html_table(md: str) -> str:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<div class='scroll'><table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table></div>"
