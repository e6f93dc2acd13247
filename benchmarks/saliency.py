"""Saliency benchmark: FP32, SGT (saliency-guided training), PACT-8/4/2 and SGT+PACT-8/4/2 on MNIST,
CIFAR-10 (JPEG copy) and PneumoniaMNIST / BreastMNIST / RetinaMNIST.

Columns: test accuracy (AUC on the medical sets), faithfulness (accuracy when the top-t % most salient
pixels are removed vs t % random pixels, t = 0..90 %, constant fill; the gap of the two areas: larger =
maps point at what the model uses), agreement of each model's maps with the FP32 model's (Spearman,
top-10 % IoU, SSIM), sparseness (Gini), training time. Plus one PNG grid per dataset: the same test
images explained by every model. Maps: absolute input gradient (as in Ismail et al. 2021).

    python benchmarks/saliency.py [--data-dir ../shared/data] [--datasets mnist breastmnist ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, data_dir, what_changed, written_by  # noqa: E402

from qsal._atomic import write_json_atomic, write_text_atomic  # noqa: E402
from qsal.checkpoint import load_checkpoint  # noqa: E402
from qsal.metrics import compute_metrics, predict_logits  # noqa: E402
from qsal.pipeline import load_splits, quantize_checkpoint  # noqa: E402
from qsal.provenance import environment  # noqa: E402
from qsal.quant import PACTConfig  # noqa: E402
from qsal.study.report import results_table  # noqa: E402
from qsal.saliency import SaliencyGuidedStep, explain  # noqa: E402
from qsal.saliency.metrics import agreement, faithfulness_curve, mean_gini  # noqa: E402
from qsal.saliency.plot import save_saliency_grid, to_display  # noqa: E402
from qsal.train import TrainConfig, fit, seed_everything  # noqa: E402

CACHE = Path(__file__).resolve().parents[1] / "runs" / "bench_saliency"
# dataset: (model, training subset or None, FP32/SGT epochs, PACT fine-tune epochs, SGT k, fine-tune subset or None).
# Shortened for a 2-core CPU shared with the other benchmarks; the table says so.
PLAN = {
    "breastmnist": ("small_cnn", None, 40, 8, 0.5, None),
    "pneumoniamnist": ("small_cnn", None, 12, 3, 0.5, None),
    "retinamnist": ("small_cnn", None, 30, 6, 0.5, None),
    "mnist": ("small_cnn", 20000, 3, 1, 0.5, 10000),
    "cifar10": ("resnet20", 4000, 4, 1, 0.1, None),
}
BITS = (8, 4, 2)
# PACT fine-tune lr (Adam): 1e-4, `qsal quantize`'s default; 5e-4 before issue 9 (see quantization.py FINETUNE_LR).
PACT_LR = 1e-4
BEFORE = RESULTS / "pre_issue9" / "saliency.json"


def _cifar_root(root: str) -> str:
    """The JPEG copy ships a script that writes the official binary layout; run it once into the cache."""
    out = CACHE / "cifar10-bin"
    if not (out / "cifar-10-batches-bin" / "test_batch.bin").is_file():
        subprocess.run([sys.executable, str(Path(root) / "cifar10" / "cifar10_to_binary.py"), str(out)], check=True)
    return str(out)


def _train(ds, model_name, train, val, epochs, step, out, seed, threads) -> tuple[str, float]:
    from qsal.models import create_model
    from qsal.pipeline import data_meta

    if (out / "best.safetensors").is_file() and (out / "done").is_file():
        return str(out / "best.safetensors"), json.loads((out / "done").read_text())["seconds"]
    seed_everything(seed)
    info = train.info
    net = create_model(model_name, info.num_classes, info.n_channels, int(train.images.shape[1]))
    t0 = time.perf_counter()
    fit(net, train, val, TrainConfig(epochs=epochs, seed=seed, progress=False), out, step=step,
        meta={"dataset": data_meta(train), "quant": None})
    seconds = time.perf_counter() - t0
    (out / "done").write_text(json.dumps({"seconds": seconds}))
    return str(out / "best.safetensors"), seconds


def _model_fn(model):
    return lambda a: predict_logits(model, torch.from_numpy(a), batch_size=512)


def run_dataset(ds: str, root: str, seed: int, n_eval: int, threads: int, log) -> tuple[list[dict], str]:
    model_name, subset, epochs, ft_epochs, k, ft_subset = PLAN[ds]
    root_ds = _cifar_root(root) if ds == "cifar10" else root
    train, val, test = load_splits(ds, root_ds, seed=seed)
    if subset:
        train = train.subset(subset, seed)
    cell = CACHE / ds
    task = train.info.task
    sgt = SaliencyGuidedStep(task, k=k, lam=1.0, seed=seed)
    ckpts, seconds = {}, {}
    ckpts["fp32"], seconds["fp32"] = _train(ds, model_name, train, val, epochs, None, cell / "fp32", seed, threads)
    log(f"  {ds} fp32 trained ({seconds['fp32']:.0f} s)")
    ckpts["sgt"], seconds["sgt"] = _train(ds, model_name, train, val, epochs, sgt, cell / "sgt", seed, threads)
    log(f"  {ds} sgt trained ({seconds['sgt']:.0f} s)")
    for parent, prefix, step in (("fp32", "pact", None), ("sgt", "sgt+pact", sgt)):
        for b in BITS:
            name = f"{prefix}-{b}"
            t0 = time.perf_counter()
            ckpts[name] = quantize_checkpoint(ckpts[parent], PACTConfig(bits=b), cell / name, epochs=ft_epochs, lr=PACT_LR,
                                              data_dir=root_ds, seed=seed, progress=False, step=step,
                                              train_subset=ft_subset or subset, force=True)["checkpoint"]
            seconds[name] = seconds[parent] + time.perf_counter() - t0
            log(f"  {ds} {name} fine-tuned")
    x_eval, y_eval = test.subset(n_eval, seed).tensors()
    x_all, y_all = test.tensors()
    rows, maps = [], {}
    for name, ckpt in ckpts.items():
        model, _ = load_checkpoint(ckpt)
        model.eval()
        fn = _model_fn(model)
        logits = fn(x_all.numpy())
        m = compute_metrics(y_all.numpy(), logits, task, n_bootstrap=200)
        maps[name] = explain(model, x_eval, "gradient_abs", target=y_eval).numpy()
        faith = faithfulness_curve(fn, x_eval.numpy(), y_eval.numpy(), maps[name], fill="constant", seed=seed)
        rows.append({"dataset": ds, "model": name, "arch": model_name, "test_acc": m.acc, "test_auc": m.auc,
                     "auc_ci": m.ci["auc"], "faithfulness_area_top": faith["area_top"],
                     "faithfulness_area_random": faith["area_random"], "faithfulness_gap": faith["gap"],
                     "faithfulness_curve": faith, "gini": mean_gini(maps[name]), "train_s": seconds[name]})
        log(f"  {ds} {name}: acc {m.acc:.4f} auc {m.auc:.3f} faithfulness gap {faith['gap']:.3f}")
    for r in rows:
        a = agreement(maps["fp32"], maps[r["model"]])
        r.update(agreement_spearman=a["spearman"], agreement_iou=a["topk_iou"], agreement_ssim=a["ssim"],
                 most_changed=a["most_changed"])
        if r["model"].startswith("sgt+pact"):  # quantized vs its own float parent as well
            b = agreement(maps["sgt"], maps[r["model"]])
            r.update(agreement_parent_spearman=b["spearman"], agreement_parent_iou=b["topk_iou"])
        elif r["model"].startswith("pact"):
            r.update(agreement_parent_spearman=a["spearman"], agreement_parent_iou=a["topk_iou"])
    info = test.info
    grid = save_saliency_grid(to_display(x_eval[:6].numpy(), info.mean, info.std), {n: mp[:6] for n, mp in maps.items()},
                              RESULTS / f"saliency_grid_{ds}.png",
                              captions=[f"{info.labels[int(t)][:10]}" for t in y_eval[:6]],
                              title=f"{ds}: |input gradient|, same test images, every model")
    return rows, str(grid)


def _subset_note(n: int | None) -> str:
    return f" on a {n:,}-image training subset" if n else ""


COLUMNS = [("dataset", "dataset"), ("model", "model"), ("test_acc", "test ACC"), ("test_auc", "test AUC"),
           ("faithfulness_area_top", "acc. area, top removed"), ("faithfulness_area_random", "acc. area, random removed"),
           ("faithfulness_gap", "faithfulness gap ↑"), ("agreement_spearman", "ρ vs FP32 maps"),
           ("agreement_iou", "top-10% IoU vs FP32"), ("agreement_parent_spearman", "ρ vs float parent"),
           ("gini", "Gini"), ("train_s", "train s")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir")
    ap.add_argument("--datasets", nargs="+", default=list(PLAN))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-eval", type=int, default=300, help="test images for the explanation metrics")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = data_dir(args.data_dir)
    partial = RESULTS / "saliency.partial.json"
    state = json.loads(partial.read_text()) if partial.is_file() else {"rows": [], "grids": {}}
    t0 = time.perf_counter()
    for ds in args.datasets:
        if ds in state["grids"]:
            continue
        print(f"[{ds}]", flush=True)
        rows, grid = run_dataset(ds, root, args.seed, args.n_eval, args.threads, lambda s: print(s, flush=True))
        state["rows"] += rows
        state["grids"][ds] = grid
        write_json_atomic(partial, state)
        _write_results(state, args, time.perf_counter() - t0)  # a table after every dataset
    partial.unlink(missing_ok=True)


def _write_results(state: dict, args, seconds: float) -> None:
    rows = state["rows"]
    plan = {d: dict(zip(("model", "train_subset", "epochs", "pact_finetune_epochs", "sgt_k", "finetune_subset"), v))
            for d, v in PLAN.items()}
    result = {"benchmark": "saliency", "seed": args.seed, "threads": args.threads, "n_eval": args.n_eval, "plan": plan,
              "pact_lr": PACT_LR, "pact": {**PACTConfig(bits=4).to_dict(), "bits": list(BITS)},
              "sgt": {**SaliencyGuidedStep(task="per dataset").describe(), "k": "per dataset (plan)", "seed": args.seed},
              "faithfulness": {"fractions": "0..0.9", "fill": "constant (image minimum)", "maps": "|input gradient|"},
              "environment": environment(), "seconds": seconds, "grids": state["grids"], "rows": rows,
              "complete": sorted(state["grids"]) == sorted(PLAN)}
    write_json_atomic(RESULTS / "saliency.json", result)
    table = results_table([{k: v for k, v in r.items() if k != "faithfulness_curve"} for r in rows], COLUMNS)
    plan_lines = "\n".join(f"- {d}: {p['model']}, {p['epochs']} epochs FP32/SGT from scratch"
                           f"{_subset_note(p['train_subset'])}, "
                           f"PACT fine-tuned {p['pact_finetune_epochs']} epoch(s){_subset_note(p['finetune_subset'])} from its float parent, "
                           f"SGT k={p['sgt_k']}"
                           for d, p in plan.items() if d in state["grids"])
    grids = "\n".join(f"![{d}]({Path(g).name})" for d, g in state["grids"].items())
    text = (f"# Saliency benchmark\n\n{written_by(__file__)}\n\nCPU {result['environment']['cpu']}, {args.threads} thread(s), seed {args.seed}. "
            "**Shortened schedules** (CPU time): \n" + plan_lines + "\n\nCIFAR-10 is the lossy *JPEG copy* "
            "(quote as \"CIFAR-10 (JPEG copy)\"). Explanation metrics on "
            f"{args.n_eval} test images; SGT+PACT-k starts from the SGT model, PACT-k from the FP32 model.\n\n"
            f"{table}\n\n{grids}\n" + _changes(rows))
    write_text_atomic(RESULTS / "saliency.md", text)
    print(text, flush=True)


def _changes(rows: list[dict]) -> str:
    """Before/after against the pre-issue-9 run: same plan (models, epochs, subsets, k, seed)."""
    if not BEFORE.is_file():
        return ""
    before = json.loads(BEFORE.read_text())["rows"]
    table = what_changed(before, rows, ("dataset", "model"), [("test_auc", "AUC"), ("test_acc", "ACC"),
                                                                ("faithfulness_gap", "faithfulness gap")])
    return ("\n## What changed against the pre-fix run\n\n"
            "Rows of the run before the issue-9 fixes ([pre_issue9/saliency.json](pre_issue9/saliency.json)) against "
            "this one, same plan and seed. Besides the fixes (SGT masks by the log-softmax gradient, its masked pass "
            "leaves BatchNorm statistics alone, PACT's new grid and learned clip), training now uses bfloat16 "
            "autocast and PACT fine-tunes at lr 1e-4 instead of 5e-4 (BatchNorm is folded first). "
            "[sgt_fixes.md](sgt_fixes.md) isolates the SGT fixes on one configuration.\n\n"
            f"{table}\n")


if __name__ == "__main__":
    main()
