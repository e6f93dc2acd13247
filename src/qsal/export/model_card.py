"""Model cards: what a deployed model is, how well it does, how fast, and what it must not be used for.

Written beside an exported model as ``<name>.card.md`` and ``<name>.card.json`` from the checkpoint's
own records (data, quantization, metrics) and a latency measurement of the artifact itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from qsal._atomic import write_json_atomic, write_text_atomic

__all__ = ["write_model_card"]

_LIMITS = ("Research prototype, not a medical device: not validated for clinical decisions. Trained on low-resolution "
           "(MedMNIST-style) public data from a few sources; performance on other scanners, populations or "
           "resolutions is unknown. Confidence intervals come from bootstrapping one test split. Saliency maps "
           "show what the model is sensitive to, not a causal or clinical explanation.")


def write_model_card(onnx_path: str | Path, meta: dict, metrics: dict | None, bench: dict | None,
                     explanations: dict | None = None) -> dict:
    """Write the card files beside ``onnx_path``; returns the card dict.

    Args:
        meta: the checkpoint's JSON (``dataset``, ``arch``, ``quant``, ``train``, ``seed``).
        metrics: ``{"test": Metrics dict}``: the ONNX artifact's test metrics (``artifact: True``), with
            ``positive_class``, ``operating_point``, ``*_at_op``, ``ece`` and ``temperature``.
        bench: ``bench_onnx`` output for the artifact (size, latency).
        explanations: saliency metrics (faithfulness, agreement), if measured.
    """
    onnx_path = Path(onnx_path)
    data = meta.get("dataset") or {}
    quant = meta.get("quant") or {"method": "fp32"}
    test = (metrics or {}).get("test")
    decision = meta.get("decision") or {}
    op = decision.get("operating_point")
    if op:
        op_text = (f"{decision.get('positive_class')} if p({decision.get('positive_class')}) >= {op['threshold']:.4f} "
                   f"(rule {op['rule']}, chosen on the {op['chosen_on']} split)")
    elif data.get("task") == "binary-class":
        op_text = f"{(data.get('labels') or ['', 'label 1'])[1]} if its probability > 0.5"
    else:
        op_text = "argmax of the class probabilities"
    if decision.get("temperature_scaling"):
        op_text += f"; logits divided by temperature {decision.get('temperature'):.3f} (fitted on validation)"
    card = {
        "model": onnx_path.name, "architecture": meta.get("arch"),
        "data": {"dataset": data.get("name"), "task": data.get("task"), "classes": data.get("labels"),
                 "splits": "official train/val/test; model selected on validation AUC", "license": data.get("license")},
        "preprocessing": {"input": f"uint8 images {data.get('image_size')}x{data.get('image_size')}, "
                                   f"{data.get('n_channels')} channel(s); other sizes: PIL bilinear resize",
                          "normalisation": f"x/255, then (x - {data.get('mean')}) / {data.get('std')}"},
        "quantization": quant,
        "metrics": test, "operating_point": op_text, "decision": decision or None,
        "size_bytes": onnx_path.stat().st_size,
        "latency": bench, "explanations": explanations,
        "training": {"config": meta.get("train"), "seed": meta.get("seed"), "parent": meta.get("parent_checkpoint")},
        "intended_use": "Decision support research and edge-deployment studies on images like the training data.",
        "limitations": _LIMITS,
    }
    write_json_atomic(onnx_path.with_suffix(".card.json"), card)
    lines = [f"# Model card: {onnx_path.name}", "",
             f"- **Architecture**: {(meta.get('arch') or {}).get('name')}; **quantization**: {quant.get('method')}"
             + (f", {quant.get('bits') or quant.get('weight_bits')} bit" if quant.get("method") != "fp32" else ""),
             f"- **Data**: {data.get('name')} ({data.get('task')}), classes {data.get('labels')}; {card['data']['splits']}",
             f"- **Preprocessing**: {card['preprocessing']['input']}; {card['preprocessing']['normalisation']}",
             f"- **Operating point**: {card['operating_point']}",
             f"- **Size on disk**: {card['size_bytes']:,} bytes"]
    if test and "n" in test:
        ci = test.get("ci") or {}

        def fmt(k):
            if test.get(k) is None:
                return "undefined"
            return f"{test[k]:.3f}" + (f" (95% CI {ci[k][0]:.3f}–{ci[k][1]:.3f})" if ci.get(k) else "")

        what = "the ONNX artifact" if test.get("artifact") else "the PyTorch model"
        pos = test.get("positive_class")
        line = f"- **Test metrics** of {what} (n={test['n']}): AUC {fmt('auc')}, ACC at 0.5 {fmt('acc')}"
        if pos is not None:
            line += f", sensitivity ({pos}) {fmt('sensitivity')}, specificity ({pos}) {fmt('specificity')} at 0.5"
            if test.get("operating_point"):
                line += (f"; at the operating point: sensitivity ({pos}) {fmt('sensitivity_at_op')}, "
                         f"specificity ({pos}) {fmt('specificity_at_op')}")
        if test.get("per_class_recall") and pos is None:
            line += "; recall " + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} —"
                                            for k, v in test["per_class_recall"].items())
        lines.append(line)
        if test.get("ece") is not None:
            lines.append(f"- **Calibration**: ECE {test['ece']:.3f} (15 bins, temperature {test.get('temperature', 1.0):.3f})")
    else:
        lines.append(f"- **Test metrics**: not measured ({(test or {}).get('not_measured', 'run `qsal evaluate`')})")
    if bench:
        for r in bench.get("runs", []):
            lines.append(f"- **Latency** ({bench.get('cpu', 'this CPU')}, {r['threads']} thread(s), batch {r['batch']}): "
                         f"p50 {r['latency_ms_p50']:.3f} ms, p95 {r['latency_ms_p95']:.3f} ms")
    lines.append(f"- **Explanation metrics**: {json.dumps(explanations) if explanations else 'not measured'}")
    lines += ["", "## Intended use", "", card["intended_use"], "", "## Limitations", "", _LIMITS, ""]
    write_text_atomic(onnx_path.with_suffix(".card.md"), "\n".join(lines))
    return card
