"""CLI commands for studies: ``qsal demo``, ``qsal run`` and ``qsal report`` (registered into ``qsal.cli``)."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

from qsal.cli.arguments import SEED, data_dir_arg, int_range, no_progress_arg, progress_wanted
from qsal.cli.output import print_rows
from qsal.errors import QsalError

_HERE = []  # (name, help, command function), in the order defined


def command(name: str, help: str):
    def wrap(fn):
        _HERE.append((name, help, fn))
        return fn

    return wrap


def _note(args, text: str) -> None:
    """An informative line (a path, a hint) on stderr, so stdout holds only the result; silent with --quiet."""
    if not args.quiet:
        print(text, file=sys.stderr)


@command("demo", "the whole story on one dataset (default: the embedded BreastMNIST): FP32, PTQ-INT8, QAT-INT8, "
         "PACT-4, SGT and SGT+PACT-4, each exported, scored as its ONNX file, timed and explained")
def cmd_demo(args):
    from qsal.study.demo import run_demo

    results = run_demo(dataset=args.dataset, out_dir=args.out, data_dir=args.data_dir, quick=args.quick, seed=args.seed,
                       progress=progress_wanted(args), verbose=not args.quiet, force=args.force, download=args.download)
    _print_report_result(args, results["rows"], results["report"])


def _print_report_result(args, rows: list[dict], report: dict) -> None:
    """The models' results (a table, or JSON rows) after a clean break from any progress output."""
    if args.json:
        print_rows([{k: v for k, v in r.items() if k != "most_changed" and not isinstance(v, dict)} for r in rows], True)
    else:
        sys.stderr.flush()
        print("\n" + report["text_table"] if not args.quiet else report["text_table"])
        if report.get("explanations"):  # whose maps and which method: the columns beside 'ONNX artifact' are not its
            print(f"explanation columns: {report['explanations']}")
    _note(args, f"\nreport: {report['html']}  (markdown: {report['markdown']})")


def _setup_demo(p):
    p.add_argument("--dataset", default="breastmnist", help="dataset to run the story on (see `qsal datasets`)")
    data_dir_arg(p)
    p.add_argument("--out", default="runs/demo", help="output folder (one sub-folder per model, report.html)")
    p.add_argument("--quick", action="store_true",
                   help="a shorter schedule (75 s wall on an idle 2-core Xeon, 114 s on an idle 2-core EPYC; longer "
                        "while other work runs)")
    p.add_argument("--download", action="store_true", help="download the dataset's missing files from the official source")
    p.add_argument("--seed", type=SEED, default=0, help="seed of every stage")
    p.add_argument("--force", action="store_true",
                   help="train every stage anew in --out (needed where a stage's settings changed since the folder "
                        "was written, e.g. by an older qsal); without it finished stages are reused")
    no_progress_arg(p)


def _check_study_out(out: str) -> None:
    """``--out`` must be a new or empty folder or one a study wrote (cell folders ``dataset/model/seedN/method``):
    an empty string ran the study into the working folder, and any other folder was filled without a word."""
    from qsal.study.rundir import LOCK_NAME

    if not str(out).strip():
        raise QsalError("--out is empty; name the study's folder (a new or empty one, or a `qsal run` folder to continue)")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise QsalError(f"--out {out} is a file; a study writes a folder: name a new or empty one, or a `qsal run` "
                        "folder to continue")
    if path.is_dir() and not (path / "run_config.json").is_file() and not any(path.glob("*/*/seed*/*")) \
            and any(p.name != LOCK_NAME for p in path.iterdir()):
        raise QsalError(f"--out {out} holds other files and is not a `qsal run` folder (no run_config.json, no cell "
                        "folders); name a new or empty folder: a study writes dataset/model/seed folders into it")


def _note_refused_data(cfg, chosen) -> None:
    """A note on stderr where a run of the ``chosen`` groups would be refused for its data: the plan stands without
    the data (timed on synthetic images)."""
    from qsal.errors import QsalError
    from qsal.study.runner import require_data

    try:
        require_data(cfg, [g[0].dataset for g in chosen])
    except QsalError as e:
        print(f"note: a run would be refused now: {e}", file=sys.stderr)


