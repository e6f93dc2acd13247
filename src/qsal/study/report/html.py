"""``write_report``: results -> ``report.md`` and one self-contained ``report.html`` (images inlined).

Computes nothing about models: it lays out what the runs measured (metrics, sizes, latencies, maps,
test-set probabilities). Every figure has alt text; the page fits 1280 px without horizontal scrolling.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from qsal._atomic import write_text_atomic
from qsal.metrics.operating_point import describe_operating_point
from qsal.study.folders import stale_advice
from qsal.study.report.plots import ci_plot, diagnostics_plot, tradeoff_plot
from qsal.study.report.saliency import saliency_figures
from qsal.study.report.tables import (environment_table, glossary_entries, glossary_markdown, machines_table,
                                     md_to_html_table, results_table, results_text_table)

__all__ = ["write_report"]

_CSS = ("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;padding:1.5em 2em;"
        "max-width:1180px;color:#222;line-height:1.45}h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;"
        "padding-bottom:.2em;margin-top:1.6em}.meta{color:#555}.scroll{overflow-x:auto;max-width:100%}"
        "table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;"
        "text-align:right}td{white-space:nowrap}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
        "figure{margin:0 0 1.2em 0;max-width:100%}.grid{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));"
        "gap:0 1.5em}img{max-width:100%;height:auto}figcaption{font-size:13px;color:#444;"
        "max-width:60em}code{background:#f5f5f5}dl dt{font-weight:600;margin-top:.5em}dl dd{margin-left:1.5em}"
        ".note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em}")


def _img(path: Path, alt: str, wide: bool = False) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (f"<figure><img alt=\"{html.escape(alt)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def _operating_point(op: dict | None) -> str | None:
    if not op:
        return None
    return describe_operating_point(op) if op.get("threshold") is not None else None


def _common_rule(rows: list[dict]) -> str:
    """How every model's threshold was chosen, when they share it: ``, each by youden on the validation split with
    the PyTorch model's scores`` (empty when the rows differ or do not record it)."""
    ops = [op for r in rows if isinstance(op := r.get("operating_point"), dict) and op.get("threshold") is not None]
    how = {(op.get("rule"), op.get("chosen_on")) for op in ops}
    if len(how) != 1:
        return ""
    rule, chosen = how.pop()
    if chosen in ("fixed", "fixed default") or not rule or not chosen:
        return ""
    # whose scores chose it is recorded by newer cells only: an older cell's silence must not hide the rule and split
    scores = {op.get("scores") for op in ops}
    recorded = sorted(x for x in scores if x)
    where = " (where recorded)" if None in scores else ""
    if set(recorded) == {"PyTorch model", "fake-quantized PyTorch model"}:  # FP32 cells beside quantized ones
        return (f", each by {rule} on the {chosen} split with its own PyTorch model's scores{where} (a quantized "
                "cell's: its fake-quantized forward)")
    said = "" if len(recorded) != 1 else f" with the {recorded[0]}'s scores" + where
    return f", each by {rule} on the {chosen} split" + said


def _positive_per_dataset(rows: list[dict]) -> str | None:
    """``"breastmnist: malignant; retinamnist: none (multi-class)"`` when rows (labelled ``dataset/model/...``)
    span several datasets: one study's sets have different positive classes, and the first row's is not the others'."""
    per: dict[str, str] = {}
    for r in rows:
        if "/" in str(r.get("model", "")):
            per.setdefault(r["model"].split("/")[0], r.get("positive_class") or "none (multi-class: one vs the rest)")
    return "; ".join(f"{d}: {p}" for d, p in per.items()) if len(per) > 1 else None


def _classes_per_dataset(rows: list[dict]) -> str | None:
    """``"breastmnist: 0: malignant · 1: normal, benign; clinic: 0: benign · 1: malignant"`` when rows span several
    datasets (each row records its own set's classes): a study's own folder's classes are in no table to look up."""
    per = {r["dataset"]: _classes(r["class_names"]) for r in rows
           if isinstance(r.get("dataset"), str) and isinstance(r.get("class_names"), list) and r["class_names"]}
    return "; ".join(f"{d}: {c}" for d, c in per.items()) if len(per) > 1 else None


def _classes(names: list[str]) -> str | None:
    """``0: malignant · 1: normal, benign``: labels numbered, as a label may hold a comma (BreastMNIST's 1)."""
    if not names:
        return None
    if all(n == str(i) for i, n in enumerate(names)):
        return ", ".join(names)
    return " · ".join(f"{i}: {n}" for i, n in enumerate(names))


