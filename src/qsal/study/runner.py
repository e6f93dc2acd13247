"""``qsal run CONFIG.yaml``: a study grid as independent, resumable cells.

The cells and their groups are ``study.grid``'s; one cell's work is ``study.cell.run_cell``. Groups run in
parallel on local processes (``workers``) or on a Ray cluster, each group's cells in order in one worker. A
finished cell is skipped on rerun, a killed one resumes its training (or starts over where that cannot continue:
``run_folder.CannotResume``, a parent trained again since), a failed one records ``error.json`` (and its
children are not run from what it left)
and the others go on. One ``qsal run`` holds a run folder at a time (``rundir.run_lock``);
``qsal run`` exits non-zero when a cell failed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from qsal._atomic import write_json_atomic
from qsal._signals import sigterm_as_interrupt
from qsal.errors import QsalError
from qsal.provenance import usable_cpus
from qsal.run_folder import CannotResume
from qsal.study.cell import agreement_with_fp32, log, run_cell
from qsal.study.config import RunConfig, load_run_config, parse_run_config
from qsal.study.config_checks import changed_settings
from qsal.study.folders import cells_on_other_images
from qsal.study.grid import CellSpec, expected_configs, expected_schedules, plan_groups, select_groups
from qsal.study.redo import cells_to_redo, clear_cell, made_at, read_results, read_schedules, weights_kept
from qsal.study.rundir import read_json, run_lock

__all__ = ["run_study", "run_group", "other_config", "config_changes"]


@contextlib.contextmanager
def _stderr_into_log(cell: Path):
    """What a cell's training writes to stderr (one plain line per epoch, notes) appended to its ``log.txt``: an
    hours-long cell shows how far it is there (``tail -f``), and a run's own output stays one line per cell."""
    cell.mkdir(parents=True, exist_ok=True)
    with open(cell / "log.txt", "a", encoding="utf-8") as f, contextlib.redirect_stderr(f):
        yield


def run_group(group: list[dict], run_dir: str, cfg_dict: dict, threads: int, on_cell=None) -> list[dict]:
    """Run one group's cells in order; returns ``{"id", "status"}`` per cell. Never raises for a cell.
    ``on_cell(status)`` is called as each cell ends (in-process runs: a line per cell, not per group); each cell's
    epochs are logged into its ``log.txt`` (cells never draw bars)."""
    import torch

    torch.set_num_threads(threads)
    cfg = parse_run_config(cfg_dict)
    run_path = Path(run_dir)
    specs = [CellSpec(**g) for g in group]
    statuses: list[dict] = []

    def record(status: dict) -> None:
        statuses.append(status)
        if on_cell is not None:
            on_cell(dict(status))

    # kept current below: only the cell being run changes its result.json (the agreement step after it rewrites the
    # same file with map-agreement fields, none of which a redo decision reads)
    results = read_results(specs, run_path)
    expected, schedules, measure = expected_configs(specs, cfg), expected_schedules(specs, cfg), asdict(cfg.measure)
    recorded = read_schedules(specs, run_path)  # the same: only the cell being run rewrites its run.json
    for spec in specs:
        cell = run_path / spec.id
        try:
            if spec.parent is not None and results[spec.parent] is None:
                # its parent failed in this run (the group runs parents first): no model to start from, only a
                # half-trained best.safetensors maybe; a finished child stays as it is, as for a failed retrain
                record({"id": spec.id, "status": "skipped (finished earlier)" if results[spec.label] is not None
                                 else f"not run: its parent {spec.parent} did not finish"})
                continue
            # asked as each cell is reached: a child is redone once its parent has been retrained, not before
            redo = cells_to_redo(specs, run_path, results, expected, schedules, recorded, measure).get(spec.label)
            kept_model = None  # when the cell's model was made, for a cell only measured again
            if redo is not None and redo.remeasure and weights_kept(spec, cell):
                kept_model = made_at(results[spec.label])
                log(cell, redo.reason)
            elif redo is not None and not redo.after_parent:
                results[spec.label] = None  # first: a clear_cell that fails half-way has removed result.json
                clear_cell(cell)  # its run.json may name another parent path or method version: start afresh
                log(cell, redo.reason + (" (its weights are not all here: training it again)" if redo.remeasure
                                         else ""))
            elif results[spec.label] is not None:
                record({"id": spec.id, "status": "skipped (finished earlier)"})
                continue
            try:
                try:
                    with _stderr_into_log(cell):
                        run_cell(spec, cfg, run_path, True, made_at=kept_model)
                except CannotResume as e:
                    # Cut off earlier and made from another parent (retrained since) or with other settings (--force
                    # over an edited config): what it trained cannot be continued, and the study wants the cell made
                    # from what it has now, as it redoes a finished child of a retrained parent.
                    clear_cell(cell)
                    log(cell, f"cut off earlier, and {e.why}: starting it over")
                    with _stderr_into_log(cell):
                        run_cell(spec, cfg, run_path, True)
            finally:  # finished, or failed (no result.json: a failed retrain leaves its children alone)
                results[spec.label] = read_results([spec], run_path)[spec.label]
                recorded.update(read_schedules([spec], run_path))
            (cell / "error.json").unlink(missing_ok=True)
            if spec.kind != "fp32":  # now, not only at the group's end: a run stopped by a time limit keeps it
                agreement_with_fp32([specs[0], spec], run_path)
            record({"id": spec.id, "status": "done"})
        except Exception as e:  # noqa: BLE001 - a failed cell is recorded and the study goes on
            cell.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cell / "error.json", {"error": str(e), "type": type(e).__name__,
                                                     "traceback": traceback.format_exc()})
            record({"id": spec.id, "status": f"failed: {type(e).__name__}: {e}"})
    problems = agreement_with_fp32(specs, run_path)
    for s in statuses:
        if s["id"] in problems:
            s["status"] = f"failed: QsalError: {problems[s['id']]}"
    return statuses


