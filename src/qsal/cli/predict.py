"""``qsal predict MODEL PATH...``: class probabilities and the decided label for new image files."""

from __future__ import annotations

import sys
from pathlib import Path

from qsal.cli.arguments import int_range
from qsal.cli.output import check_out, note_unfinished


def cmd_predict(args):
    from qsal._atomic import write_text_atomic
    from qsal.errors import QsalError
    from qsal.predict import format_predictions, image_files, load_predictor, predict_paths

    suffix = Path(args.out).suffix.lower() if args.out else None
    if suffix not in (None, ".csv", ".json") and not args.format:
        raise QsalError(f"--out {args.out}: name the file .csv or .json, or pass --format csv|json")
    if args.json and suffix == ".csv" and args.format != "json":  # JSON text in a .csv file reads as a broken CSV
        raise QsalError(f"--json asks for JSON but --out {args.out} names a CSV file; name it .json, or drop --json")
    if args.json and args.format == "csv":
        raise QsalError("--json asks for JSON but --format csv for CSV; pass one of them")
    if args.format and suffix in (".csv", ".json") and suffix != f".{args.format}":
        raise QsalError(f"--format {args.format} but --out {args.out} names a {suffix[1:].upper()} file; name it "
                        f".{args.format}, or drop --format")
    fmt = args.format or ("json" if args.json or suffix == ".json" else "csv")
    predictor = load_predictor(args.model, args.threads)  # a broken model is named before the images are listed
    note_unfinished(args.model, args.quiet)
    files = image_files(args.paths)
    if args.out:  # checked before any image is scored
        check_out(args.out, {args.model: "the model", **{f: "one of the images" for f in files if f != args.model}},
                  args.force, example="predictions.csv")
    result = predict_paths(predictor, files, skip_unreadable=args.skip_unreadable)
    text = format_predictions(result, fmt)
    if result["skipped"]:  # even with --quiet: the output lacks these images, and must not look complete
        print(f"skipped {len(result['skipped'])} of {len(files)} images that could not be read or used (not in "
              "the output"
              + (f"; listed under 'skipped' in {args.out}" if fmt == "json" and args.out else "") + "):",
              file=sys.stderr)
        for s in result["skipped"]:
            print(f"  {s['reason']}", file=sys.stderr)
    if args.out:
        write_text_atomic(args.out, text)
        if not args.quiet:  # stdout holds only results
            print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text, end="")


def _setup_predict(p):
    p.add_argument("model", help="an .onnx file from qsal export (runs without PyTorch) or a .safetensors checkpoint")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or glob patterns "
                   "(PNG/JPEG/BMP/TIFF/DICOM)")
    p.add_argument("--out", help="write to this file (default: CSV on stdout); an existing file only with --force")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.add_argument("--format", choices=["csv", "json"], help="output format (default: json with --json or an --out "
                   "ending in .json, else csv)")
    p.add_argument("--skip-unreadable", action="store_true", help="score the images that can be read and list the "
                   "others (unreadable, blank, too small, several frames) with the reason on stderr and under 'skipped' "
                   "in JSON; default: such an image stops the batch")
    p.add_argument("--threads", type=int_range(0, 1024, "a thread count"), default=None,
                   help="onnxruntime threads (0 or default: all cores, as in qsal bench)")


def register(command, setup: dict) -> None:
    command("predict", "predict new images: class probabilities and the label at the model's stored operating point"
            )(cmd_predict)
    setup["predict"] = _setup_predict
