"""Reports: results rows -> a markdown table, plots, and one self-contained HTML file.

Computes nothing about models: it formats what the runs measured. Plots are matplotlib PNGs; the
HTML embeds them as base64 so it opens from disk with no network.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qsal._atomic import save_figure_atomic, write_text_atomic  # noqa: E402

__all__ = ["write_report", "results_table", "pareto_front", "tradeoff_plot"]

COLUMNS = [("model", "model"), ("seeds", "seeds"), ("test_auc", "AUC"), ("test_auc_std", "AUC std"),
           ("auc_ci", "AUC 95% CI"), ("test_acc", "ACC"), ("test_acc_std", "ACC std"),
           ("sensitivity", "sens."), ("specificity", "spec."), ("sensitivity_at_op", "sens. @op"),
           ("specificity_at_op", "spec. @op"), ("ece", "ECE"), ("pytorch_acc", "PyTorch ACC"), ("size_bytes", "ONNX size"),
           ("size_ratio", "size vs FP32"), ("latency_b1_ms", "b1 p50 ms"), ("throughput_b64", "b64 img/s"),
           ("faithfulness_gap", "faithfulness gap"), ("agreement_spearman", "map ρ vs FP32"), ("gini", "Gini")]


def _fmt(key: str, v) -> str:
    if v is None:
        return "—"
    if key == "size_bytes":
        return f"{v / 1024:,.0f} KiB"
    if key == "auc_ci":
        return f"{v[0]:.3f}–{v[1]:.3f}"
    if key == "throughput_b64":
        return f"{v:,.0f}"
    if key == "size_ratio":
        return f"{v:.3f}x"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def results_table(rows: list[dict], columns=COLUMNS) -> str:
    """Markdown table of the rows, only the columns that some row has. Sensitivity/specificity headers name
    the positive class they are about (``positive_class`` of the rows)."""
    positive = sorted({str(r["positive_class"]) for r in rows if r.get("positive_class")})
    about = f" ({'/'.join(positive)})" if positive else ""
    cols = [(k, h + about if k.startswith(("sensitivity", "specificity")) else h) for k, h in columns
            if any(k in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(k, r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (smaller x is better, larger y is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return front


def tradeoff_plot(rows: list[dict], x_key: str, x_label: str, path: Path, y_key: str = "test_acc") -> Path:
    """Scatter of ``y_key`` against ``x_key`` with the Pareto front drawn."""
    pts = [(r[x_key], r[y_key]) for r in rows]
    front = sorted(pareto_front(pts), key=lambda i: pts[i][0])
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], c="tab:blue")
    for r, (x, y) in zip(rows, pts):
        ax.annotate(r["model"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", c="tab:red", label="Pareto front")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_key.replace("test_", "test ").upper())
    if x_key == "size_bytes":
        ax.set_xscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def _auc_ci_plot(rows: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    for i, r in enumerate(rows):
        lo, hi = r.get("auc_ci") or (r["test_auc"], r["test_auc"])
        ax.errorbar(i, r["test_auc"], yerr=[[r["test_auc"] - lo], [hi - r["test_auc"]]], fmt="o", capsize=4)
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=30, fontsize=7)
    ax.set_ylabel("test AUC (95% CI)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _md_to_html_table(md: str) -> str:
    lines = [l for l in md.splitlines() if l.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}"
        "figure{display:inline-block;margin:0 1em 1em 0}img{max-width:100%}code{background:#f5f5f5}")


def _about(rows: list[dict]) -> str:
    """One sentence saying what the numbers are about: which model file, which positive class, which threshold."""
    what = ("the exported ONNX artifacts" if all(r.get("artifact") for r in rows)
            else "the PyTorch models" if not any(r.get("artifact") for r in rows) else "ONNX artifacts and PyTorch models")
    text = f"Test metrics of {what}; ACC at probability 0.5 (the MedMNIST standard)."
    positive = sorted({str(r["positive_class"]) for r in rows if r.get("positive_class")})
    if positive:
        text += (f" Sensitivity and specificity are about the positive class {'/'.join(positive)}, at 0.5 and at each "
                 "model's operating point (@op) chosen on the validation split.")
    return text


def write_report(out_dir: str | os.PathLike, results: dict) -> dict:
    """Write ``report.md``, ``report.html`` (self-contained) and the plots into ``out_dir``.

    ``results``: ``rows`` (one dict per model, see ``COLUMNS``), ``dataset``, optional
    ``saliency_grid`` (PNG path) and ``environment``.
    """
    out = Path(out_dir)
    rows = results["rows"]
    table = results_table(rows)
    plots = []
    if all("size_bytes" in r and "test_acc" in r for r in rows):
        plots.append((tradeoff_plot(rows, "size_bytes", "ONNX file size (bytes)", out / "acc_vs_size.png"), "accuracy vs size"))
    if all("latency_b1_ms" in r for r in rows):
        plots.append((tradeoff_plot(rows, "latency_b1_ms", "latency, batch 1, 1 thread (ms)", out / "acc_vs_latency.png"),
                      "accuracy vs latency"))
    if all("auc_ci" in r for r in rows):
        plots.append((_auc_ci_plot(rows, out / "auc_ci.png"), "AUC with 95% bootstrap CI"))
    if results.get("reliability_png"):
        plots.append((Path(results["reliability_png"]), "reliability diagram (calibration) of the ONNX artifacts"))
    grids = results.get("saliency_grids") or ([results["saliency_grid"]] if results.get("saliency_grid") else [])
    changed = [(r["model"], c) for r in rows if r["model"] != rows[0]["model"] for c in r.get("most_changed", [])[:3]]
    env = results.get("environment", {})
    about = _about(rows)
    md = [f"# qsal report: {results.get('dataset', '')}", "", about, "", table, ""]
    md += [f"![{alt}]({Path(p).name})" for p, alt in plots]
    md += ["", *[f"![saliency grid]({os.path.relpath(g, out)})" for g in grids]]
    if results.get("failed"):
        md += ["", "## Failed cells", ""] + [f"- `{f['id']}`: {f['type']}: {f['error']}" for f in results["failed"]]
    changed_table = "\n".join(["| model | test image | Spearman ρ | top-10% IoU |", "|---|---|---|---|"] +
                              [f"| {m} | #{c['index']} | {c['spearman']:.3f} | {c['topk_iou']:.3f} |" for m, c in changed])
    if changed:
        md += ["", "## Images whose explanation changed most vs FP32", "", changed_table]
    md += ["", "## Environment", "", f"CPU {env.get('cpu')}, {env.get('cpu_count')} cores, torch threads "
           f"{env.get('torch_threads')}; versions {env.get('versions')}"]
    md_path = write_text_atomic(out / "report.md", "\n".join(md) + "\n")
    body = [f"<h1>qsal report: {html.escape(str(results.get('dataset', '')))}</h1>", f"<p>{html.escape(about)}</p>",
            _md_to_html_table(table), "<h2>Trade-offs</h2>"] + [_img_tag(p, alt) for p, alt in plots]
    if grids:
        body += ["<h2>Explanations (same images, every model)</h2>"] + [_img_tag(Path(g), "saliency grid") for g in grids]
    if results.get("failed"):
        body += ["<h2>Failed cells</h2><ul>"] + [f"<li><code>{html.escape(f['id'])}</code>: "
                                                 f"{html.escape(f['type'])}: {html.escape(f['error'])}</li>"
                                                 for f in results["failed"]] + ["</ul>"]
    if changed:
        body += ["<h2>Images whose explanation changed most vs FP32</h2>", _md_to_html_table(changed_table)]
    body += ["<h2>Environment</h2>", f"<pre>{html.escape(str(env))}</pre>"]
    # A self-check a browser test (or a curious user) can read: did every embedded image decode?
    check = ("<script>window.addEventListener('load',function(){var i=[].slice.call(document.images);"
             "document.body.dataset.imagesOk=String(i.length>0&&i.every(function(m){return m.complete&&m.naturalWidth>0}));"
             "document.body.dataset.imageCount=String(i.length);});</script>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>qsal report</title><style>{_CSS}</style>"
            f"</head><body>{''.join(body)}{check}</body></html>")
    html_path = write_text_atomic(out / "report.html", page)
    return {"table": table, "markdown": str(md_path), "html": str(html_path)}
