"""``qsal demo``: the whole story on one dataset in a few minutes.

FP32 -> PTQ-INT8 -> QAT-INT8 -> PACT-4, and SGT -> SGT+PACT-4 (PACT-4 fine-tuned with saliency guidance from the
SGT-trained parent, as the studies do); each model is evaluated, exported to ONNX,
re-evaluated *as the artifact* with onnxruntime, timed, and explained; the results land in
``out_dir/results.{json,md}``, ``out_dir/saliency_grid.png`` and the HTML report.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from qsal._atomic import write_json_atomic
from qsal.errors import QsalError
from qsal.provenance import environment

__all__ = ["run_demo", "DEMO_STAGES"]


DEMO_STAGES = ("fp32", "ptq-int8", "qat-int8", "pact-4", "sgt", "sgt+pact-4")


def run_demo(dataset: str = "breastmnist", out_dir: str = "runs/demo", data_dir=None, quick: bool = False,
             seed: int = 0, model: str = "small_cnn", progress: bool = True, verbose: bool = True,
             force: bool = False, download: bool = False) -> dict:
    """Run every stage and write the results; returns the results dict (rows per model, ``report`` paths).

    A stage whose folder already holds the same finished run is reused (``resume``); one whose settings changed
    since (an older qsal's demo, another ``--quick``) is refused unless ``force``, which trains every stage anew.

    ``progress``: training progress (bars on a terminal, one line per epoch otherwise); ``verbose``: a
    line per stage on stderr. Nothing is printed to stdout: the CLI prints the table.
    """
    import torch

    from qsal.checkpoint import load_checkpoint
    from qsal.models import count_parameters
    from qsal.export.bench import bench_onnx
    from qsal.metrics import predict_logits, save_reliability_diagram
    from qsal.pipeline import export_checkpoint, load_splits, quantize_checkpoint, train_model, write_card
    from qsal.scoring import artifact_row, score_onnx
    from qsal.quant import PACTConfig, PTQConfig, QATConfig
    from qsal.export.card_storage import kernels_label
    from qsal.runtime import read_metadata
    from qsal.study.report import write_report
    from qsal.study.results import kernels_here
    from qsal.saliency import SaliencyGuidedStep, explain
    from qsal.saliency.methods import black_baseline
    from qsal.saliency.metrics import agreement, faithfulness_curve, mean_gini
    from qsal.saliency.plot import to_display
    from qsal.train import TrainConfig

    def say(text: str) -> None:
        if verbose:
            print(text, file=sys.stderr, flush=True)

    out = Path(out_dir)
    for marker, what in (("run_config.json", "a `qsal run` study folder"), ("best.safetensors", "a model's run folder")):
        if (out / marker).is_file():  # its report.md / report.html / results.json would be replaced by the demo's
            raise QsalError(f"--out {out} is {what} ({marker}); the demo would overwrite its report and files: "
                            "choose a new or empty --out, or the folder of an earlier demo")
    t_start = time.perf_counter()
    epochs = {"fp32": 12 if quick else 40, "qat": 2 if quick else 5, "pact": 4 if quick else 15}
    train, val, test = load_splits(dataset, data_dir, seed=seed, download=download)
    task = train.info.task
    say(f"qsal demo: {train.info.name} ({len(train)}/{len(val)}/{len(test)} images, {task}); model {model}; "
        f"{'quick' if quick else 'full'} schedule")
    ckpts = {}
    fp32 = train_model(dataset, model, TrainConfig(epochs=epochs["fp32"], seed=seed, progress=progress), out / "fp32",
                       data_dir=data_dir, resume=True, force=force)
    ckpts["fp32"] = fp32["checkpoint"]
    guided = SaliencyGuidedStep(task, k=0.5, lam=1.0, seed=seed)
    # (name, parent, config, epochs, lr, step). SGT+PACT-4 starts from the SGT parent: guiding the fine-tune of
    # the FP32 parent instead drops to the majority class on BreastMNIST at lr 5e-4 (the README's Python test).
    stages = [("ptq-int8", "fp32", PTQConfig(), 0, 1e-4, None), ("qat-int8", "fp32", QATConfig(), epochs["qat"], 1e-4, None),
              ("pact-4", "fp32", PACTConfig(bits=4), epochs["pact"], 5e-4, None),
              ("sgt", None, None, epochs["fp32"], None, guided),
              ("sgt+pact-4", "sgt", PACTConfig(bits=4), epochs["pact"], 5e-4, guided)]
    for name, parent, cfg, ep, lr, step in stages:
        say(f"[{name}]")
        if parent is None:  # the SGT parent: trained like FP32, with saliency guidance
            ckpts[name] = train_model(dataset, model, TrainConfig(epochs=ep, seed=seed, progress=progress), out / name,
                                      data_dir=data_dir, saliency_guided=True, sgt_k=guided.k, sgt_lambda=guided.lam,
                                      resume=True, force=force)["checkpoint"]
            continue
        ckpts[name] = quantize_checkpoint(ckpts[parent], cfg, out / name, epochs=ep, lr=lr, data_dir=data_dir, seed=seed,
                                          progress=progress, step=step, resume=True, force=force)["checkpoint"]
    sal_split = test.subset(8, seed)
    x_sal, y_sal = sal_split.tensors()
    sal_index = test.subset_indices(8, seed)
    x_faith, y_faith = test.subset(64 if quick else 156, seed).tensors()
    rows, maps, predictions, sal_probs, reliability, artifact_metrics = [], {}, {}, {}, {}, {}
    say("[export, score the ONNX artifacts, time, explain]")
    for name, ckpt in ckpts.items():
        import json

        t_model = time.perf_counter()
        metrics = json.loads((Path(ckpt).parent / "metrics.json").read_text())["test"]
        onnx_path = out / name / "model.onnx"
        exp = export_checkpoint(ckpt, onnx_path, card=False, force=True)  # the demo folder owns its files
        art, probs = score_onnx(onnx_path, test, seed=seed)
        artifact_metrics[name], reliability[name] = art.to_dict(), art.reliability
        bench = bench_onnx(onnx_path, threads=(1,), batches=(1, 64), seconds=0.3 if quick else 1.0)
        b1, b64 = bench["runs"]
        # what the timings are of: the fast integer kernels, or (a CPU without VNNI) the exact ones
        kernels = kernels_here(bench, kernels_label(read_metadata(onnx_path)))
        model_obj, _ = load_checkpoint(ckpt)
        sal_probs[name] = probs[sal_index]
        # every model's map of the same class (each image's true one), so maps compare across models
        maps[name] = explain(model_obj, x_sal, "integrated_gradients", target=y_sal,
                             baseline=black_baseline(test.info.mean, test.info.std)).numpy()
        faith_maps = explain(model_obj, x_faith, "gradient_abs").numpy()

        faith = faithfulness_curve(lambda a, m=model_obj: predict_logits(m, torch.from_numpy(a)), x_faith.numpy(), y_faith.numpy(), faith_maps, fill="constant", seed=seed)
        predictions[name] = {"y_true": test.labels, "probs": probs, "scored": "ONNX artifact"}
        rows.append({"model": name, **artifact_row(art, metrics), "acc_ci": art.ci.get("acc"), "scored": "onnx",
                     "size_bytes": exp["size_bytes"], "kernels": kernels, "latency_b1_ms": b1["latency_ms_p50"],
                     "latency_b1_p95_ms": b1["latency_ms_p95"], "throughput_b64": b64["throughput_img_s"],
                     "faithfulness_gap": faith["gap"], "faithfulness_changed": faith["changed"],
                     "gini": mean_gini(maps[name]),
                     "onnx": str(onnx_path), "checkpoint": str(ckpt), "bench": bench})
        # a minute or more per model on 2 busy cores: a line each, or the stage looks stuck
        say(f"  {name}: exported ({exp['size_bytes'] / 1024:,.1f} KiB), scored, timed and explained in "
            f"{time.perf_counter() - t_model:.0f} s")
    for r in rows:
        agree = agreement(maps["fp32"], maps[r["model"]])
        r["agreement_spearman"], r["agreement_iou"], r["agreement_ssim"] = agree["spearman"], agree["topk_iou"], agree["ssim"]
        r["most_changed"] = agree["most_changed"]
        r["size_ratio"] = r["size_bytes"] / rows[0]["size_bytes"]
        r["card"] = write_card(r["checkpoint"], r["onnx"], r.pop("bench"), metrics=artifact_metrics[r["model"]], explanations={
            "faithfulness_gap": r["faithfulness_gap"], "gini": r["gini"], "map_spearman_vs_fp32": r["agreement_spearman"],
            "map_top10_iou_vs_fp32": r["agreement_iou"]}, data_dir=data_dir)
    info = test.info
    saliency = {"images": to_display(x_sal.numpy(), info.mean, info.std), "maps": maps, "y_true": y_sal.numpy(),
                "probs": sal_probs, "class_names": list(info.labels), "task": info.task,
                "method": "integrated gradients of the true class, black baseline",
                "indices": sal_index.tolist(), "reference": "fp32"}
    rel = save_reliability_diagram(reliability, out / "reliability.png",
                                   title=f"{info.name} test, ONNX artifacts: " + ", ".join(
                                       f"{r['model']} ECE {r['ece']:.3f}" for r in rows if r["model"] in ("fp32", "ptq-int8", "pact-4")))
    results = {"dataset": info.name, "model": model, "architecture": f"{model}, {count_parameters(load_checkpoint(ckpts['fp32'])[0]):,} parameters", "quick": quick,
               "seed": seed, "epochs": epochs, "n_test": len(test), "class_names": list(info.labels),
               "positive_class": rows[0].get("positive_class"), "reliability_png": str(rel),
               "source": f"qsal demo{' --quick' if quick else ''} --seed {seed}", "rows": rows,
               "seconds": time.perf_counter() - t_start, "environment": environment(),
               # the explanation columns, each of the PyTorch model the file came from (the header says it)
               "explanations": (f"faithfulness gap: {len(x_faith)} test images, |input gradient| maps; Gini and map "
                                f"ρ: integrated gradients from black on {len(x_sal)} test images; each model's "
                                "PyTorch model")}
    write_json_atomic(out / "results.json", results)
    report = write_report(out, {**results, "predictions": predictions, "saliency": saliency})
    say(f"demo finished in {results['seconds']:.0f} s")
    return {**results, "saliency_grid": str(out / "saliency_grid.png"), "report": report}