@command("run", "run (or resume) a study grid from a YAML config: one folder per cell, failures recorded")
def cmd_run(args):
    from qsal.study.config import load_run_config
    from qsal.study.results import report_run
    from qsal.study.runner import run_study

    if args.no_estimate and not args.dry_run:
        raise QsalError("--no-estimate skips --dry-run's timing; it does nothing without --dry-run (drop it, or add "
                        "--dry-run to see the plan)")
    cfg = load_run_config(args.config)
    _check_study_out(args.out)
    if args.data_dir:  # where the files are, not what the study is: the folder's fingerprint ignores it
        cfg = dataclasses.replace(cfg, data_dir=str(Path(args.data_dir).expanduser().resolve()))
    elif cfg.data_dir and not Path(cfg.data_dir).expanduser().is_dir():  # named as the config's, not as a flag
        raise QsalError(f"data_dir {cfg.data_dir} in {args.config} is not a folder (a relative data_dir is read from "
                        "the config file's folder); point it at the folder that holds the dataset files, or pass "
                        "--data-dir")
    if args.download:  # before the plan and the lock: the files the cells will read
        from qsal.study.runner import require_data

        require_data(cfg, cfg.datasets, download=True)
    if args.dry_run:
        from qsal.study.grid import group_name, plan_groups, select_groups
        from qsal.study.plan import format_plan, plan_study
        from qsal.study.redo import pending

        chosen = select_groups(plan_groups(cfg), args.only)  # a bad pattern is refused before the timed steps
        started = (Path(args.out) / "run_config.json").is_file()
        todo = pending(chosen, Path(args.out), cfg) if started else [c for g in chosen for c in g]
        # a finished study is not timed: its estimate would be of work no run does (33.6 h, then "0 of 54 cells")
        finished = started and not todo
        measure = not args.no_estimate and not finished
        if measure and not args.quiet and sys.stderr.isatty():  # seconds to minutes (ResNet-18 SGT)
            print("timing a few training steps of each model to estimate the time (--no-estimate skips it)...",
                  file=sys.stderr, flush=True)
        plan = plan_study(cfg, measure=measure)
        if args.json:  # the plan for a script: what a run would do, no text around it
            from qsal.cli.output import print_result

            print_result({"study": cfg.name, **plan, "cells_to_run": len(todo), "finished": finished,
                          "groups": [group_name(g) for g in chosen]}, True)
            _note_refused_data(cfg, chosen)
            return
        print(format_plan(plan, cfg.name))
        if finished:
            print(f"every cell {'of the chosen groups ' if args.only else ''}in {args.out} is finished and up to date: "
                  "a run would train or quantize nothing (delete a cell's folder to have a run redo it)")
        if args.only:  # the plan above is the whole study's
            print(f"--only: {len(chosen)} group(s), in this order: " + ", ".join(group_name(g) for g in chosen))
        _print_progress_of(Path(args.out), chosen, cfg)
        _print_time_left(plan, Path(args.out), todo, started, cfg)
        _note_refused_data(cfg, chosen)
        return
    statuses = run_study(cfg, args.out, workers=args.workers, backend=args.backend,
                         ray_address=args.ray_address, force=args.force, progress=progress_wanted(args), only=args.only)
    failed = [s for s in statuses if s["status"].startswith("failed")]
    not_run = [s for s in statuses if s["status"].startswith("not run")]  # children of a failed parent
    if not args.quiet and not args.json:
        sys.stderr.flush()
        print()
        print_rows([{"status": s["status"], "cell": s["id"]} for s in statuses])  # in full: a failure names its fix
    if len(failed) + len(not_run) < len(statuses):
        rep = report_run(args.out)
        _print_report_result(args, rep["rows"], rep)
        for line in rep.get("status_notes", []):
            _note(args, f"note: {line}")
    if failed:
        only = (" --only " + " ".join(shlex.quote(p) for p in args.only)) if args.only else ""
        only += f" --data-dir {shlex.quote(cfg.data_dir)}" if args.data_dir else ""
        waiting = f" and {len(not_run)} more were not run (their parent failed)" if not_run else ""
        print(f"error: {len(failed)} of {len(statuses)} cells failed{waiting} (listed above; each failed cell's "
              f"error.json has the traceback); fix the cause and rerun `qsal run {args.config} --out {args.out}{only}` "
              "to redo only those", file=sys.stderr)
        return 1
    if not_run:  # cannot happen without a failed parent; never a silent success
        return 1


