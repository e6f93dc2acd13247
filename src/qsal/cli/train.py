"""``qsal train``: a TrainConfig from the command line, then ``qsal.pipeline.train_model`` (registered into
``qsal.cli``)."""

from __future__ import annotations

from qsal.cli.arguments import (SEED, SGT_K, SGT_LAMBDA, augmentation_args, data_args, decision_args, float_range,
                                int_range, no_progress_arg, positive_float, positive_int, progress_wanted,
                                run_folder_args)
from qsal.cli.output import print_result

__all__ = ["register"]


def _train_config_args(p) -> None:
    from qsal.train import TrainConfig

    d = TrainConfig()
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help="training epochs (MedMNIST v2 uses 100)")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="images per optimizer step")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="learning rate (x0.1 at 50%% and 75%% of the epochs)")
    p.add_argument("--optimizer", default=d.optimizer, choices=["adam", "sgd"], help="optimizer (sgd: momentum 0.9, Nesterov)")
    p.add_argument("--weight-decay", type=float_range(0.0, None, what="a weight decay"), default=d.weight_decay,
                   help="L2 weight decay of the optimizer (the MedMNIST recipe has none)")
    augmentation_args(p)
    p.add_argument("--select-on", default=d.select_on, choices=["auc", "acc", "loss"],
                   help="validation metric whose best epoch is saved (MedMNIST: auc)")
    p.add_argument("--seed", type=SEED, default=d.seed, help="seed of weights, data order and augmentation")
    p.add_argument("--ema-decay", type=float_range(0.0, 1.0, low_open=True, high_open=True, what="an EMA decay"), default=d.ema_decay,
                   help="validate, select and save an exponential moving average of the weights (e.g. 0.99; "
                        "default: off, the live weights)")
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"], help="auto: CUDA where there is one")
    p.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "bf16"],
                   help="training arithmetic; auto: bf16 autocast where the CPU/GPU computes bf16 natively, else fp32 "
                        "(evaluation is always fp32)")
    no_progress_arg(p)


def _train_config(args):
    from qsal.train import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                       weight_decay=args.weight_decay, shift_px=args.shift_px, hflip=args.hflip,
                       rotate_deg=args.rotate_deg, zoom=args.zoom, select_on=args.select_on, seed=args.seed, device=args.device,
                       precision=args.precision, ema_decay=args.ema_decay, progress=progress_wanted(args))


def cmd_train(args):
    from qsal.pipeline import train_model

    result = train_model(dataset=args.dataset, model=args.model, config=_train_config(args), out_dir=args.out,
                         data_dir=args.data_dir, size=args.size, download=args.download,
                         saliency_guided=args.saliency_guided, sgt_k=args.sgt_k, sgt_lambda=args.sgt_lambda,
                         sgt_target=args.sgt_target, pact_bits=args.pact_bits, positive_class=args.positive_class,
                         operating_point=args.operating_point, temperature_scaling=args.temperature_scaling,
                         resume=args.resume, force=args.force)
    print_result(result, args.json)


def _setup_train(p) -> None:
    data_args(p)
    p.add_argument("--model", default="small_cnn", help="model name (see `qsal models`)")
    p.add_argument("--out", default=None, help="output folder (default: a fresh runs/train/<dataset>-<model>-N)")
    run_folder_args(p)
    p.add_argument("--positive-class", default=None, metavar="CLASS",
                   help="binary sets: the class sensitivity is about, by name or id (default: the dataset table's, "
                        "e.g. malignant for BreastMNIST, pneumonia for PneumoniaMNIST)")
    decision_args(p)
    _train_config_args(p)
    p.add_argument("--saliency-guided", action="store_true", help="saliency-guided training (Ismail et al. 2021)")
    p.add_argument("--sgt-k", type=SGT_K, default=0.5, help="saliency-guided: fraction of features masked per step")
    p.add_argument("--sgt-lambda", type=SGT_LAMBDA, default=1.0, help="saliency-guided: weight of the KL term")
    p.add_argument("--sgt-target", default="log_softmax", choices=["log_softmax", "logit"],
                   help="score whose input gradient ranks pixels (log_softmax: the SGT authors')")
    p.add_argument("--pact-bits", type=int_range(2, 8, "a bit-width"), default=None, help="train PACT-quantized at this many bits (2-8)")


def register(command, setup: dict) -> None:
    command("train", "train a model (FP32, or saliency-guided with --saliency-guided) and save the best checkpoint"
            )(cmd_train)
    setup["train"] = _setup_train