def run_study(config: str | Path | RunConfig, run_dir: str | Path, *, workers: int = 1, backend: str = "local",
              ray_address: str | None = None, force: bool = False, progress: bool = True,
              only: list[str] | None = None) -> list[dict]:
    """Run (or resume) every cell of a study into ``run_dir``; returns the per-cell statuses.

    ``only``: shell patterns on group names ``dataset/model/seedN`` (``select_groups``): run those groups only,
    in the patterns' order; finished cells are skipped as always, and the folder's config check is unchanged.

    ``progress``: one study bar on a terminal (cells log into their own ``log.txt``, a line per epoch, so bars
    never nest), one plain line per finished cell otherwise (as each ends; with several workers, as its group
    ends). Holds the folder's lock throughout: a second run
    on the same folder raises ``QsalError`` at once.
    """
    cfg = config if isinstance(config, RunConfig) else load_run_config(config)
    run_dir = Path(run_dir)
    if backend == "ray":  # refused before the folder is touched
        try:
            import ray  # noqa: F401
        except ImportError:
            raise QsalError("the Ray backend needs ray: pip install 'qsal[ray]'") from None
    groups = select_groups(plan_groups(cfg), only)  # a bad pattern is refused before the folder is touched
    require_data(cfg, [g[0].dataset for g in groups if _has_work(g, run_dir, cfg)])
    with run_lock(run_dir):
        return _run_locked(cfg, run_dir, workers, backend, ray_address, force, progress, groups)


def _has_work(group: list[CellSpec], run_dir: Path, cfg: RunConfig) -> bool:
    results = read_results(group, run_dir)
    return None in results.values() or bool(cells_to_redo(group, run_dir, results, expected_configs(group, cfg),
                                                          expected_schedules(group, cfg), measure=asdict(cfg.measure)))


def require_data(cfg: RunConfig, datasets: Iterable[str], download: bool = False) -> None:
    """Refuse a study whose data is not there before any cell starts (else every cell would fail alone): every split
    the cells load, of each of ``datasets`` (the runner passes those of the groups with work left, so a finished study
    reruns without its data). ``download=True`` (``qsal run --download``) fetches missing files from the official
    source instead."""
    from qsal.data import load_split
    from qsal.data.folder import ImageTooSmall

    for name in dict.fromkeys(datasets):
        for split in ("train", "test"):  # val comes from train (MNIST, CIFAR-10) or beside test (MedMNIST's one file)
            # QsalError naming the folder searched and how to get the files
            try:
                load_split(cfg.dataset_source(name), split, cfg.data_dir, size=cfg.dataset_size(name), download=download)
            except ImageTooSmall as e:  # named with the setting to change
                raise ImageTooSmall(e.path, e.width, e.height, e.size, f"folders.{name}.size in the config") from None
            except QsalError as e:
                if name not in cfg.folders:
                    raise
                # an image the loader refuses (unreadable) is named with its study dataset
                raise QsalError(f"{e} (study dataset {name}: folders.{name} in the config, size "
                                f"{cfg.dataset_size(name)} px)") from None


def other_config(run_dir: Path, cfg: RunConfig) -> str | None:
    """The fingerprint of the config that made ``run_dir`` when it is not ``cfg``'s (``None``: same, or no folder)."""
    stamp = run_dir / "run_config.json"
    if not stamp.is_file():
        return None
    old = read_json(stamp, "delete it to adopt the folder for this config (finished cells stay), or choose another --out")
    return None if old.get("fingerprint") == cfg.fingerprint() else str(old.get("fingerprint"))


def config_changes(run_dir: Path, cfg: RunConfig) -> str:
    """The settings ``cfg`` changes from the config that made ``run_dir`` (``changed_settings``: the first four, and
    how many more), for a message; the fingerprints where no setting reads differently (another qsal's recipe)."""
    recorded = read_json(run_dir / "run_config.json", "")
    changes = changed_settings(recorded.get("config") or {}, cfg)
    if not changes:
        return f"fingerprint {recorded.get('fingerprint')} vs {cfg.fingerprint()}"
    return ", ".join(changes[:4]) + (f" and {len(changes) - 4} more" if len(changes) > 4 else "")