def _print_progress_of(out: Path, groups, cfg) -> None:
    """``--dry-run`` on an existing run folder: how much is finished and which finished cells a run would redo."""
    from qsal.study.folders import cells_on_other_images
    from qsal.study.redo import progress
    from qsal.study.rundir import describe_holder, run_holder
    from qsal.study.runner import config_changes, other_config

    if not (out / "run_config.json").is_file():
        return
    done, total, redo = progress(groups, out, cfg)
    if (pid := run_holder(out)) is not None:
        print(f"{out} is being run now (qsal run, {describe_holder(pid)}): what follows is as of this moment; a "
              "second run there is refused until it ends")
    print(f"{out}: {done} of these {total} cells finished; a run would redo {len(redo)} of them" + (":" if redo else ""))
    if other_config(out, cfg) is not None:
        print(f"  (made by a different config: {config_changes(out, cfg)}; a run there needs --force, which keeps the "
              "finished cells the edit leaves current and redoes those listed)")
    if moved := cells_on_other_images(groups, out, cfg):  # qsal run refuses these without --force
        print(f"  (a study folder's files changed since {len(moved)} of them trained; a run there needs --force, or "
              "restore the folder as it was)")
    for line in redo:
        print(f"  {line}")
    failed = _failed_cells(out, groups)
    if failed:  # unfinished, so not counted above: said, or "redo 0" reads as if a run had nothing to do
        one = len(failed) == 1
        print(f"{len(failed)} {'cell' if one else 'cells'} failed in an earlier run; a run tries {'it' if one else 'them'} "
              "again (fix the cause first):")
        for cell_id, error in failed.items():
            print(f"  {cell_id}: {error}")


def _failed_cells(out: Path, groups) -> dict[str, str]:
    """``{cell id: its error, first line}`` of the unfinished cells of ``groups`` whose last run failed (``error.json``;
    a run removes it when the cell finishes)."""
    from qsal.study.redo import finished
    from qsal.study.rundir import read_json

    failed = {}
    for cell in (c for g in groups for c in g):
        if (out / cell.id / "error.json").is_file() and not finished(out / cell.id):
            try:
                error = read_json(out / cell.id / "error.json", "")
                first = (str(error.get("error", "")).splitlines() or [""])[0]
                failed[cell.id] = f"{error.get('type', 'error')}: {first[:200]}"
            except (QsalError, AttributeError):  # unreadable, or not an object: failed all the same
                failed[cell.id] = "failed (its error.json is unreadable)"
    return failed


def _print_time_left(plan: dict, out: Path, todo: list, started: bool, cfg) -> None:
    """``--dry-run``: the estimate for what a run would do (``todo``: the chosen groups' unfinished and redone cells,
    ``redo.pending``; a cut-off one's remaining epochs only) when that is not the whole study the plan's total is
    about; the part-trained cells. ``started``: ``out`` holds a run (else every chosen cell is to do, none begun)."""
    from qsal.study.plan import cell_epochs, estimate_cells, format_duration
    from qsal.study.redo import under_way

    resumed = under_way(todo, out, cfg) if started else {}
    if "est_seconds" in plan and (len(todo) < plan["n_cells"] or resumed):  # else the plan's total is this run's
        print(f"a run would train or quantize {len(todo)} of the study's {plan['n_cells']} cells"
              + (f": ~{format_duration(estimate_cells(plan, todo, resumed))} of training on this machine (same "
                 "measurement" + (", only the epochs left of cells part-trained" if resumed else "") + ")" if todo else ""))
    by_id = {c.id: c for c in todo}
    for cell_id, epochs in resumed.items():
        print(f"  {cell_id}: {epochs} of {cell_epochs(plan, by_id[cell_id])} epochs trained (its last.pt); a run "
              "continues from there")