def _splits(rows: list[dict]) -> str | None:
    """Where each dataset's validation split came from (CIFAR-10 and MNIST hold 10 % of training out, which matters
    beside published figures trained on all of it); None for rows that do not name a table dataset."""
    from qsal.data import describe_splits, get_info
    from qsal.errors import QsalError

    said = {}
    for ds, source in dict.fromkeys((r.get("dataset"), r.get("data_source")) for r in rows
                                    if isinstance(r.get("dataset"), str)):
        source = source if isinstance(source, str) and source.startswith("folder:") else ds  # a study's own folder
        try:
            if not source.startswith("folder:"):
                get_info(source)  # a name this qsal's table knows (a report title of several is not one)
            said[ds] = describe_splits(source)
        except QsalError:
            continue
        mine = [r for r in rows if r.get("dataset") == ds]
        seeds = max((r["seeds"] for r in mine if isinstance(r.get("seeds"), int)), default=1)
        drawn = {s for r in mine for s in r.get("split_seeds") or []}
        if source.startswith("folder:") and said[ds].startswith("a seeded") and seeds > 1:
            # a study's folders.X.split_seed: one split for every seed (cells made before it was recorded: anew)
            said[ds] += (f" drawn once, by split seed {drawn.pop()}, for every seed (a row's seeds share their test "
                         "images)" if len(drawn) == 1 and all(r.get("split_seeds") for r in mine)
                         else " drawn anew by each seed (a row's seeds differ in their test images too)")
    if len(set(said.values())) == 1:
        return next(iter(said.values()))
    return "; ".join(f"{ds}: {text}" for ds, text in said.items()) or None


def _header(results: dict, rows: list[dict]) -> list[tuple[str, str]]:
    env = results.get("environment") or {}
    versions = env.get("versions") or {}
    first = rows[0] if rows else {}
    ops = {_operating_point(r.get("operating_point")) for r in rows}
    op_text = ops.pop() if len(ops) == 1 else "each model's own (the 'op threshold' column)" + _common_rule(rows)
    positive = results.get("positive_class") or _positive_per_dataset(rows) or first.get("positive_class")
    names = results.get("class_names") or []
    if not positive and len(names) == 2:  # what the evaluator scores when no positive class is recorded
        positive = f"{names[1]} (label 1, the evaluator's default; not chosen for this report)"
    per_set = results.get("n_test_per_dataset") or {}  # a study of several datasets: each test split's size
    n_test = results.get("n_test") or "; ".join(f"{d}: {n}" for d, n in per_set.items()) or first.get("n")
    items = [("dataset", results.get("dataset")), ("test images (n)", n_test),
             ("splits", _splits(rows if any(r.get("dataset") for r in rows) else [{"dataset": results.get("dataset")}])),
             ("classes", _classes(names) or _classes_per_dataset(rows)),
             ("positive class", positive or ("— (multi-class: one class vs the rest)" if len(names) > 2 else None)),
             ("operating point", op_text),
             ("architecture", results.get("architecture")), ("schedule", results.get("schedule")),
             ("explanation columns", results.get("explanations")),
             ("source", results.get("source")),
             ("date (UTC)", (env.get("utc") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))[:16]
              .replace("T", " ")),
             ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("qsal", "torch", "onnxruntime") and v))]
    return [(k, str(v)) for k, v in items if v]


