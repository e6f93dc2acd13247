"""``qsal train``: a TrainConfig from the command line, then ``qsal.pipeline.train_model`` (registered into
``qsal.cli``)."""

from __future__ import annotations

from qsal.cli.arguments import (SEED, SGT_K, SGT_LAMBDA, data_args, decision_args, int_range, no_progress_arg,
                                positive_float, positive_int, progress_wanted, recipe_args, recipe_from_args,
                                run_folder_args)
from qsal.cli.output import print_result, summary_table

__all__ = ["register"]


def _train_config_args(p) -> None:
    from qsal.train import TrainConfig

    d = TrainConfig()
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help="training epochs (MedMNIST v2 uses 100)")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="learning rate (x0.1 at 50%% and 75%% of the epochs)")
    recipe_args(p)
    p.add_argument("--seed", type=SEED, default=d.seed, help="seed of weights, data order and augmentation, and of a "
                                                             "seeded split unless --split-seed is given")
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"], help="auto: CUDA where there is one")
    p.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "bf16"],
                   help="training arithmetic; auto: bf16 autocast where the CPU/GPU computes bf16 natively, else fp32 "
                        "(evaluation is always fp32)")
    no_progress_arg(p)


def _train_config(args):
    from qsal.train import TrainConfig

    return TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, device=args.device, precision=args.precision,
                       progress=progress_wanted(args), **recipe_from_args(args))


def cmd_train(args):
    from qsal.cli.arguments import check_resume, resolve_sgt_options
    from qsal.data.folder import ImageTooSmall
    from qsal.pipeline import train_model

    check_resume(args)
    resolve_sgt_options(args)
    try:
        result = train_model(dataset=args.dataset, model=args.model, config=_train_config(args), out_dir=args.out,
                             data_dir=args.data_dir, size=args.size, download=args.download,
                             saliency_guided=args.saliency_guided, sgt_k=args.sgt_k, sgt_lambda=args.sgt_lambda,
                             sgt_target=args.sgt_target, pact_bits=args.pact_bits, positive_class=args.positive_class,
                             operating_point=args.operating_point, temperature_scaling=args.temperature_scaling,
                             resume=args.resume, force=args.force, split_seed=args.split_seed)
    except ImageTooSmall as e:  # the size this command chose: named with the largest the image allows
        raise ImageTooSmall(e.path, e.width, e.height, e.size, "--size") from None
    print_result(result if args.json else summary_table(result), args.json)


def _setup_train(p) -> None:
    data_args(p)
    p.add_argument("--model", default="small_cnn", help="model name (see `qsal models`)")
    p.add_argument("--out", default=None, help="output folder (default: a fresh runs/train/<dataset>-<model>-N)")
    run_folder_args(p)
    p.add_argument("--split-seed", type=SEED, default=None, metavar="N",
                   help="seed of a seeded split (a folder's train/validation/test, MNIST's and CIFAR-10's validation "
                        "slice); default: --seed. Fix it to keep one test set across seeds")
    p.add_argument("--positive-class", default=None, metavar="CLASS",
                   help="binary sets: the class sensitivity is about, by name or id (default: the dataset table's, "
                        "e.g. malignant for BreastMNIST, pneumonia for PneumoniaMNIST; a folder's: its second class "
                        "folder alphabetically, said in a note)")
    decision_args(p)
    _train_config_args(p)
    p.add_argument("--saliency-guided", action="store_true", help="saliency-guided training (Ismail et al. 2021)")
    p.add_argument("--sgt-k", type=SGT_K, default=None, help="saliency-guided: fraction of features masked per step "
                   "(default: 0.5)")
    p.add_argument("--sgt-lambda", type=SGT_LAMBDA, default=None, help="saliency-guided: weight of the KL term "
                   "(default: 1.0)")
    p.add_argument("--sgt-target", default=None, choices=["log_softmax", "logit"],
                   help="score whose input gradient ranks pixels (default log_softmax: the SGT authors')")
    p.add_argument("--pact-bits", type=int_range(2, 8, "a bit-width"), default=None,
                   help="train PACT-quantized at this many bits (2-8), after an FP32 warm-up of a quarter of --epochs "
                        "(at least 1) that sets the clipping levels; the PACT part gets the rest (at least 1)")


def register(command, setup: dict) -> None:
    command("train", "train a model (FP32, or saliency-guided with --saliency-guided) and save the best checkpoint"
            )(cmd_train)
    setup["train"] = _setup_train