def _run_locked(cfg: RunConfig, run_dir: Path, workers: int, backend: str, ray_address: str | None, force: bool,
                progress: bool, groups: list[list[CellSpec]]) -> list[dict]:
    from tqdm import tqdm

    stamp = run_dir / "run_config.json"
    if other_config(run_dir, cfg) is not None and not force:
        raise QsalError(f"{run_dir} was made by a different config ({config_changes(run_dir, cfg)}); --dry-run with "
                        "this --out lists the finished cells a run would redo, and --force runs the study there (the "
                        "finished cells the change leaves current are kept); or choose another --out")
    if not force and (moved := cells_on_other_images(groups, run_dir, cfg)):
        one = len(moved) == 1
        raise QsalError(f"{len(moved)} finished cell{'' if one else 's'} in {run_dir} {'was' if one else 'were'} "
                        f"trained on other images than the study's folder holds now (files added, removed, renamed or "
                        f"overwritten since, or the folder's path names another folder; {'' if one else 'first '}"
                        f"{moved[0]}): restore the folder as it was, or pass --force to "
                        f"train {'it' if one else 'them'} and the cells made from {'it' if one else 'them'} again on "
                        "the folder as it is")
    write_json_atomic(stamp, {"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()})
    n_cells = sum(len(g) for g in groups)
    # taskset -c 0 qsal run ... trains on 1 thread; --only one/group --workers 4 gives that group every core
    threads = max(1, usable_cpus() // max(1, min(workers, len(groups))))
    payload = [([asdict(c) for c in g], str(run_dir), cfg.to_dict(), threads) for g in groups]
    statuses: list[dict] = []
    on_terminal = progress and sys.stderr.isatty()
    bar = tqdm(total=n_cells, desc=f"study {cfg.name}", disable=not on_terminal, unit="cell")

    shown: dict[str, tuple[int, str]] = {}  # cell id -> (its number, the status its line gave)

    def show(s: dict) -> None:
        """One line per cell as it ends (a bar step on a terminal), numbered in the order they end; a status that
        changes later (map agreement checked at the group's end) is a line under the cell's own number."""
        number, before = shown.get(s["id"], (len(shown) + 1, None))
        if before == s["status"]:
            return
        if before is None:
            bar.update(1)
        shown[s["id"]] = (number, s["status"])
        if progress and not on_terminal:
            print(f"[{number}/{n_cells}] {'now ' if before else ''}{s['status']}: {s['id']}", file=sys.stderr, flush=True)

    def finished(res: list[dict]) -> None:
        statuses.extend(res)
        # as each group ends, not only at the run's end: a run stopped after hours still says what it finished
        write_json_atomic(run_dir / "statuses.json", _merged_statuses(run_dir, cfg, statuses))
        for s in res:  # cells not shown yet (workers report a group at its end), or whose status changed since
            show(s)

    if backend == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(address=ray_address, num_cpus=None if ray_address else workers, include_dashboard=False,
                     log_to_driver=False)
        remote = ray.remote(run_group)
        pending = [remote.remote(*p) for p in payload]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            finished(ray.get(ready[0]))
    elif workers > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with _safe_path_env(), sigterm_as_interrupt():
            pool = ProcessPoolExecutor(max_workers=workers)
            try:
                futures = [pool.submit(run_group, *p) for p in payload]
                for f in as_completed(futures):
                    finished(f.result())
            except BaseException:  # Ctrl-C or `kill` on this process alone: end the workers too, or they train on
                _end_workers(pool)  # for hours, orphaned, holding the folder's lock
                raise
            pool.shutdown()
    else:
        with sigterm_as_interrupt():  # `kill` ends it as Ctrl-C does (one line, exit 130), as with workers
            for p in payload:
                finished(run_group(*p, on_cell=show))
    bar.close()
    return statuses


def _merged_statuses(run_dir: Path, cfg: RunConfig, statuses: list[dict]) -> list[dict]:
    """Every planned cell's latest status: this run's, and an earlier run's for the groups it did not run (``--only``
    replaced the file with its own groups while the report counted all), in plan order."""
    import json

    try:  # a list (read_json takes objects); unreadable: only this run's
        earlier = json.loads((run_dir / "statuses.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = []
    latest = {s["id"]: s for s in earlier if isinstance(s, dict) and isinstance(s.get("id"), str)} \
        if isinstance(earlier, list) else {}
    latest.update({s["id"]: s for s in statuses})
    return [latest[c.id] for g in plan_groups(cfg) for c in g if c.id in latest]


def _end_workers(pool) -> None:
    """Stop a process pool's workers now (their cells keep what they saved: a rerun resumes them)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _safe_path_env():
    """Where worker processes start a fresh interpreter (spawn/forkserver: macOS, Windows, Python >= 3.14),
    ``PYTHONSAFEPATH`` keeps the working directory off its import path while it boots."""
    old = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = old