def write_report(out_dir: str | os.PathLike, results: dict) -> dict:
    """Write ``report.md``, ``report.html`` (self-contained) and the figures into ``out_dir``.

    ``results``: ``rows`` (one dict per model, see ``tables.COLUMNS``), ``dataset``, and optionally
    ``class_names``, ``n_test``, ``positive_class``, ``architecture``, ``source``, ``environment``,
    ``failed``, ``predictions`` (model -> ``{"y_true": (N,), "probs": (N, K)}`` test probabilities, for the
    confusion/ROC/reliability figures), ``saliency`` (see ``saliency.saliency_figures``) or prebuilt
    ``saliency_grids`` (PNG paths). Returns the markdown table and the two paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # composed in a staging folder and moved into place whole: an interrupted report leaves the earlier one as it was
    # (not new figures beside old tables), and figures of an earlier report that this one does not draw (a model or
    # dataset dropped) are removed, not left to be opened as current
    stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        written = _compose(stage, out, results)
        earlier = _linked_figures(out / "report.md")
        drawn = {f.name for f in stage.iterdir()}
        for f in sorted(stage.iterdir(), key=lambda f: f.suffix in (".md", ".html")):  # the pages last
            os.replace(f, out / f.name)
        # only figures the earlier report linked (never a user's file that happens to share a name), and a
        # concurrent report removing the same one first is no error
        for name in earlier:
            if name not in drawn:
                (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {**written, "markdown": str(out / "report.md"), "html": str(out / "report.html")}


# the figures write_report draws in its folder (saliency grids of a run's cells live in their own folders)
REPORT_FIGURES = ("acc_vs_*.png", "auc_vs_*.png", "metrics_ci.png", "diagnostics_*.png", "saliency_grid.png",
                  "saliency_most_changed.png")


def _linked_figures(report_md: Path) -> list[str]:
    """The figures of this folder an earlier ``report.md`` links (names of ``REPORT_FIGURES``' patterns only)."""
    import re

    try:
        text = report_md.read_text(encoding="utf-8")
    except OSError:
        return []
    names = dict.fromkeys(re.findall(r"\]\(([^)/\\]+\.png)\)", text))
    return [n for n in names if any(Path(n).match(p) for p in REPORT_FIGURES)]


def _compose(out: Path, final: Path, results: dict) -> dict:
    """The report's figures and pages written into ``out`` (a staging folder), linked as they will sit in ``final``."""
    rows = results["rows"]
    for r in rows:  # the threshold each model decides at: models differ, so it is a column, not a header line
        if r.get("threshold") is None and (r.get("operating_point") or {}).get("threshold") is not None:
            r["threshold"] = float(r["operating_point"]["threshold"])
    table = results_table(rows)
    header = _header(results, rows)
    notes: list[str] = []
    mixed = [r["model"] for r in rows if r.get("mixed_configs")]
    if mixed:
        notes.append(f"Not one method across seeds: the cells of {', '.join(mixed)} were made with different "
                     "quantization configs (or versions); compare their result.json 'quant_config', and redo the odd ones.")
    # every seed recorded the share (a row's mean is over those that did) and none moved a decision
    unmoved = [r["model"] for r in rows if r.get("faithfulness_changed") == 0 and r.get("faithfulness_gap") == 0
               and r.get("faithfulness_changed_seeds", r.get("seeds", 1)) == r.get("seeds", 1)]
    if unmoved:  # accuracy could not tell the maps apart: the gap of these rows ranks nothing
        notes.append(f"Faithfulness gap of {', '.join(unmoved)}: no removal of pixels, salient or random, moved any "
                     "explained image's decision (the model gave each the same class, intact or blanked), so the gap "
                     "is 0 whatever the maps; deletion / insertion AUC, which follow the probability, still compare "
                     "them.")
    tradeoffs: list[tuple[Path, str]] = []
    # one front per dataset: an accuracy on one test set does not beat or tie an accuracy on another
    datasets = sorted({r["dataset"] for r in rows if r.get("dataset")})
    by_dataset = [(ds, [r for r in rows if r.get("dataset") == ds]) for ds in datasets] if len(datasets) > 1 \
        else [(None, rows)]
    for ds, ds_rows in by_dataset:
        suffix = "_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in ds) if ds else ""
        for x_key, name in (("size_bytes", "size"), ("latency_b1_ms", "latency")):
            for y_key in ("test_acc", "test_auc"):
                if ds_rows and all(r.get(x_key) is not None and r.get(y_key) is not None for r in ds_rows):
                    metric = "ACC" if y_key == "test_acc" else "AUC"
                    png, front = tradeoff_plot(ds_rows, x_key, out / f"{metric.lower()}_vs_{name}{suffix}.png", y_key)
                    tie = (f"No model beats {front[0]} beyond the 95% CI, so no front is drawn."
                           if len(front) == 1 else f"Front (beyond the 95% CI): {', '.join(front)}.")
                    tradeoffs.append((png, (f"{ds}: " if ds else "") + f"Test {metric} against "
                                      f"{'ONNX file size' if name == 'size' else 'latency'}, with 95% bootstrap CIs. "
                                      f"{tie}"))
    forest = None
    if rows and any(r.get("auc_ci") for r in rows):
        forest = (ci_plot(rows, out / "metrics_ci.png"),
                  "Test AUC and ACC of every model with 95% bootstrap confidence intervals")
    diagnostics = []
    predictions = results.get("predictions") or {}
    class_names = results.get("class_names")
    positive_default = results.get("positive_label")
    if positive_default is None and class_names and results.get("positive_class") in class_names:
        positive_default = class_names.index(results["positive_class"])
    for r in rows:
        pred = predictions.get(r["model"])
        names = r.get("class_names") or class_names  # a study's rows span datasets: each row its own classes
        if pred is None or not names or np.ndim(pred["y_true"]) != 1:  # multi-label: no one confusion matrix
            continue
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in r["model"])
        op = r.get("operating_point") or {}
        positive = r["positive_label"] if r.get("positive_label") is not None else positive_default
        png = diagnostics_plot(r["model"], np.asarray(pred["y_true"]), np.asarray(pred["probs"]), names,
                               out / f"diagnostics_{safe}.png", positive=positive, ece=pred.get("ece", r.get("ece")),
                               threshold=op.get("threshold") if positive is not None else None)
        diagnostics.append((png, f"{r['model']}: confusion matrix, ROC curve and reliability diagram on the test set "
                                 f"({pred.get('scored', 'ONNX artifact')})"))
    if rows and len(diagnostics) < len(rows):
        notes.append("Confusion matrices, ROC curves and reliability diagrams need each model's test-set "
                      "probabilities of a single-label set; they are shown for the models that recorded them.")
    sal_figs: list[tuple[Path, str]] = []
    most_changed = {r["model"]: r.get("most_changed") or [] for r in rows}
    if results.get("saliency"):
        decisions = {r["model"]: {"positive_label": r.get("positive_label"), "operating_point": r.get("operating_point")}
                     for r in rows}  # each caption decides as its row's model does
        sal_figs = saliency_figures(results["saliency"], most_changed, out, decisions)
    else:
        grids = results.get("saliency_grids") or ([results["saliency_grid"]] if results.get("saliency_grid") else [])
        # a run's grids are one per dataset/model/seed folder: named by all three (seed0 alone reads alike across sets)
        sal_figs = [(Path(g), f"Saliency grid: {'/'.join(Path(g).parts[-4:-1]) if results.get('saliency_grids') else Path(g).parent.name}")
                    for g in grids]
    reference = (results.get("saliency") or {}).get("reference") or (rows[0]["model"] if rows else "")
    if any(m.endswith("/fp32") for m in most_changed):  # several (dataset, model) groups: each against its own FP32
        reference = "each group's FP32"
    changed_rows = [(m, c) for m, cs in most_changed.items()
                    if m != reference and m != "fp32" and not m.endswith("/fp32") for c in cs[:3]]
    indices = (results.get("saliency") or {}).get("indices")
    changed_table = "\n".join(["| model | test image | map ρ vs reference | top-10% IoU |", "|---|---|---|---|"] + [
        f"| {m} | #{indices[c['index']] if indices else c['index']} | {c['spearman']:.3f} | {c['topk_iou']:.3f} |"
        for m, c in changed_rows])
    env = results.get("environment") or {}

    title = f"qsal report: {results.get('dataset', '')}"
    md = [f"# {title}", "", *[f"- **{k}**: {v}" for k, v in header], "", "## Results", "", table, ""]
    md += ["## Trade-offs", ""] + [f"![{alt}]({p.name})" for p, alt in ([forest] if forest else []) + tradeoffs]
    if diagnostics:
        md += ["", "## Per-model diagnostics", ""] + [f"![{alt}]({p.name})" for p, alt in diagnostics]
    md += [f"> {n}" for n in notes]
    if sal_figs:
        # a figure of this report sits beside it; a run's per-cell grids where they are, relative to the final folder
        md += ["", "## Explanations", ""] + [f"![{alt}]({p.name if Path(p).parent == out else os.path.relpath(p, final)})"
                                             for p, alt in sal_figs]
    if changed_rows:
        md += ["", f"### Images whose explanation changed most vs {reference}", "", changed_table]
    if results.get("failed"):
        md += ["", "## Failed cells", ""] + [f"- `{f['id']}`: {f['type']}: {f['error']}" for f in results["failed"]]
    left_out = results.get("left_out") or []
    left_note = (f"{len(left_out)} finished cells in this folder are not in the study's config now (a dataset, model, "
                 "seed or method dropped since) and are left out of every table and figure: " + ", ".join(left_out)) \
        if left_out else ""
    if left_note:
        md += ["", "## Cells left out", "", left_note]
    stale = results.get("stale") or {}
    stale_note = (f"{len(stale)} finished cells are not what the study's config makes now and are left out of every "
                  f"table and figure until they are redone ({stale_advice(stale)}):") if stale else ""
    if stale:
        md += ["", "## Cells out of date", "", stale_note, ""] + [f"- `{c}`: {why}" for c, why in stale.items()]
    unfinished, holder = results.get("unfinished") or [], results.get("running")
    pending_note = ((f"{len(unfinished)} cells of the study's config have no result yet"
                     + (f"; a `qsal run` (pid {holder}) is working on this folder, so this report is a snapshot"
                        if holder else "; `qsal run` with its config runs them") + ":") if unfinished else "")
    if unfinished:
        md += ["", "## Not finished", "", pending_note, "", ", ".join(f"`{c}`" for c in unfinished)]
    machines = results.get("machines") or []
    if machines:
        md += ["", "## Where the cells ran", "", machines_table(machines)]
    md += ["", "## Glossary", "", glossary_markdown(rows), "", "## Environment (the machine that wrote this report)", "", environment_table(env)]
    md_path = write_text_atomic(out / "report.md", "\n".join(md) + "\n")

    body = [f"<h1>{html.escape(title)}</h1>", "<p class='meta'>" + " · ".join(
        f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in header) + "</p>",
            "<h2>Results</h2>", md_to_html_table(table)] + ([_img(*forest)] if forest else [])
    if tradeoffs:
        body += ["<h2>Trade-offs</h2><div class='grid'>"] + [_img(p, alt) for p, alt in tradeoffs] + ["</div>"]
    if diagnostics:
        body += ["<h2>Per-model diagnostics</h2>"] + [_img(p, alt, wide=True) for p, alt in diagnostics]
    body += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    if sal_figs:
        body += ["<h2>Explanations (same images, every model)</h2>"] + [_img(p, alt, wide=True) for p, alt in sal_figs]
    if changed_rows:
        body += [f"<h3>Images whose explanation changed most vs {html.escape(reference)}</h3>",
                 md_to_html_table(changed_table)]
    if results.get("failed"):
        body += ["<h2>Failed cells</h2><ul>"] + [f"<li><code>{html.escape(f['id'])}</code>: "
                                                 f"{html.escape(f['type'])}: {html.escape(f['error'])}</li>"
                                                 for f in results["failed"]] + ["</ul>"]
    if left_note:
        body += ["<h2>Cells left out</h2>", f"<p class='note'>{html.escape(left_note)}</p>"]
    if stale:
        body += ["<h2>Cells out of date</h2>", f"<p class='note'>{html.escape(stale_note)}</p><ul>"] + [
            f"<li><code>{html.escape(c)}</code>: {html.escape(why)}</li>" for c, why in stale.items()] + ["</ul>"]
    if unfinished:
        body += ["<h2>Not finished</h2>", f"<p class='note'>{html.escape(pending_note)} "
                 + ", ".join(f"<code>{html.escape(c)}</code>" for c in unfinished) + "</p>"]
    body += ["<h2>Glossary</h2><dl>"] + [f"<dt>{html.escape(t)}</dt><dd>{html.escape(d)}</dd>"
                                        for t, d in glossary_entries(rows)]
    body += ["</dl>"]
    if machines:
        body += ["<h2>Where the cells ran</h2>", md_to_html_table(machines_table(machines))]
    body += ["<h2>Environment (the machine that wrote this report)</h2>", md_to_html_table(environment_table(env))]
    # A self-check a browser test (or a curious user) can read: did every embedded image decode?
    check = ("<script>window.addEventListener('load',function(){var i=[].slice.call(document.images);"
             "document.body.dataset.imagesOk=String(i.length>0&&i.every(function(m){return m.complete&&m.naturalWidth>0"
             "&&m.alt.length>0}));document.body.dataset.imageCount=String(i.length);"
             "document.body.dataset.overflowX=String(document.documentElement.scrollWidth>window.innerWidth);});</script>")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width,initial-scale=1'><title>{html.escape(title)}</title><style>{_CSS}</style>"
            f"</head><body>{''.join(body)}{check}</body></html>")
    html_path = write_text_atomic(out / "report.html", page)
    return {"table": table, "text_table": results_text_table(rows), "markdown": str(md_path), "html": str(html_path),
            "rows": rows, "explanations": results.get("explanations")}
