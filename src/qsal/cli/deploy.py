"""CLI commands for the deployment half: quantize, export, bench, explain (registered into ``qsal.cli``)."""

from __future__ import annotations

import sys
from pathlib import Path

from qsal.cli.output import note_unfinished, print_result, summary_table

from qsal.cli.arguments import (SEED, float_range, int_range, positive_float, positive_int, recipe_args, recipe_from_args,
                                resolve_sgt_options)


def _quant_config(args):
    from qsal.quant import PACTConfig, PTQConfig, QATConfig, WeightOnlyConfig

    skip = tuple(args.skip or ())
    # the config's own default unless given (PTQ/QAT 512, PACT 256): the command line makes what the API makes
    calibration = {"num_calibration": args.num_calibration} if args.num_calibration is not None else {}
    if args.method == "ptq":
        return PTQConfig(observer=args.observer, weight_bits=args.weight_bits or args.bits, act_bits=args.bits,
                         per_channel=not args.per_tensor, skip=skip, **calibration)
    if args.method == "qat":
        return QATConfig(bits=args.bits, per_channel=not args.per_tensor, skip=skip, **calibration)
    if args.method == "pact":  # --per-tensor: one scale per k-bit layer (the default: all but depthwise)
        return PACTConfig(bits=args.bits, skip=skip, **calibration,
                          **({"weight_per_channel": "none"} if args.per_tensor else {}))
    return WeightOnlyConfig(bits=args.bits, per_channel=not args.per_tensor, skip=skip)


# Options with no effect on some methods, and their defaults (argparse's default is None, so that given is known):
# the command refuses them there rather than record a setting that did nothing.
_FINETUNE_ONLY = {"epochs": 5, "lr": 1e-4}


def _check_quantize_options(args) -> None:
    """Refuse an option the chosen method does not use (one line naming it), then fill in the defaults."""
    from qsal.errors import QsalError

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    trains = args.method in ("qat", "pact")
    given = [flag(k) for k in _FINETUNE_ONLY if getattr(args, k) is not None]
    if not trains and (given or args.saliency_guided):
        names = given + (["--saliency-guided"] if args.saliency_guided else [])
        raise QsalError(f"{' and '.join(names)} shape{'s' if len(names) == 1 else ''} the fine-tune; --method "
                        f"{args.method} trains nothing (use {'it' if len(names) == 1 else 'them'} with qat or pact)")
    resolve_sgt_options(args)
    if args.observer is not None and args.method != "ptq":
        raise QsalError(f"--observer picks PTQ's calibration; --method {args.method} "
                        + ("learns its clipping range" if args.method == "pact" else
                           "tracks ranges while it trains" if args.method == "qat" else "calibrates no activations")
                        + ": drop --observer")
    if args.weight_bits is not None and args.method != "ptq":
        raise QsalError(f"--weight-bits sets PTQ's weights apart from its activations (--bits); --method {args.method} "
                        + ("quantizes weights only: give their bits with --bits" if args.method == "weight-only" else
                           "takes one --bits for both")
                        + ": drop --weight-bits" + ("" if args.method == "weight-only" else " or use --method ptq"))
    if args.num_calibration is not None and args.method == "weight-only":
        raise QsalError("--num-calibration: --method weight-only calibrates no activations (its weights need no "
                        "images); drop it")
    if args.seed is not None and args.method == "weight-only":
        raise QsalError("--seed draws the calibration images and seeds the fine-tune; --method weight-only has "
                        "neither (its weights need no images): drop it")
    if args.seed is None:
        args.seed = 0
    for name, default in {**_FINETUNE_ONLY, "observer": "minmax"}.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def _finetune_config(args):
    """The fine-tune's TrainConfig when an option of it is given, else None: a plain fine-tune keeps the fingerprint
    it always had (TrainConfig's defaults: no augmentation, no averaging)."""
    from qsal.errors import QsalError
    from qsal.train import TrainConfig

    unset = TrainConfig()
    given = {k: v for k, v in recipe_from_args(args).items() if v not in (getattr(unset, k), 0)}
    if not given:
        return None
    if args.method not in ("qat", "pact"):
        names = ["--" + k.replace("_", "-") for k in given]
        what = ("averages fine-tuned weights" if names == ["--ema-decay"] else
                ("shapes" if len(names) == 1 else "shape") + " the fine-tune")
        it = "it" if len(names) == 1 else "them"
        raise QsalError(f"{' and '.join(names)} {what}; --method {args.method} trains nothing (use {it} with qat or "
                        f"pact, or drop {it})")
    return TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, **given)


