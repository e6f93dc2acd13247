"""Before/after the issue-9 quantization fixes, same schedule, so the change is the method alone.

For ResNet-20 and ``edge_mbv2`` on BreastMNIST (seed 0): one FP32 model per architecture, then the
same fake-quant fine-tune with the *old* behaviour and with the *new* defaults:

- PACT-4 / PACT-2, before: ``PACTConfig(weight_scheme="tanh_symmetric", weight_per_channel="none",
  quantize_add_inputs=True, alpha_lr=None, fold_bn=False)`` (qsal < 0.2's "dorefa" grid, per-tensor depthwise scales,
  signed quantizers on residual-add inputs, alpha sharing the weights' Adam lr);
  after: ``PACTConfig(bits)`` (symmetric grid, per-channel depthwise, k-bit quantizers on ReLU outputs
  and 8-bit ones on residual-add inputs, alpha in its own group, BatchNorm folded before the fine-tune). With ``--dorefa`` also the paper's DoReFa grid.
- QAT-8, before: ``QATConfig(freeze_bn_at=1.0, fold_bn=False)`` (BatchNorm never frozen, which is what the
  old callback order did); "after, BN kept": ``QATConfig(fold_bn=False)`` (frozen at 75 % of the epochs, and
  now it stays frozen); after: ``QATConfig()`` (BatchNorm folded before the fine-tune, the default).

Numbers are the PyTorch fake-quant model's on the BreastMNIST test split (positive class 1, benign/
normal; AUC threshold-free, ACC at argmax), the checkpoint chosen by validation AUC. Writes
``benchmarks/results/method_fixes.{json,md}``. About 10 min on 1 thread with the defaults.

    python benchmarks/method_fixes.py [--data-dir ../shared/data] [--models resnet20 edge_mbv2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, data_dir, median_alpha_change, write_results, written_by  # noqa: E402

from qsal.pipeline import quantize_checkpoint, train_model  # noqa: E402
from qsal.quant import PACTConfig, QATConfig  # noqa: E402
from qsal.train import TrainConfig  # noqa: E402

DATASET = "breastmnist"
OLD_PACT = {"weight_scheme": "tanh_symmetric", "weight_per_channel": "none", "quantize_add_inputs": True,
            "alpha_lr": None, "fold_bn": False}


def variants(bits: list[int], dorefa: bool, qat: bool) -> list[tuple[str, str, object, float]]:
    """``(method, variant, config, fine-tune lr)``; PACT at quantization.py's lr, QAT at its own."""
    out = []
    for b in bits:
        out += [(f"pact-{b}", "before", PACTConfig(bits=b, **OLD_PACT), 5e-4),
                (f"pact-{b}", "after", PACTConfig(bits=b), 5e-4)]
        if dorefa:
            out.append((f"pact-{b}", "after, dorefa weights", PACTConfig(bits=b, weight_scheme="dorefa"), 5e-4))
    if qat:
        out += [("qat-8", "before", QATConfig(freeze_bn_at=1.0, fold_bn=False), 1e-4),
                ("qat-8", "after, BN kept and frozen at 75 %", QATConfig(fold_bn=False), 1e-4),
                ("qat-8", "after", QATConfig(), 1e-4)]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir")
    p.add_argument("--models", nargs="+", default=["resnet20", "edge_mbv2"])
    p.add_argument("--bits", nargs="+", type=int, default=[4, 2])
    p.add_argument("--fp32-epochs", type=int, default=10)
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--dorefa", action="store_true", help="also fine-tune with the paper's DoReFa weight grid")
    p.add_argument("--no-qat", action="store_true", help="skip the QAT-8 BatchNorm-freeze rows")
    p.add_argument("--work", default=str(Path(__file__).resolve().parents[1] / "runs" / "method_fixes"))
    p.add_argument("--out", default=str(RESULTS / "method_fixes"), help="results stem (.json and .md are written)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root, work, seed = data_dir(args.data_dir), Path(args.work), 0
    rows, t_all = [], time.perf_counter()
    for model in args.models:
        t0 = time.perf_counter()
        fp32_dir = work / model / "fp32"
        fp32 = train_model(DATASET, model, TrainConfig(epochs=args.fp32_epochs, seed=seed, progress=False), fp32_dir,
                           data_dir=root)
        rows.append({"model": model, "method": "fp32", "variant": "—", "test_auc": fp32["test_auc"],
                     "test_acc": fp32["test_acc"], "epochs": args.fp32_epochs, "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
        for method, variant, cfg, lr in variants(args.bits, args.dorefa, not args.no_qat):
            t0 = time.perf_counter()
            tag = variant.split(",")[0] + ("_dorefa" if "dorefa" in variant else "") + ("_bn_kept" if "BN kept" in variant else "")
            r = quantize_checkpoint(fp32["checkpoint"], cfg, work / model / f"{method}_{tag}",
                                    epochs=args.finetune_epochs, lr=lr, data_dir=root, seed=seed, progress=False)
            rows.append({"model": model, "method": method, "variant": variant, "test_auc": r["test_auc"],
                         "test_acc": r["test_acc"], "auc_95ci": r["auc_95ci"], "epochs": args.finetune_epochs,
                         "fine_tune_lr": lr, "median_alpha_change": median_alpha_change(r["checkpoint"]),
                         "config": cfg.to_dict(), "seconds": time.perf_counter() - t0})
            print({k: v for k, v in rows[-1].items() if k != "config"}, flush=True)
    total = time.perf_counter() - t_all
    write_results(Path(args.out), {
        "dataset": DATASET, "seed": seed, "split": "test", "positive_class": "1 (normal/benign)",
        "measured_on": "PyTorch fake-quant model (not the exported file)", "selection": "best validation AUC epoch",
        "rows": rows, "total_seconds": total}, f"""# Issue 9 quantization fixes: before and after

{written_by(__file__)}

BreastMNIST, seed 0, one FP32 model per architecture ({args.fp32_epochs} epochs), then the same fine-tune
({args.finetune_epochs} epochs, Adam, PACT lr 5e-4, QAT lr 1e-4, best validation AUC kept) with the old behaviour
("before") and the new defaults ("after"). AUC/ACC: the PyTorch fake-quant model on the test split (positive
class 1 = normal/benign). "before" PACT = `{OLD_PACT}`; "before" QAT = BatchNorm never frozen.
median relative alpha change: median over PACT clips of |alpha_end - alpha_start| / alpha_start.
Total {total:.0f} s.""", [("model", "model"), ("method", "method"), ("variant", "variant"), ("epochs", "epochs"),
                          ("test_auc", "test AUC"), ("test_acc", "test ACC"),
                          ("median_alpha_change", "median relative alpha change"), ("seconds", "s")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
