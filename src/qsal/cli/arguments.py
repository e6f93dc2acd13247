"""Argument types that check ranges as the command line is parsed, a parser whose errors are one line, and the
argument groups several commands share (data, progress, decision, run folder).

argparse prints its usage block before an error; qsal prints only ``error: qsal <command>: <what> ...``
(exit 2), like every other bad input, and points at ``--help``.
"""

from __future__ import annotations

import argparse
import math
import sys

__all__ = ["OneLineErrorParser", "int_range", "float_range", "positive_int", "non_negative_int", "positive_float",
           "fraction", "SEED", "IMAGE_SIZE", "SGT_K", "SGT_LAMBDA", "data_args", "data_dir_arg", "no_progress_arg",
           "progress_wanted", "decision_args", "RECIPE_FIELDS", "recipe_args", "recipe_from_args", "run_folder_args"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are a single ``error:`` line on stderr, exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        print(f"error: {self.prog}: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def int_range(low: int | None = None, high: int | None = None, what: str = "an integer"):
    """An argparse ``type`` accepting integers in ``[low, high]`` (either bound optional)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (f">= {low}" if high is None else f"<= {high}" if low is None else f"in {low}-{high}")
            raise argparse.ArgumentTypeError(f"{value} is out of range: {what} must be {bounds}")
        return value

    parse.__name__ = "int"
    return parse


def float_range(low: float | None = None, high: float | None = None, low_open: bool = False, what: str = "a number",
                high_open: bool = False):
    """An argparse ``type`` accepting finite floats in ``[low, high]`` (``(low, ...`` with ``low_open``,
    ``..., high)`` with ``high_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: {what} must be finite"
                                             f"{', ' + lo if lo else ''}{', ' + hi if hi else ''}")
        return value

    parse.__name__ = "float"
    return parse


positive_int = int_range(1, None, "a count")
non_negative_int = int_range(0, None, "a count")
positive_float = float_range(0.0, None, low_open=True)
fraction = float_range(0.0, 1.0, low_open=False, what="a fraction")


SEED = int_range(0, 2**32 - 1, "a seed")
# qsal.data.registry's MIN_IMAGE_SIZE-MAX_IMAGE_SIZE, written out: importing qsal.data here would add numpy's import to
# every `qsal --help` (tests/data/test_registry.py holds the two equal)
IMAGE_SIZE = int_range(12, 1024, "an image size in px")
SGT_K = float_range(0.0, 0.99, what="the masked fraction")
SGT_LAMBDA = float_range(0.0, None, what="the KL weight")


def data_args(p: argparse.ArgumentParser, dataset_default: str | None = "breastmnist") -> None:
    """--dataset / --data-dir / --size / --download."""
    p.add_argument("--dataset", default=dataset_default,
                   help="dataset name (see `qsal datasets`) or folder:PATH of class sub-folders"
                        + ("" if dataset_default else " (default: the one the checkpoint records)"))
    data_dir_arg(p)
    p.add_argument("--size", type=IMAGE_SIZE, default=None, help="image size in px (MedMNIST: 28, 64, 128, 224; "
                   "default: the dataset's own, 28 for MedMNIST and folders; --model does not change it)")
    p.add_argument("--download", action="store_true", help="download missing files from the official source")


def data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data root (default: $QSAL_DATA_DIR, then ~/.medmnist; BreastMNIST 28 px is embedded)")


def no_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines (results still print)")


def progress_wanted(args) -> bool:
    """Progress output unless --quiet or --no-progress (bars on a terminal, one line per epoch otherwise)."""
    return not (args.quiet or getattr(args, "no_progress", False))


def decision_args(p: argparse.ArgumentParser, inherit: bool = False) -> None:
    """--operating-point / --temperature-scaling (shared by train and quantize)."""
    p.add_argument("--operating-point", default=None, metavar="RULE",  # None: the default, so a rule given is known
                   help="binary sets: threshold rule chosen on the validation split: youden, sensitivity:0.95 or a "
                        "fixed probability such as 0.5 (default: " + ("the parent's rule)" if inherit else "youden)"))
    # --no-temperature-scaling: a quantized child otherwise takes its parent's choice, with no way to turn it off
    p.add_argument("--temperature-scaling", action=argparse.BooleanOptionalAction, default=None if inherit else False,
                   help="fit a softmax temperature on validation and store it with the model" +
                        (" (default: as the parent did)" if inherit else ""))


# TrainConfig fields that qsal train and qsal quantize's fine-tune both take as flags (recipe_args)
RECIPE_FIELDS = ("batch_size", "optimizer", "weight_decay", "shift_px", "hflip", "rotate_deg", "zoom", "select_on",
                 "ema_decay")


def recipe_args(p: argparse.ArgumentParser, what: str = "") -> None:
    """The flags of ``RECIPE_FIELDS``, defaults TrainConfig's; ``what`` prefixes each help."""
    from qsal.train import TrainConfig

    d = TrainConfig()
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"{what}images per optimizer step")
    p.add_argument("--optimizer", default=d.optimizer, choices=["adam", "sgd"],
                   help=f"{what}optimizer (sgd: momentum 0.9, Nesterov)")
    p.add_argument("--weight-decay", type=float_range(0.0, None, what="a weight decay"), default=d.weight_decay,
                   help=f"{what}L2 weight decay of the optimizer (the MedMNIST recipe has none)")
    p.add_argument("--shift-px", type=non_negative_int, default=d.shift_px, help=f"{what}random-translation augmentation (px)")
    p.add_argument("--hflip", action="store_true", help=f"{what}random horizontal flips (not for anatomically "
                   "asymmetric images such as chest X-rays)")
    p.add_argument("--rotate-deg", type=float_range(0.0, 180.0, what="a rotation in degrees"), default=d.rotate_deg,
                   help=f"{what}random rotation, uniform in +-this many degrees (default: none)")
    p.add_argument("--zoom", type=float_range(0.0, 0.5, what="a zoom range"), default=d.zoom,
                   help=f"{what}random zoom, a factor uniform in [1 - ZOOM, 1 + ZOOM] (e.g. 0.1; default: none)")
    p.add_argument("--select-on", default=d.select_on, choices=["auc", "acc", "loss"],
                   help=f"{what}validation metric whose best epoch is saved (MedMNIST: auc)")
    p.add_argument("--ema-decay", type=float_range(0.0, 1.0, low_open=True, high_open=True, what="an EMA decay"),
                   default=d.ema_decay, help=f"{what}validate, select and save an exponential moving average of the "
                                             "weights (e.g. 0.99; default: off, the live weights)")


def recipe_from_args(args) -> dict:
    """``{field: value}`` of ``RECIPE_FIELDS`` as parsed by ``recipe_args``."""
    return {k: getattr(args, k) for k in RECIPE_FIELDS}


SGT_DEFAULTS = {"sgt_k": 0.5, "sgt_lambda": 1.0, "sgt_target": "log_softmax"}  # argparse's default is None


def resolve_sgt_options(args) -> None:
    """Refuse ``--sgt-*`` without ``--saliency-guided`` (they would be ignored while the user thinks them applied),
    then fill in the defaults of those not given."""
    from qsal.errors import QsalError

    given = ["--" + k.replace("_", "-") for k in SGT_DEFAULTS if getattr(args, k) is not None]
    if given and not args.saliency_guided:
        raise QsalError(f"{' and '.join(given)} set{'s' if len(given) == 1 else ''} the saliency-guided training; "
                        "add --saliency-guided, or drop " + ("it" if len(given) == 1 else "them"))
    for name, default in SGT_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def check_resume(args) -> None:
    """``--resume`` continues the run in ``--out``: without one there (no ``--out``, a mistyped one), it would quietly
    start a new run from scratch."""
    from pathlib import Path

    from qsal.errors import QsalError
    from qsal.run_folder import FINGERPRINT_FILE

    if args.resume and (args.out is None or not (Path(args.out) / FINGERPRINT_FILE).is_file()):
        where = "no --out was given" if args.out is None else f"{args.out} holds no run ({FINGERPRINT_FILE})"
        raise QsalError(f"--resume continues the run in --out, and {where}; pass --out of the run, or drop --resume "
                        "to start one")


def run_folder_args(p: argparse.ArgumentParser) -> None:
    either = p.add_mutually_exclusive_group()  # one continues the run in --out, the other starts it over
    either.add_argument("--resume", action="store_true", help="continue the run already in --out (same settings only)")
    either.add_argument("--force", action="store_true", help="replace the run already in --out")
