"""``qsal`` command line: a thin argparse layer over the Python API.

Every sub-command parses its arguments, builds a config and calls one library function; user errors
(``QsalError``) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from qsal.cli.arguments import IMAGE_SIZE, OneLineErrorParser, data_args, data_dir_arg, int_range
from qsal.cli.output import HelpFormatter, add_output_args, metrics_table, print_result, print_rows
from qsal.errors import QsalError


__all__ = ["main", "build_parser"]

_COMMANDS = {}


def command(name: str, help: str):
    def wrap(fn):
        _COMMANDS[name] = (fn, help)
        return fn

    return wrap


@command("datasets", "list the datasets qsal knows, where each was found and whether its checksum matches")
def cmd_datasets(args):
    from qsal.data import dataset_status, dataset_status_table

    rows = dataset_status(args.data_dir, verify=not args.no_verify)
    print_rows(rows if args.json else dataset_status_table(rows), args.json)


def _setup_datasets(p):
    data_dir_arg(p)
    p.add_argument("--no-verify", action="store_true", help="skip MD5 checks (faster on large files)")


@command("models", "list the registered models with their parameter count and MACs")
def cmd_models(args):
    from qsal.models import count_macs, count_parameters, create_model, list_models

    rows = []
    for name in list_models():
        m = create_model(name, args.num_classes, args.in_channels, args.image_size)
        rows.append({"model": name, "params": count_parameters(m), "MACs": count_macs(m, args.in_channels, args.image_size)})
    print_rows(rows, args.json)


def _setup_models(p):
    p.add_argument("--num-classes", type=int_range(1, 1000, "a class count"), default=2,
                   help="outputs of the model the counts are for")
    p.add_argument("--in-channels", type=int, choices=[1, 3], default=1, help="input channels (1 grayscale, 3 RGB)")
    p.add_argument("--image-size", type=IMAGE_SIZE, default=28, help="input side in px, 12-1024 (MACs depend on it)")


@command("evaluate", "score a checkpoint or an exported .onnx file: AUC/ACC with 95% CIs, sensitivity and "
                     "specificity of the positive class at 0.5 and at the stored operating point, ECE")
def cmd_evaluate(args):
    from qsal.cli.output import check_out, note_unfinished
    from qsal.scoring import evaluate_model

    model = Path(args.model)
    reads = {model: "the model"}  # a result file must never replace what it scored, nor a checkpoint's other half
    if model.suffix.lower() in (".safetensors", ".json"):
        reads.setdefault(model.with_suffix(".json"), "the checkpoint's JSON")
        reads.setdefault(model.with_suffix(".safetensors"), "the checkpoint's weights")
    for target, example, flag in ((args.out, "metrics.json", "--out"),
                                  (args.reliability, "reliability.png", "--reliability")):
        if target:  # before the work, not after it
            check_out(target, reads, args.force, example=example, flag=flag)
    note_unfinished(args.model, args.quiet)
    metrics = evaluate_model(args.model, dataset=args.dataset, split=args.split, data_dir=args.data_dir,
                             size=args.size, out=args.out, other_dataset=args.other_dataset,
                             reliability_png=args.reliability, download=args.download)
    print_result(metrics if args.json else metrics_table(metrics), args.json)


def _setup_evaluate(p):
    p.add_argument("model", help="a .safetensors checkpoint or an .onnx file (scores the artifact) written by qsal")
    data_args(p, dataset_default=None)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="all: every image (of a folder: every file, not the test part of its split)")
    p.add_argument("--other-dataset", action="store_true",
                   help="allow scoring on a dataset other than the model's own (the output says so)")
    p.add_argument("--reliability", metavar="PNG", help="also draw the reliability diagram to this PNG")
    p.add_argument("--out", help="also write the metrics to this JSON file (default: print only; never overwritten "
                   "without --force)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out / --reliability file")


_SETUP = {"datasets": _setup_datasets, "models": _setup_models, "evaluate": _setup_evaluate}


def build_parser() -> argparse.ArgumentParser:
    from qsal import __version__
    from qsal.cli import deploy as cli_quant

    from qsal.cli import predict as cli_predict

    from qsal.cli import study as cli_study
    from qsal.cli import train as cli_train

    cli_train.register(command, _SETUP)
    cli_study.register(command, _SETUP)
    cli_quant.register(command, _SETUP)
    cli_predict.register(command, _SETUP)
    parser = OneLineErrorParser(prog="qsal", description="Quantized, saliency-guided image classifiers "
                                "for edge hardware. Start with `qsal demo`.", formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"qsal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # `qsal --help` lists the commands in the order of the work (the README's table), wherever they are registered
    order = ("datasets", "models", "train", "evaluate", "predict", "quantize", "export", "bench", "explain", "demo", "run",
             "report")
    listed = sorted(_COMMANDS.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))
    for name, (fn, help_text) in listed:
        # help= is %-formatted by argparse (the command list), description= is printed as written
        p = sub.add_parser(name, help=help_text.replace("%", "%%"), description=help_text, formatter_class=HelpFormatter)
        _SETUP[name](p)
        add_output_args(p)
        p.set_defaults(func=fn)
    return parser


_USER_PATH_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                     errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL, errno.EXDEV, errno.ENOTEMPTY}


def _is_user_path_error(e: OSError) -> bool:
    """An OSError the user can mend by choosing another path: one of the path errnos, about a file outside qsal's
    own install and Python's (a missing file *there* is a broken install or a bug, and keeps its traceback)."""
    if e.filename is None or e.errno not in _USER_PATH_ERRNOS:
        return False
    import os
    import sysconfig

    import qsal

    try:
        path = Path(os.fsdecode(e.filename)).resolve()
    except (OSError, ValueError, TypeError):
        return True
    installed = sysconfig.get_paths()
    own = [Path(qsal.__file__).resolve().parent] + [Path(installed[k]).resolve() for k in ("stdlib", "purelib", "platlib")]
    return not any(path.is_relative_to(root) for root in own)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from qsal._signals import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # `kill` says what was left and how to continue, as Ctrl-C does
            return args.func(args) or 0
    except QsalError as e:
        print(f"error: {e}", file=sys.stderr)
        return QsalError.exit_code
    except BrokenPipeError:  # `qsal ... | head`: the reader left; say nothing more (as cat and grep do)
        _silence_stdout()
        return 141
    except OSError as e:
        from qsal._atomic import DISK_FULL_ERRNOS

        if e.errno in DISK_FULL_ERRNOS:
            print(f"error: no space left on the device ({e.filename or 'while writing'}); free some space or choose "
                  "another output folder, then rerun (finished files are intact)", file=sys.stderr)
            return QsalError.exit_code
        if not _is_user_path_error(e):  # not about a path the user gave: a bug, keep the traceback
            raise
        # A path the user gave that the system refuses (an --out under /proc, a read-only or missing folder).
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
        print(f"error: {where}: {e.strerror or e}; check the path and its permissions, or choose another one",
              file=sys.stderr)
        return QsalError.exit_code
    except KeyboardInterrupt as e:  # a command may say what its interruption left (qsal report: nothing written)
        print(str(e) or _interrupted(args), file=sys.stderr)
        return 130


def _interrupted(args) -> str:
    """What an interrupted command left and how to continue it: ``qsal run`` resumes by itself; a command with a run
    folder (train, quantize) refuses a plain rerun into a folder holding a run (its ``run.json``), and continues it
    only with --resume, which argparse refuses beside --force."""
    from pathlib import Path

    from qsal.run_folder import FINGERPRINT_FILE

    if not hasattr(args, "resume"):
        return "interrupted; finished files are intact and a rerun resumes"
    if not getattr(args, "out", None):
        return ("interrupted; finished files are intact: to continue, rerun it with --resume and --out set to its "
                "folder (the newest under runs/)")
    if not (Path(args.out) / FINGERPRINT_FILE).is_file():
        return "interrupted before the run was recorded; rerun the same command to start it"
    how = "with --resume instead of --force" if getattr(args, "force", False) else "with --resume"
    return f"interrupted; finished files are intact: rerun the same command {how} to continue (--force starts over)"


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not raise a second BrokenPipeError."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
