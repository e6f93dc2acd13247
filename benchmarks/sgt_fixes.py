"""Saliency-guided training before and after the issue-9 fixes: ResNet-20 on BreastMNIST, seed 0.

Rows (same data, schedule, seed and initial weights; only the step differs):

- ``fp32``: plain training (``ClassificationStep``), for reference.
- ``sgt before``: qsal's step before the fixes: pixels ranked by the raw logit's gradient, and the masked
  forward pass in train mode, so BatchNorm running statistics are updated by the half-noise inputs.
  (Also ``argsort`` instead of the authors' ``topk``, which only changes how ties are broken.)
- ``sgt before, BN recomputed``: the same weights with BN running statistics recomputed on clean
  training images (cumulative average, train-mode forward passes): how much of the loss is BN.
- ``sgt after``: ``SaliencyGuidedStep`` defaults: the authors' log-softmax target, masked pass with
  module state frozen.

Columns: test AUC / ACC (BreastMNIST, positive class = label 1, normal/benign; threshold 0.5 for ACC),
faithfulness gap on all test images (|input gradient| maps of the true label; accuracy area with the
top-t % most salient vs t % random pixels removed, t = 0..90 %, constant fill = image minimum).

    python benchmarks/sgt_fixes.py [--data-dir ../shared/data] [--epochs 25] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, data_dir, markdown_table, written_by  # noqa: E402

from qsal._atomic import write_json_atomic, write_text_atomic  # noqa: E402
from qsal.metrics import compute_metrics, predict_logits  # noqa: E402
from qsal.models import create_model  # noqa: E402
from qsal.pipeline import load_splits  # noqa: E402
from qsal.provenance import environment  # noqa: E402
from qsal.saliency import SaliencyGuidedStep, explain  # noqa: E402
from qsal.saliency.guided import _output_kl, input_saliency  # noqa: E402
from qsal.saliency.metrics import faithfulness_curve  # noqa: E402
from qsal.train import TrainConfig, fit, regularization, task_loss  # noqa: E402


class BeforeFixStep(SaliencyGuidedStep):
    """qsal's SGT step as it was before issue 9 (kept here only to measure the difference)."""

    def __call__(self, model, x, y):
        sal = input_saliency(model, x, y, self.task, self.absolute, target="logit")
        n, c, h, w = x.shape
        count = int(round(self.k * h * w))
        idx = sal.reshape(n, -1).argsort(dim=1)[:, :count]
        mask = torch.zeros(n, h * w, dtype=torch.bool).scatter_(1, idx, True).view(n, 1, h, w).expand_as(x)
        lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        x_masked = torch.where(mask, lo + (hi - lo) * torch.rand(x.shape, generator=self._gen), x).detach()
        logits = model(x)
        logits_masked = model(x_masked)  # train mode: updates BN running statistics
        kl = _output_kl(logits, logits_masked, self.task)
        return {"loss": task_loss(logits, y, self.task) + self.lam * kl + regularization(model), "logits": logits,
                "kl": kl.detach()}

    def describe(self) -> dict:
        return {**super().describe(), "target": "logit", "masked_pass": "train mode, updates BN running statistics"}


def recompute_bn(model, x: torch.Tensor, batch: int = 128):
    """A copy of ``model`` whose BN running statistics are the cumulative average over clean images ``x``."""
    model = copy.deepcopy(model)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir")
    ap.add_argument("--epochs", type=int, default=25)  # ~7 min CPU on 1 thread
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-subset", type=int, help="smoke test only: a training subset")
    ap.add_argument("--results-dir", default=str(RESULTS), help="where sgt_fixes.{json,md} go")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, val, test = load_splits("breastmnist", data_dir(args.data_dir), seed=args.seed)
    if args.train_subset:
        train = train.subset(args.train_subset, args.seed)
    task, info = train.info.task, train.info
    config = TrainConfig(epochs=args.epochs, seed=args.seed, progress=False)
    x_test, y_test = test.tensors()
    x_train = train.tensors()[0]
    steps = {"fp32": None, "sgt before": BeforeFixStep(task, k=0.5, lam=1.0, seed=args.seed),
             "sgt after": SaliencyGuidedStep(task, k=0.5, lam=1.0, seed=args.seed)}
    rows, t0 = [], time.perf_counter()
    for name, step in steps.items():
        model = create_model("resnet20", info.num_classes, info.n_channels, seed=args.seed)
        started = time.perf_counter()
        fit(model, train, val, config, step=step)
        seconds = time.perf_counter() - started
        variants = [(name, model)]
        if name == "sgt before":
            variants.append(("sgt before, BN recomputed", recompute_bn(model, x_train)))
        for label, m in variants:
            m.eval()
            fn = lambda a, m=m: predict_logits(m, torch.from_numpy(a), batch_size=512)  # noqa: E731
            metrics = compute_metrics(y_test.numpy(), fn(x_test.numpy()), task, n_bootstrap=200, seed=args.seed)
            maps = explain(m, x_test, "gradient_abs", target=y_test).numpy()
            faith = faithfulness_curve(fn, x_test.numpy(), y_test.numpy(), maps, fill="constant", seed=args.seed)
            rows.append({"model": label, "step": step.describe() if step else {"step": "classification"},
                         "test_auc": metrics.auc, "test_acc": metrics.acc, "auc_ci": metrics.ci.get("auc"),
                         "faithfulness_gap": faith["gap"], "faithfulness_area_top": faith["area_top"],
                         "faithfulness_area_random": faith["area_random"], "train_s": seconds})
            print(f"{label}: AUC {metrics.auc:.3f} ACC {metrics.acc:.3f} gap {faith['gap']:.3f} ({seconds:.0f} s)",
                  flush=True)
    out = Path(args.results_dir)
    result = {"benchmark": "sgt_fixes", "dataset": "breastmnist", "model": "resnet20", "seed": args.seed,
              "threads": args.threads, "train": config.to_dict(), "train_subset": args.train_subset,
              "positive_class": "label 1 (normal/benign)", "n_test": len(x_test),
              "faithfulness": {"maps": "|input gradient| of the true label", "fill": "constant (image minimum)",
                               "fractions": "0..0.9"},
              "environment": environment(), "seconds": time.perf_counter() - t0, "rows": rows}
    write_json_atomic(out / "sgt_fixes.json", result)
    table = markdown_table(rows, [("model", "model"), ("test_auc", "test AUC"), ("test_acc", "test ACC"),
                                  ("faithfulness_gap", "faithfulness gap ↑"), ("train_s", "train s")])
    subset = f" on a {args.train_subset}-image training subset (smoke test)" if args.train_subset else ""
    text = (f"# SGT before and after the issue-9 fixes\n\n{written_by(__file__)}\n\nResNet-20 on BreastMNIST{subset}, {args.epochs} epochs "
            f"(Adam 1e-3, x0.1 at 50 %/75 %, batch 128, best validation AUC), seed {args.seed}, "
            f"{args.threads} thread(s), CPU {result['environment']['cpu']}. Test AUC/ACC on {len(x_test)} test "
            "images, positive class = label 1 (normal/benign). SGT k = 0.5, lambda = 1, random fill.\n\n"
            "- *sgt before*: logit-gradient target; the masked pass updated BN running statistics.\n"
            "- *sgt before, BN recomputed*: the same weights, BN statistics recomputed on clean training images.\n"
            "- *sgt after*: log-softmax target (the authors'), masked pass leaves BN and all module state alone.\n\n"
            f"{table}\n")
    write_text_atomic(out / "sgt_fixes.md", text)
    print(text)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
