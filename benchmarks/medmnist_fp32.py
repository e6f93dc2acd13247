"""FP32 baselines on PneumoniaMNIST, BreastMNIST and RetinaMNIST (28 px) beside the MedMNIST v2 figures.

Writes ``benchmarks/results/medmnist_fp32.json`` and ``.md``. Schedules are shortened from the paper's
100 epochs to fit a 2-core CPU; the epochs used are in every row.

    python benchmarks/medmnist_fp32.py [--data-dir ../shared/data] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, data_dir, markdown_table, written_by  # noqa: E402

from qsal._atomic import write_json_atomic, write_text_atomic  # noqa: E402
from qsal.data import load_split  # noqa: E402
from qsal.metrics import evaluate  # noqa: E402
from qsal.models import count_macs, count_parameters, create_model  # noqa: E402
from qsal.provenance import environment  # noqa: E402
from qsal.train import TrainConfig, fit  # noqa: E402

# MedMNIST v2 (Yang et al. 2023), Table 3, ResNet-18 (28): test AUC / ACC.
PAPER = {"pneumoniamnist": (0.944, 0.854), "breastmnist": (0.901, 0.863), "retinamnist": (0.717, 0.524)}
# epochs per (dataset, model): shortened from 100 so the whole benchmark fits ~30 min on 1 thread.
EPOCHS = {
    "pneumoniamnist": {"resnet18": 4, "small_cnn": 20, "edge_mbv2": 15},
    "breastmnist": {"resnet18": 25, "small_cnn": 60, "edge_mbv2": 60},
    "retinamnist": {"resnet18": 15, "small_cnn": 50, "edge_mbv2": 40},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 epochs each: a smoke test, not the benchmark")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = data_dir(args.data_dir)
    rows = []
    for ds, per_model in EPOCHS.items():
        train, val, test = (load_split(ds, s, root) for s in ("train", "val", "test"))
        info = train.info
        for name, epochs in per_model.items():
            epochs = 2 if args.quick else epochs
            model = create_model(name, info.num_classes, info.n_channels, 28)
            cfg = TrainConfig(epochs=epochs, seed=args.seed, progress=False)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                result = fit(model, train, val, cfg, tmp)
                wall = time.perf_counter() - t0
                size = Path(result.best_path).stat().st_size
            m = evaluate(model, test, seed=args.seed)
            paper_auc, paper_acc = PAPER[ds]
            row = {"dataset": ds, "model": name, "epochs": epochs, "best_epoch": result.best_epoch,
                   "test_auc": m.auc, "auc_ci": m.ci["auc"], "test_acc": m.acc, "acc_ci": m.ci["acc"],
                   "paper_resnet18_auc": paper_auc, "paper_resnet18_acc": paper_acc,
                   "delta_auc_vs_paper": m.auc - paper_auc, "delta_acc_vs_paper": m.acc - paper_acc,
                   "params": count_parameters(model), "macs": count_macs(model, info.n_channels, 28),
                   "size_bytes": size, "wall_s": wall, "metrics": m.to_dict()}
            rows.append(row)
            print(f"{ds:15s} {name:10s} ep={epochs:3d} AUC={m.auc:.3f} ACC={m.acc:.3f} "
                  f"(paper {paper_auc:.3f}/{paper_acc:.3f}) params={row['params']:,} {wall:.0f}s", flush=True)
    out = {"benchmark": "medmnist_fp32", "seed": args.seed, "threads": args.threads, "quick": args.quick,
           "data_dir": root, "schedule": "MedMNIST recipe (Adam 1e-3, x0.1 at 50%/75%, batch 128, best val AUC), "
           "epochs shortened from 100 as listed", "environment": environment(), "rows": rows}
    suffix = "_quick" if args.quick else ""
    write_json_atomic(RESULTS / f"medmnist_fp32{suffix}.json", out)
    for r in rows:
        r["params_k"] = f"{r['params'] / 1e3:,.0f}k"
        r["size_kb"] = f"{r['size_bytes'] / 1024:,.0f}"
        r["paper"] = f"{r['paper_resnet18_auc']:.3f} / {r['paper_resnet18_acc']:.3f}"
        r["auc_95ci"] = f"{r['auc_ci'][0]:.3f}–{r['auc_ci'][1]:.3f}"
        r["wall"] = f"{r['wall_s']:.0f} s"
    table = markdown_table(rows, [("dataset", "dataset"), ("model", "model"), ("epochs", "epochs (of 100)"),
                                  ("test_auc", "test AUC"), ("auc_95ci", "AUC 95% CI"), ("test_acc", "test ACC"),
                                  ("paper", "MedMNIST v2 ResNet-18 AUC / ACC"), ("params_k", "params"),
                                  ("size_kb", "checkpoint KiB"), ("wall", f"train wall ({args.threads} thread)")])
    env = out["environment"]
    text = (f"# FP32 baselines on MedMNIST (28 px)\n\n{written_by(__file__)}\n\nCPU: {env['cpu']}, {args.threads} torch thread(s); "
            f"seed {args.seed}; torch {env['versions']['torch']}.\n"
            f"Schedule: {out['schedule']}. **Shortened schedules**: the paper trains 100 epochs.\n\n{table}\n")
    write_text_atomic(RESULTS / f"medmnist_fp32{suffix}.md", text)
    print(text)


if __name__ == "__main__":
    main()
