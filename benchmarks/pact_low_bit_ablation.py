"""Why PACT-2 lost accuracy after the issue-9 fixes: one change at a time, on the saliency benchmark's parents.

The regenerated ``saliency.md`` shows small_cnn PACT-2 falling on PneumoniaMNIST (AUC .919 -> .766) and
RetinaMNIST (.715 -> .632) while PACT-8/4 held. Starting from the same FP32 parent and schedule as that table
(``runs/bench_saliency/<dataset>/fp32``, trained by ``benchmarks/saliency.py``; PneumoniaMNIST 3 fine-tune epochs,
RetinaMNIST 6), each row changes one thing of the new default ``PACTConfig(bits=2)`` at lr 1e-4 back to what the
pre-fix run did, and the last row restores all of them (the old behaviour at the old lr 5e-4).

Numbers: the PyTorch fake-quant model on the test split (AUC one-vs-rest for RetinaMNIST; PneumoniaMNIST positive
class pneumonia), checkpoint chosen by validation AUC, seed 0. Writes
``benchmarks/results/pact_low_bit_ablation.{json,md}``. About 8 min on 1 thread.

    python benchmarks/pact_low_bit_ablation.py [--data-dir ../shared/data] [--datasets pneumoniamnist retinamnist]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, data_dir, median_alpha_change, write_results, written_by  # noqa: E402
from method_fixes import OLD_PACT  # noqa: E402
from saliency import CACHE, PLAN  # noqa: E402

from qsal.errors import QsalError  # noqa: E402
from qsal.pipeline import quantize_checkpoint  # noqa: E402
from qsal.quant import PACTConfig  # noqa: E402

BITS = 2
VARIANTS = [  # (variant, PACTConfig overrides, fine-tune lr)
    ("new default (lr 1e-4)", {}, 1e-4),
    ("lr 5e-4", {}, 5e-4),
    ("BatchNorm kept (fold_bn=False)", {"fold_bn": False}, 1e-4),
    ("BatchNorm kept, lr 5e-4", {"fold_bn": False}, 5e-4),
    ("old tanh_symmetric weight grid", {"weight_scheme": "tanh_symmetric"}, 1e-4),
    ("alpha shares the weights' lr (alpha_lr=None)", {"alpha_lr": None}, 1e-4),
    ("paper's DoReFa weight grid", {"weight_scheme": "dorefa"}, 1e-4),
    ("all old behaviour, lr 5e-4 (pre-fix run)", OLD_PACT, 5e-4),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir")
    p.add_argument("--datasets", nargs="+", default=["pneumoniamnist", "retinamnist"])
    p.add_argument("--out", default=str(RESULTS / "pact_low_bit_ablation"), help="results stem (.json and .md)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root, seed, rows, t_all = data_dir(args.data_dir), 0, [], time.perf_counter()
    for ds in args.datasets:
        parent = CACHE / ds / "fp32" / "best.safetensors"
        if not parent.is_file():
            raise QsalError(f"{parent} is missing: run `python benchmarks/saliency.py --datasets {ds}` first")
        epochs, subset = PLAN[ds][3], PLAN[ds][5] or PLAN[ds][1]
        for variant, overrides, lr in VARIANTS:
            t0 = time.perf_counter()
            cfg = PACTConfig(bits=BITS, **overrides)
            r = quantize_checkpoint(str(parent), cfg, CACHE / ds / "ablation" / f"pact{BITS}_{len(rows)}", epochs=epochs,
                                    lr=lr, data_dir=root, seed=seed, progress=False, train_subset=subset, force=True)
            rows.append({"dataset": ds, "variant": variant, "fine_tune_lr": lr, "epochs": epochs,
                         "test_auc": r["test_auc"], "test_acc": r["test_acc"],
                         "median_alpha_change": median_alpha_change(r["checkpoint"]), "config": cfg.to_dict(),
                         "seconds": time.perf_counter() - t0})
            print({k: v for k, v in rows[-1].items() if k != "config"}, flush=True)
    total = time.perf_counter() - t_all
    write_results(Path(args.out), {
        "bits": BITS, "seed": seed, "split": "test", "measured_on": "PyTorch fake-quant model (not the exported file)",
        "selection": "best validation AUC epoch", "parents": "runs/bench_saliency/<dataset>/fp32 (benchmarks/saliency.py)",
        "rows": rows, "total_seconds": total}, f"""# PACT-2 after the issue-9 fixes: one change at a time

{written_by(__file__)}

small_cnn, seed 0, the FP32 parents and fine-tune epochs of [saliency.md](saliency.md); each row changes one thing
of the new default `PACTConfig(bits=2)` (lr 1e-4). "all old behaviour" = `{OLD_PACT}` at lr 5e-4, i.e. the
pre-fix run's PACT-2. AUC/ACC: the PyTorch fake-quant model on the test split, epoch chosen by validation AUC.
Total {total:.0f} s.""", [("dataset", "dataset"), ("variant", "variant"), ("epochs", "epochs"),
                          ("test_auc", "test AUC"), ("test_acc", "test ACC"),
                          ("median_alpha_change", "median relative alpha change"), ("seconds", "s")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