def _setup_run(p):
    p.add_argument("config", help="study YAML (see configs/)")
    p.add_argument("--out", default="runs/study", help="run directory (one folder per cell, report.html)")
    p.add_argument("--workers", type=int_range(1, 256, "a worker count"), default=1,
                   help="local worker processes (cell groups run in parallel)")
    p.add_argument("--backend", default="local", choices=["local", "ray"], help="where cell groups run")
    p.add_argument("--ray-address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--force", action="store_true", help="reuse a run directory made by a different config")
    p.add_argument("--only", nargs="+", metavar="PATTERN",
                   help="run only the cell groups (dataset/model/seedN) matching these shell patterns (fnmatch: * also "
                        "matches /), in this order: --only 'pneumoniamnist/*/seed1' '*' runs everything, that seed "
                        "first (the local backend starts groups in this order; Ray may not)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells and each one's schedule with an estimated time (a few timed steps); with the --out "
                        "of an existing run: how many are finished and which finished cells a run would redo; train nothing")
    p.add_argument("--no-estimate", action="store_true",
                   help="with --dry-run: skip the timed steps (no time estimate; the plan is instant)")
    p.add_argument("--data-dir", help="data root, over the config's data_dir (default: the config's, then "
                                      "$QSAL_DATA_DIR, then ~/.medmnist)")
    p.add_argument("--download", action="store_true",
                   help="download the study's missing dataset files from the official source first")
    no_progress_arg(p)


_REPORT_OUT = "runs/report"


@command("report", "markdown + self-contained HTML report of a `qsal run` folder, or of checkpoints and ONNX files you "
                   "name (each scored on its dataset's test split)")
def cmd_report(args):
    try:
        rep = _report(args)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("interrupted; no report was written (an earlier one is as it was): rerun "
                                "`qsal report`") from None
    _print_report_result(args, rep["rows"], rep)
    for line in rep.get("status_notes", []):
        _note(args, f"note: {line}")


def _report(args) -> dict:
    from qsal.study.files import report_files
    from qsal.study.results import report_run

    paths = [Path(p) for p in args.inputs]
    runs = [p for p in paths if (p / "run_config.json").is_file()]
    if len(paths) == 1 and runs:
        if args.out is not None and Path(args.out).resolve() != paths[0].resolve():
            raise QsalError(f"a `qsal run` folder's report is written inside it ({paths[0] / 'report.md'}), not into "
                            f"--out {args.out}; drop --out (copy the run folder first to keep its current report)")
        given = [flag for flag, value in (("--n-explain", args.n_explain), ("--no-latency", args.no_latency or None),
                                          ("--data-dir", args.data_dir)) if value is not None]
        if given:  # a run folder's report shows what its cells measured: nothing is measured here
            raise QsalError(f"{', '.join(given)} set(s) how a report of files is measured (the data it scores, the "
                            "images it explains, latency); a run folder's report shows what its cells measured (its "
                            "config's data_dir and measure): drop "
                            f"{'it' if len(given) == 1 else 'them'}, or edit the config and rerun `qsal run`")
        rep = report_run(paths[0])
    elif runs:
        raise QsalError(f"{runs[0]} is a `qsal run` folder, which is reported on its own: `qsal report {runs[0]}`; "
                        "to compare models across runs, name their best.safetensors or model.onnx files")
    elif (Path(out := args.out or _REPORT_OUT) / "run_config.json").is_file():
        raise QsalError(f"--out {out} is a `qsal run` folder; its report.md belongs to that run: choose another "
                        "--out for this report")
    else:
        rep = report_files(paths, out, data_dir=args.data_dir, latency=not args.no_latency,
                           n_explain=args.n_explain or 8, progress=not args.quiet)
    return rep


def _setup_report(p):
    p.add_argument("inputs", nargs="+", metavar="PATH",
                   help="a `qsal run` folder, or checkpoints (.safetensors) / ONNX files (.onnx) / folders holding "
                        "best.safetensors or model.onnx; the first is the reference the others' maps are compared to")
    p.add_argument("--out", help=f"output folder for a report of files (default: {_REPORT_OUT}); a run folder's "
                                 "report is written inside it")
    p.add_argument("--data-dir", help="data root of the files' dataset (default: $QSAL_DATA_DIR, then ~/.medmnist; "
                   "BreastMNIST 28 px is embedded); files only: a run folder's report shows what its cells measured")
    p.add_argument("--n-explain", type=int_range(1, 256, "the number of images"), default=None,
                   help="test images explained per model (1-256; default 8); files only: a run folder's report shows "
                        "what its cells measured")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement (faster; files only)")


def register(command, setup: dict) -> None:
    for name, help_text, fn in _HERE:
        command(name, help_text)(fn)
        setup[name] = globals()[f"_setup_{name}"]
