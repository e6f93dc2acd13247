"""What a rerun of ``qsal run`` redoes besides unfinished cells, so every row descends from what it claims.

- A finished FP32/SGT parent whose ``best.safetensors`` is gone (a fresh checkout keeps results, not weights) while
  a quantized cell of its group still needs it is trained again, same seed and schedule.
- A finished child older than its parent (``result.json`` times) is redone from it: a retrained model is a new
  model (GPU and CPU runs, for one, are not bit-identical), and the group reports the new one. Decided from the files
  as each cell is reached, so a run stopped mid-way loses nothing, and a failed retrain leaves the children alone.
- A finished quantized cell made by an older version of its method (``PACTConfig.version``...) is redone from
  scratch: a row must not mix two definitions of a method.
- A finished cell trained on another schedule than the study's now (its ``run.json``: a study config edited and
  rerun with ``--force``) is redone, and a parent's children after it: a table labelled with one schedule must not
  hold cells trained on another.
- A finished cell measured with other ``measure:`` settings (``n_explain``, ``latency``, ``saliency``: its
  ``result.json``'s ``measure``) is measured again from its own weights where they are all there (``last.pt`` of a
  finished training resumes with nothing left to train), else trained again: a row's mean must not average maps of 8
  and of 24 images, nor take its latency from one seed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from qsal.errors import QsalError
from qsal.study.folders import other_images
from qsal.study.grid import CellSpec, expected_configs, expected_schedules, folder_content, group_name
from qsal.study.rundir import read_json

__all__ = ["Redo", "cells_to_redo", "clear_cell", "finished", "made_at", "older_than_parent", "other_measures",
           "other_schedule", "outdated", "parent_made_at", "pending", "progress", "read_results", "read_schedules",
           "recorded_quant_config", "stale_results", "started_on_other_images", "under_way", "weights_kept"]


@dataclass(frozen=True)
class Redo:
    reason: str  # appended to the cell's log.txt
    # redone once its parent's retraining has finished (then ``older_than_parent`` says so); for --dry-run only
    after_parent: bool = False
    # only measured again (its weights kept, the time it was made kept: its children stay its children)
    remeasure: bool = False


def _result(cell: Path) -> dict | None:
    """A cell's ``result.json`` as read back (``None``: unfinished, or truncated and so redone). A file the report
    would refuse (``results._read_result``: ``{}``, a field missing or of the wrong type, a measurement that is not a
    finite number) is not a finished cell either: the run redoes it rather than leave a report that cannot be written."""
    from qsal.study.results import check_result

    try:
        return check_result(read_json(cell / "result.json", ""), cell / "result.json", cell.parents[3])
    except QsalError:
        return None


def finished(cell: Path) -> bool:
    """A cell is finished when its ``result.json`` reads back as a result (a truncated one is redone)."""
    return _result(cell) is not None


def read_results(specs: list[CellSpec], run_dir: Path) -> dict[str, dict | None]:
    """``{label: result.json as read back, or None}`` for the cells ``specs``: one read of each file, for the callers
    that decide several things from the same results (``cells_to_redo``, ``progress``, the runner's group loop)."""
    return {s.label: _result(run_dir / s.id) for s in specs}


def recorded_quant_config(cell: Path, result: dict) -> dict | None:
    """The quantization config a finished cell was made with, as recorded: its ``result.json``'s ``quant_config``,
    else (folders from before the runner recorded it there) its ``best.json``'s ``quant``; ``None`` when neither
    names a version (a float cell, or a folder older still)."""
    recorded = result.get("quant_config")
    if not (isinstance(recorded, dict) and recorded.get("version") is not None):
        try:
            recorded = read_json(cell / "best.json", "").get("quant")
        except QsalError:
            recorded = None
    return recorded if isinstance(recorded, dict) and recorded.get("version") is not None else None


def outdated(spec: CellSpec, cell: Path, result: dict, expected: dict | None = None) -> str | None:
    """Why a finished quantized cell (``result``: its ``result.json``) is out of date: its method's version changed
    since it was made, or (``expected``: the ``to_dict()`` of the config the study would use now) it was made with
    other options (a study's ``pact:`` edited since); ``None`` when current, or when the cell does not say (folders
    before the runner recorded ``quant_config`` in ``result.json`` have it in ``best.json``; older still, nowhere:
    kept, not guessed)."""
    if spec.parent is None:
        return None
    from qsal.quant import PACTConfig, PTQConfig, QATConfig
    from qsal.quant.config import canonical_config

    current = {"ptq": PTQConfig, "qat": QATConfig, "pact": PACTConfig, "sgt+pact": PACTConfig}[spec.kind]
    recorded = recorded_quant_config(cell, result)
    made = recorded.get("version") if isinstance(recorded, dict) else None
    if made is None:
        return None
    if made != current.version:
        return f"made by {current.method} version {made}; this qsal makes version {current.version}: redoing it"
    mine = canonical_config(recorded) if expected is not None else None
    if mine is None:  # nothing to compare with, or a record this qsal cannot read back: kept
        return None
    changed = sorted(k for k in set(mine) | set(expected) if k != "version" and mine.get(k) != expected.get(k))
    if not changed:
        return None
    return (f"made with other {current.method} options than this study's ("
            + ", ".join(f"{k}: {mine.get(k)!r} -> {expected.get(k)!r}" for k in changed) + "): redoing it")


def read_schedules(specs: list[CellSpec], run_dir: Path) -> dict[str, dict | None]:
    """``{label: the config its run.json records, or None}`` for the cells of ``specs`` that train (PTQ trains
    nothing): one read of each file, as ``read_results``; ``None`` when missing or unreadable."""
    out = {}
    for s in specs:
        if s.kind == "ptq":
            continue
        try:
            recorded = read_json(run_dir / s.id / "run.json", "").get("config")
        except (QsalError, AttributeError):
            recorded = None
        out[s.label] = recorded if isinstance(recorded, dict) else None
    return out


def other_schedule(recorded: dict | None, expected: dict | None) -> str | None:
    """Why a finished cell was trained on another schedule than ``expected`` (``grid.expected_schedules``: what it
    would record now); ``recorded``: the config its ``run.json`` holds (``read_schedules``). ``None`` when the same,
    when nothing is expected (PTQ), or when the cell does not say (no readable ``run.json``: kept, not guessed). A
    setting the record lacks (a field added to ``TrainConfig`` after the cell was made) is not compared: the cell ran
    that field's behaviour of its time."""
    if expected is None or recorded is None:
        return None
    from qsal.run_folder import flat_settings

    # tuples read back as lists
    mine, now = (flat_settings(c, keep_null=True) for c in (recorded, json.loads(json.dumps(expected, default=str))))
    changed = sorted(k for k in set(mine) & set(now) if mine[k] != now[k])
    if not changed:
        return None
    return ("trained on another schedule than this study's ("
            + ", ".join(f"{k}: {mine[k]!r} -> {now[k]!r}" for k in changed[:4])
            + (f" and {len(changed) - 4} more" if len(changed) > 4 else "") + "): redoing it")


def other_measures(result: dict, expected: dict | None) -> str | None:
    """Why a finished cell's measurements are not the study's now: its ``result.json`` records other ``measure``
    settings than ``expected`` (``asdict(cfg.measure)``); ``None`` when the same, or when the cell does not say
    (made before ``measure`` was recorded: kept, not guessed)."""
    recorded = result.get("measure")
    if expected is None or not isinstance(recorded, dict):
        return None
    changed = sorted(k for k in expected if k in recorded and recorded[k] != expected[k])
    if not changed:
        return None
    return ("measured with other settings than this study's ("
            + ", ".join(f"{k}: {recorded[k]!r} -> {expected[k]!r}" for k in changed) + "): measuring it again")


def made_at(result: dict | None) -> str | None:
    """When a finished cell's model was made: its ``made_at`` (kept when the cell is only measured again), else its
    result's UTC ISO time (``None`` when unfinished or unrecorded)."""
    if result and isinstance(result.get("made_at"), str):
        return result["made_at"]
    env = result.get("environment") if result else None
    return env.get("utc") if isinstance(env, dict) and isinstance(env.get("utc"), str) else None


def parent_made_at(spec: CellSpec, run_dir: Path) -> str | None:
    """When the finished parent of a quantized cell was made (``None``: no parent, or not finished)."""
    return None if spec.parent is None else made_at(_result(run_dir / spec.id.rsplit("/", 1)[0] / spec.parent))


def older_than_parent(spec: CellSpec, result: dict, parent_result: dict | None) -> str | None:
    """Why a finished quantized cell descends from a model that is gone: its FP32/SGT parent finished after it (it was
    trained again). Decided from the two results (``result.json`` of the cell and of its parent), so a run stopped
    between the parent's retraining and its children's redo still redoes them next time."""
    theirs = made_at(parent_result)
    if spec.parent is None or theirs is None:
        return None
    recorded = result.get("parent_made_at")
    if isinstance(recorded, str):  # the parent this cell was made from: exact, whatever the machines' clocks
        if recorded == theirs:
            return None
    else:  # cells made before that field: compare the times
        mine = made_at(result)
        if mine is None or mine >= theirs:
            return None
    return f"its parent {spec.parent} was trained again after this cell was made: redoing it from the new parent"


def cells_to_redo(specs: list[CellSpec], run_dir: Path, results: dict[str, dict | None] | None = None,
                  expected: dict[str, dict] | None = None, schedules: dict[str, dict] | None = None,
                  recorded: dict[str, dict | None] | None = None, measure: dict | None = None) -> dict[str, Redo]:
    """``{label: Redo}`` for the finished cells of one (dataset, model, seed) group that a run does again. The runner
    asks again as it reaches each cell, so a child is redone only once its parent has been retrained successfully.
    ``specs`` is a whole group (``plan_groups``: every parent is in it); ``results`` its ``read_results`` where the
    caller has them (else each cell's ``result.json`` is read here, once). ``expected``: ``{label: quant config
    to_dict()}`` the study would make now (``grid.expected_configs``); without it only versions are compared.
    ``schedules``: ``grid.expected_schedules`` (without it schedules are not compared); ``recorded``: the group's
    ``read_schedules`` where the caller has them; ``measure``: the study's ``asdict(cfg.measure)`` (without it
    measurements are not compared)."""
    results = read_results(specs, run_dir) if results is None else results
    if schedules is not None and recorded is None:
        recorded = read_schedules(specs, run_dir)
    done = {label for label, r in results.items() if r is not None}
    old = {s.label: why for s in specs if s.label in done
           and (why := outdated(s, run_dir / s.id, results[s.label], (expected or {}).get(s.label))
                or other_schedule((recorded or {}).get(s.label), (schedules or {}).get(s.label))
                or other_images(results[s.label], (schedules or {}).get(s.label))
                or older_than_parent(s, results[s.label], results.get(s.parent)))}
    needed = {s.parent for s in specs if s.parent and (s.label in old or s.label not in done)}
    unusable = {s.label: why for s in specs if s.kind in needed and s.label in done and s.label not in old
                and (why := _unusable_checkpoint(run_dir / s.id))}
    retrain = set(unusable) | {s.label for s in specs if s.parent is None and s.label in old}
    redo = {s.label: Redo(f"its parent {s.parent} is being trained again: redoing this cell from the new parent",
                          after_parent=True) for s in specs if s.parent in retrain and s.label in done}
    redo.update({s.label: Redo(why, remeasure=True) for s in specs if s.label in done and s.label not in redo
                 and s.label not in old and (why := other_measures(results[s.label], measure))})
    redo.update({label: Redo(why) for label, why in old.items()})
    redo.update({label: Redo(f"{why} and a quantized cell of this group still needs it: training it again")
                 for label, why in unusable.items()})
    return {s.label: redo[s.label] for s in specs if s.label in redo}  # in the group's order: parents first


def stale_results(groups: list[list[CellSpec]], run_dir: Path, cfg) -> dict[str, str]:
    """``{cell id: why}`` for the finished cells whose result is not what the study's config ``cfg`` makes now: made
    by another version or options of its method, trained on another schedule, measured with other ``measure``
    settings, descended from a parent trained again since, or from a parent that is itself stale. A report leaves them
    out of its means and names them (a row labelled with one schedule must not average cells of another); a rerun
    redoes them (``cells_to_redo``). Weights are not looked at: a folder of committed results keeps none."""
    from dataclasses import asdict

    out: dict[str, str] = {}
    for g in groups:
        results, recorded = read_results(g, run_dir), read_schedules(g, run_dir)
        expected, schedules = expected_configs(g, cfg), expected_schedules(g, cfg)
        stale: dict[str, str] = {}
        for s in g:  # parents come before their children in a group
            result = results[s.label]
            if result is None:
                continue
            why = (outdated(s, run_dir / s.id, result, expected.get(s.label))
                   or other_schedule(recorded.get(s.label), schedules.get(s.label))
                   or other_images(result, schedules.get(s.label))
                   or older_than_parent(s, result, results.get(s.parent))
                   or (f"made from {s.parent}, which is out of date" if s.parent in stale else None)
                   or other_measures(result, asdict(cfg.measure)))
            if why:
                # as a report says it: what is wrong, not what a run does about it
                stale[s.label] = why.rsplit(": ", 1)[0] if why.endswith(("redoing it", "measuring it again",
                                                                         "redoing it from the new parent")) else why
        out.update({f"{group_name(g)}/{label}": why for label, why in stale.items()})
    return out


def weights_kept(spec: CellSpec, cell: Path) -> bool:
    """Whether a finished cell can be measured again from its own model: its weights, and for a cell that trained,
    the ``last.pt`` of its finished training (a resume with nothing left to train; without it the run would train
    afresh). A PTQ cell is calibrated again from its parent, with the same seed's images."""
    if spec.kind == "ptq":
        return (cell.parent / spec.parent / "best.safetensors").is_file()
    return (cell / "best.safetensors").is_file() and (cell / "last.pt").is_file()


def _unusable_checkpoint(cell: Path) -> str | None:
    """Why a finished parent's checkpoint cannot start its children (``None``: it can): missing, or its
    ``best.json`` damaged (every rerun's child failed on it while the parent counted as finished)."""
    weights = cell / "best.safetensors"
    if not weights.is_file():
        return "checkpoint missing (a fresh checkout keeps results, not weights)"
    return checkpoint_damage(weights)


def checkpoint_damage(weights: Path) -> str | None:
    """What keeps a child from loading the checkpoint ``weights`` (``None``: nothing): checked as a child loads it,
    ``best.json`` beside it and valid, the weights' header whole (reads no tensor data)."""
    from qsal.checkpoint import read_meta, resolve_checkpoint_path

    try:
        read_meta(resolve_checkpoint_path(weights))
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            f.keys()
    except QsalError:
        return "its best.json is missing or damaged"
    except Exception:  # noqa: BLE001 - safetensors' own errors: a cut-off or foreign file
        return "its best.safetensors is damaged"
    return None


def _group_state(g: list[CellSpec], run_dir: Path, cfg) -> tuple[dict[str, dict | None], dict[str, Redo]]:
    """One group's results as read back and the finished cells a run would redo (``cfg``: to compare options)."""
    from dataclasses import asdict

    results = read_results(g, run_dir)
    if cfg is None:
        return results, cells_to_redo(g, run_dir, results)
    return results, cells_to_redo(g, run_dir, results, expected_configs(g, cfg), expected_schedules(g, cfg),
                                  measure=asdict(cfg.measure))


def progress(groups: list[list[CellSpec]], run_dir: Path, cfg=None) -> tuple[int, int, list[str]]:
    """For ``--dry-run`` on an existing run folder: (finished cells, cells in ``groups``, one line per finished cell a
    run would redo, ``dataset/model/seedN/label: why``). ``cfg``: the study's ``RunConfig``, to compare options."""
    done, total, lines = 0, 0, []
    for g in groups:
        results, redo = _group_state(g, run_dir, cfg)
        done, total = done + sum(r is not None for r in results.values()), total + len(g)
        lines += [f"{group_name(g)}/{label}: {r.reason}" for label, r in redo.items()]
    return done, total, lines


def pending(groups: list[list[CellSpec]], run_dir: Path, cfg=None) -> list[CellSpec]:
    """The cells of ``groups`` a run in ``run_dir`` would train or quantize: unfinished ones and finished ones it
    redoes (``cells_to_redo``), in run order; for ``--dry-run``'s estimate of the time left."""
    out = []
    for g in groups:
        results, redo = _group_state(g, run_dir, cfg)
        todo: set[str] = set()
        for s in g:  # parents come before their children in a group
            # a finished child of a parent that is trained (again) is redone from it once it is
            if results[s.label] is None or s.label in redo or (s.parent is not None and s.parent in todo):
                todo.add(s.label)
        out += [s for s in g if s.label in todo]
    return out


def under_way(todo: list[CellSpec], run_dir: Path, cfg=None) -> dict[str, int]:
    """``{cell id: epochs trained}`` for the cells of ``todo`` (``pending``'s) that a run continues from their
    ``last.pt``: unfinished, with a readable resume state, and started from the parent that is there now. A child of
    a parent in ``todo`` (trained (again) first), or of one trained again since the child started (its ``run.json``
    names another parent checkpoint by content), starts over (``run_folder.CannotResume``), as does, with ``cfg``
    (the study's ``RunConfig``), a cell whose folder's images changed since it started. For ``--dry-run``."""
    from qsal.checkpoint import epochs_trained

    ids = {c.id for c in todo}
    out = {}
    for c in todo:
        cell = run_dir / c.id
        parent = cell.parent / c.parent if c.parent is not None else None
        if parent is not None and f"{c.id.rsplit('/', 1)[0]}/{c.parent}" in ids or finished(cell):
            continue  # a finished cell in todo is redone from scratch
        if cfg is not None and started_on_other_images(cell, folder_content(cfg, c.dataset)):
            continue
        if (epochs := epochs_trained(cell / "last.pt")) is not None and not _other_parent(cell, parent):
            out[c.id] = epochs
    return out


def started_on_other_images(cell: Path, content: str | None) -> bool:
    """Whether a cell cut off part-way (its ``last.pt``) started on other bytes of its folder's images than
    ``content`` (``grid.folder_content`` now) says, by the digest its ``config.json`` recorded at the start. A table
    set (``None``), a cell from before the field or a damaged record: not known, False."""
    if content is None or not (cell / "last.pt").is_file():
        return False
    try:
        started_on = read_json(cell / "config.json", "").get("data_content")
    except (QsalError, AttributeError):
        return False
    return isinstance(started_on, str) and started_on != content


def _other_parent(cell: Path, parent: Path | None) -> bool:
    """Whether a part-trained fine-tune in ``cell`` started from another checkpoint than ``parent``'s
    best.safetensors now (by the content hash its run.json records; folders from before the hash: not known, False)."""
    from qsal.run_folder import file_sha256

    if parent is None or not (parent / "best.safetensors").is_file():
        return False
    try:
        started_from = read_json(cell / "run.json", "").get("config", {}).get("parent_sha256")
    except (QsalError, AttributeError):
        return False
    return started_from is not None and started_from != file_sha256(parent / "best.safetensors")


def clear_cell(cell: Path) -> None:
    """Empty a cell folder that is redone, all but its ``log.txt`` (the history of what was done and why): its
    ``run.json`` names the parent (by its content, or by path in folders written before) and the method's version,
    so resuming in place can be refused (a retrained parent, a newer method) and must not be tried."""
    cell.mkdir(parents=True, exist_ok=True)
    for item in cell.iterdir():
        if item.name == "log.txt":
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()