def cmd_quantize(args):
    from qsal.pipeline import quantize_checkpoint

    from qsal.cli.arguments import check_resume

    check_resume(args)
    _check_quantize_options(args)
    note_unfinished(args.checkpoint, args.quiet)  # its children inherit a parent cut off part-way
    step = None
    if args.saliency_guided:
        from qsal.pipeline import dataset_task
        from qsal.saliency import SaliencyGuidedStep

        step = SaliencyGuidedStep(dataset_task(args.checkpoint), k=args.sgt_k, lam=args.sgt_lambda,
                                  seed=args.seed, target=args.sgt_target)
    train_config = _finetune_config(args)
    result = quantize_checkpoint(args.checkpoint, _quant_config(args), args.out, epochs=args.epochs, lr=args.lr,
                                 data_dir=args.data_dir, seed=args.seed, progress=not (args.no_progress or args.quiet), step=step,
                                 operating_point=args.operating_point, temperature_scaling=args.temperature_scaling,
                                 resume=args.resume, force=args.force, train_config=train_config,
                                 num_calibration_given=args.num_calibration is not None)
    print_result(result if args.json else summary_table(result), args.json)


def _setup_quantize(p):
    p.add_argument("checkpoint", help="FP32 checkpoint (.safetensors) from qsal train")
    p.add_argument("--method", default="ptq", choices=["ptq", "qat", "pact", "weight-only"], help="quantization method")
    p.add_argument("--bits", type=int_range(2, 8, "a bit-width"), default=8,
                   help="bit-width (PTQ/QAT/PACT: 2-8, weights and activations; PTQ with --weight-bits: activations "
                        "only; weight-only: 4 or 8)")
    p.add_argument("--weight-bits", type=int_range(2, 8, "a bit-width"), default=None,
                   help="PTQ: the weights' bit-width, apart from the activations' --bits (default: --bits). 7 with "
                        "--bits 8 (W7A8) keeps onnxruntime's fast integer kernels exact on x86 CPUs without VNNI, "
                        "where 8-bit weights need its slower exact ones")
    p.add_argument("--observer", default=None, choices=["minmax", "percentile", "mse", "entropy"],
                   help="PTQ calibration observer (default: minmax)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weight scales "
                   "(PACT: for every k-bit layer, depthwise too; its 8-bit first and last layers stay per-channel)")
    p.add_argument("--num-calibration", type=positive_int, default=None,
                   help="training images used for calibration (default: the method's, PTQ/QAT 512, PACT 256)")
    p.add_argument("--skip", nargs="*", help="layer names to keep FP32 (their weights; activations stay quantized; onnxruntime quantizes a kept layer read straight from a quantized tensor itself, and the export metadata and model card name any it does; default: none)")
    p.add_argument("--epochs", type=positive_int, default=None, help="fine-tuning epochs (QAT/PACT; default: 5)")
    p.add_argument("--lr", type=positive_float, default=None, help="fine-tuning learning rate (QAT/PACT; default: 1e-4)")
    recipe_args(p, "QAT/PACT fine-tune: ")
    p.add_argument("--saliency-guided", action="store_true", help="fine-tune with the saliency-guided step (SGT+PACT)")
    p.add_argument("--sgt-k", type=float_range(0.0, 0.99, what="the masked fraction"), default=None,
                   help="saliency-guided: fraction of features masked per step (default: 0.5)")
    p.add_argument("--sgt-lambda", type=float_range(0.0, None, what="the KL weight"), default=None,
                   help="saliency-guided: weight of the KL term (default: 1.0)")
    p.add_argument("--sgt-target", default=None, choices=["log_softmax", "logit"],
                   help="score whose input gradient ranks pixels (default log_softmax: the SGT authors')")
    p.add_argument("--data-dir", help="data root (default: $QSAL_DATA_DIR, then ~/.medmnist)")
    p.add_argument("--seed", type=SEED, default=None,
                   help="seed of calibration sampling and fine-tuning (default: 0; not for weight-only)")
    p.add_argument("--out", default=None, help="output folder (default: a fresh runs/quantized/DATASET-MODEL-METHOD-N)")
    from qsal.cli.arguments import decision_args, run_folder_args

    run_folder_args(p)
    decision_args(p, inherit=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines (results still print)")


def cmd_export(args):
    from qsal.errors import QsalError
    from qsal.pipeline import export_checkpoint

    if args.format != "onnx":
        raise QsalError(f"format {args.format!r} is not supported; use --format onnx")
    note_unfinished(args.checkpoint, args.quiet)
    # a file not named .onnx would be refused by predict and bench; a folder is refused later, in its own words
    if args.out and Path(args.out).suffix.lower() != ".onnx" and not Path(args.out).is_dir():
        raise QsalError(f"--out {args.out}: export writes an ONNX file; name it .onnx")
    if Path(args.checkpoint).suffix.lower() == ".onnx":
        raise QsalError(f"{args.checkpoint} is already an ONNX file; export takes the .safetensors checkpoint it "
                        "was made from")
    result = export_checkpoint(args.checkpoint, args.out, force=args.force, data_dir=args.data_dir)
    from qsal.runtime import KERNEL_NOTE_KEYS

    if not args.json:  # the table's word for the kernels a CPU without VNNI chose, as bench prints it
        result = {"here (no VNNI)" if k in KERNEL_NOTE_KEYS else k: v for k, v in result.items()}
    print_result(result, args.json)


def _setup_export(p):
    p.add_argument("checkpoint", help="a checkpoint (.safetensors), float or quantized")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="artifact format")
    p.add_argument("--out", default=None, help="output file (default: model.onnx beside the checkpoint; never "
                   "overwritten without --force)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--data-dir", help="data root for the model card's test metrics of the artifact")


def cmd_bench(args):
    from qsal.export.bench import bench_onnx

    from qsal.cli.output import check_out, print_rows

    if args.out:  # checked before any timing: a typo must not cost the run, nor overwrite the model timed
        check_out(args.out, {args.model: "the model"}, True, example="bench.json")  # the model, a folder, a pipe
        if Path(args.out).suffix.lower() != ".json":  # JSON in a .csv file reads as a broken table
            from qsal.errors import QsalError

            raise QsalError(f"--out {args.out}: bench writes its result as JSON; name the file .json")
        check_out(args.out, {args.model: "the model"}, args.force, example="bench.json")
    result = bench_onnx(args.model, threads=tuple(args.threads), seconds=args.seconds)
    if args.out:
        from qsal._atomic import write_json_atomic

        write_json_atomic(args.out, result)
    if args.json:
        print_result(result, True)
        return
    print(f"{args.model}: {result['size_bytes'] / 1024:,.1f} KiB"
          + (f"; its graph fixes the batch at {result['fixed_batch']}: only that batch size is timed"
             if result.get("fixed_batch") else ""))
    from qsal.export.card_storage import describe_kernels
    from qsal.runtime import KERNEL_NOTE_KEYS

    print(f"runs on: {describe_kernels(result['deployed'])}"
          + "".join(f"\nhere: {result[k]}" for k in KERNEL_NOTE_KEYS if result.get(k)))
    over = sorted({r["threads"] for r in result["runs"] if r.get("oversubscribed")})
    if over:
        print(f"note: {', '.join(map(str, over))} threads on {result['environment']['cpus_usable']} usable cores: "
              "those rows time contention between threads, not the model", file=sys.stderr)
    print_rows([{"threads": r["threads"], "batch": r["batch"], "p50 ms": round(r["latency_ms_p50"], 3),
                 "p95 ms": round(r["latency_ms_p95"], 3), "img/s": round(r["throughput_img_s"])} for r in result["runs"]])


def _setup_bench(p):
    p.add_argument("model", help="an ONNX file from qsal export")
    p.add_argument("--threads", type=int_range(0, 1024, "a thread count"), nargs="+", default=[1, 0],
                   help="thread counts (0 = all cores this process may use)")
    p.add_argument("--seconds", type=float_range(0.0, 3600.0, low_open=True, what="seconds"), default=2.0,
                   help="minimum timed seconds per configuration")
    p.add_argument("--out", help="also write the results to this JSON file (default: print only; never overwritten "
                   "without --force)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")


def register(command, setup: dict) -> None:
    for name, fn, help_text, setup_fn in (
        ("quantize", cmd_quantize, "quantize a checkpoint: PTQ (4 observers), QAT, PACT (2-8 bit) or weight-only",
         _setup_quantize),
        ("export", cmd_export, "export a checkpoint to ONNX (integer QDQ for quantized models) + model card", _setup_export),
        ("bench", cmd_bench, "size and latency (p50/p95, batch 1 and 64, 1 thread and all cores) of an ONNX model",
         _setup_bench),
    ):
        command(name, help_text)(fn)
        setup[name] = setup_fn
    from qsal.cli import explain as cli_explain

    cli_explain.register(command, setup)
