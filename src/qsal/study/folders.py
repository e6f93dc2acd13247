"""A study's own image folders: ``folders`` names a folder dataset so that ``datasets`` can list it.

    datasets: [breastmnist, clinic]
    folders:
      clinic: {path: ~/scans/clinic, positive_class: malignant, size: 64}

A folder holds one sub-folder per class (or ``train/ [val/] test/``, each with one per class), read exactly as
``qsal train --dataset folder:PATH`` reads it: the study's cells train on ``folder:PATH`` and record it so, and are
named by the short name (``clinic/small_cnn/seed0/fp32``, ``--only 'clinic/*'``), as a path cannot name a cell folder.

- ``path``: the folder; a relative one is read from the config file's folder and recorded absolute (as ``data_dir``).
- ``positive_class``: for a folder of two classes, the class sensitivity, PPV and the operating point are about. A study
  config must name it: its tables are compared across sets, and "the second class alphabetically" (the train command's
  default) would make sensitivity quietly about ``normal`` in a folder of ``malignant/ normal/``.
- ``size``: the side images are resized to, in px (default 28, MedMNIST's; 12-1024, qsal.data.registry's bounds, as
  ``--size``).
- ``split_seed``: the seed that draws the folder's split for every seed of the study (``qsal train --split-seed``),
  so a row's seeds share one test set and differ in weights and data order only, as on a table set's official split.

Without ``split_seed``, a folder that does not come split is split by each seed of the study anew (a cell's seed is its
split seed, as in ``qsal train --seed``): a row's spread over seeds includes the split's, and each seed's cells share
one split.

A cell records the folder's split (``data_listing``) and the bytes of its images (``data_content``,
``folder_content_sha256``): a file added, removed, renamed or overwritten since, or ``path`` pointed at another folder
of the same names, makes the cell stale (``other_images``; ``qsal run`` redoes it only with ``--force``); a folder
moved whole with its images does not.

What a folder holds is checked where a user wrote the config (``folder_problems``), not in a recorded config, whose
folder a report does not need.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["parse_folders", "folder_problems", "folder_content_sha256", "other_images", "cells_on_other_images",
           "stale_advice", "FOLDER_KEYS", "DEFAULT_SIZE", "OTHER_IMAGES"]

FOLDER_KEYS = ("path", "positive_class", "size", "split_seed")
DEFAULT_SIZE = 28
# a cell folder's first part and an --only pattern's: lower case as the dataset table's names, no path separators
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def parse_folders(problems: list[str], raw, base: Path | None = None) -> dict:
    """``{name: {"path", "positive_class", "size"}}`` from the config's ``folders`` mapping, each problem appended to
    ``problems`` with its path (``folders.clinic.size: ...``). ``base``: the config file's folder, which a relative
    path is read from (``None``: the working folder; a recorded config's paths are absolute already)."""
    from qsal.data import list_datasets
    from qsal.data.registry import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
    from qsal.study.config import _short, mapping_problem
    from qsal.study.config_yaml import number_hint

    if not isinstance(raw, dict):
        problems.append(f"folders: must map short names to folders, e.g. {{clinic: {{path: scans/, positive_class: "
                        f"malignant}}}}, got {_short(raw)}")
        return {}
    out = {}
    for name, options in raw.items():
        where = f"folders.{name if isinstance(name, str) else _short(name)}"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            problems.append(f"{where}: a folder's short name names its cell folders: use lower-case letters, digits, "
                            "'_', '-' or '.', starting with a letter or digit (e.g. clinic_cxr)")
            continue
        if name in list_datasets():
            problems.append(f"{where}: {name} is a dataset of the table (`qsal datasets`); give the folder another "
                            "name")
            continue
        if isinstance(options, str):  # clinic: scans/ -- the one setting every folder needs, written alone
            options = {"path": options}
        shape = "a mapping with path (and positive_class, size, split_seed)"
        if (problem := mapping_problem(where, options, FOLDER_KEYS, shape)):
            problems.append(problem)
            continue
        path, positive, size = options.get("path"), options.get("positive_class"), options.get("size", DEFAULT_SIZE)
        wrong = []
        if not isinstance(path, str) or not path.strip():
            wrong.append(f"{where}.path: {'missing' if path is None else _short(path) + ' is not a folder path'}; "
                         "give the folder of class sub-folders")
        if positive is not None and not isinstance(positive, str):
            wrong.append(f"{where}.positive_class: {_short(positive)} is not a class name (write it as text: "
                         f"'{positive}')")
        if not (isinstance(size, int) and not isinstance(size, bool) and MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE):
            wrong.append(f"{where}.size: {_short(size)} is not an image size in px ({MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE})"
                         f"{number_hint(size, int)}")
        split_seed = options.get("split_seed")
        if split_seed is not None and not (isinstance(split_seed, int) and not isinstance(split_seed, bool)
                                           and 0 <= split_seed < 2**32):
            wrong.append(f"{where}.split_seed: {_short(split_seed)} is not a seed (a whole number, 0 to 4294967295)"
                         f"{number_hint(split_seed, int)}")
        if wrong:
            problems += wrong
            continue
        out[name] = {"path": str(((base or Path.cwd()) / Path(path).expanduser()).resolve()),
                     "positive_class": positive, "size": size,
                     # only when written: a study that never named one keeps its fingerprint
                     **({"split_seed": split_seed} if split_seed is not None else {})}
    return out


def folder_problems(cfg, written: dict | None = None, base: Path | None = None) -> list[str]:
    """What a config a user wrote names of its folders that their files contradict: a folder that is not there or
    holds fewer than two class folders, a binary folder without ``positive_class`` or with one that is not a class,
    ``positive_class`` on a multi-class folder, a folder named but listed in no ``datasets``. Reads the class folders
    (names only; no image is decoded). ``written``: the config's ``folders`` as written, ``base``: the folder a relative
    path was read from (``parse_folders``): a missing folder given relative says where it was looked for."""
    from qsal.data.folder import _classes
    from qsal.errors import QsalError

    problems = []
    for name, f in cfg.folders.items():
        where = f"folders.{name}"
        if name not in cfg.datasets:
            problems.append(f"{where}: named, but not in datasets (no cell uses it); add {name} to datasets, or "
                            "drop it")
            continue
        try:
            classes = _classes(Path(f["path"]))
        except QsalError as e:
            given = (written or {}).get(name)
            given = given.get("path") if isinstance(given, dict) else given
            relative = (isinstance(given, str) and not Path(given).expanduser().is_absolute()
                        and not Path(f["path"]).exists())
            read_from = (base or Path.cwd()).resolve()
            hint = (f" ({given!r} is read from the config file's folder, {read_from}: give the path from there, or an "
                    "absolute one)") if relative else ""
            problems.append(f"{where}.path: {e}{hint}")
            continue
        shown = ", ".join(map(repr, classes))  # 'normal, benign' is one class
        if len(classes) == 2 and f["positive_class"] is None:
            problems.append(f"{where}.positive_class: missing; {name} has two classes ({shown}): name the one "
                            "sensitivity is about (the finding, e.g. malignant)")
        elif len(classes) == 2 and f["positive_class"] not in classes:
            problems.append(f"{where}.positive_class: {f['positive_class']!r} is not a class of {name}; choose "
                            f"one of {shown}")  # a class id (0/1) is not taken: the name is what a table shows
        elif len(classes) > 2 and f["positive_class"] is not None:
            problems.append(f"{where}.positive_class: {name} has {len(classes)} classes ({shown}); a positive class "
                            "applies to two-class folders only: drop it")
    return problems


# {folder: (each listed file's path, size, times, inode and device; digest)}: a study reads each image's bytes once per
# process while none of them changes (a group's cells and the run's checks all ask)
_CONTENT: dict[str, tuple[tuple, str]] = {}


def folder_content_sha256(root: Path) -> str:
    """A digest of the bytes of every image ``root`` holds (the files ``folder_split_files`` lists, by relative path,
    whatever the split): an image overwritten in place, or another folder of the same file names, changes it; the
    same images under another path do not. Raises ``QsalError`` where ``root`` is no folder of classes."""
    from qsal.data.folder import folder_split_files

    root = Path(root)
    names = sorted(name for files in folder_split_files(root).values() for name, _ in files)
    # ctime and inode too: a copy that keeps the old mtime and size (cp -p, rsync -a, unzip) still changes them
    stats = tuple((name, (st := (root / name).stat()).st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
                  for name in names)
    cached = _CONTENT.get(str(root))
    if cached is not None and cached[0] == stats:
        return cached[1]
    digest = hashlib.sha256()
    for name in names:
        data = (root / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    _CONTENT[str(root)] = (stats, digest.hexdigest())
    return digest.hexdigest()


# how other_images begins its reason: a report's advice tells those cells apart (a rerun needs --force for them)
OTHER_IMAGES = "trained on other images than its folder holds now"


def other_images(result: dict, expected: dict | None) -> str | None:
    """Why a finished FP32/SGT cell of a study folder was trained on other images than the folder holds now: files
    added, removed or renamed (its seed's split is drawn anew, mixing its training images into test), or overwritten,
    or ``path`` pointed at another folder. ``None`` when the same, for a table set, or where either side does not say
    (a folder not there, a cell made before it was recorded). ``expected``: the cell's
    ``qsal.study.grid.expected_schedules`` entry (its ``data_listing``, ``data_content`` and ``data_split_seed``).
    A cell whose split another seed drew (``split_seed`` changed in the config) says so first: its folder did not
    change."""
    # a cell made before split_seed was recorded drew its split by its own seed
    now, then = (expected or {}).get("data_split_seed"), result.get("split_seed", result.get("seed"))
    listed, listing = (expected or {}).get("data_listing"), result.get("data_listing")
    # a folder that comes split (train/ val/ test/) lists the same files whatever the seed: nothing to redo
    if now is not None and isinstance(then, int) and now != then and not (listed and listed == listing):
        return f"its split was drawn by seed {then}; the study draws it by seed {now} now: redoing it"
    for key, what in (("data_listing", "files added, removed or renamed"),
                      ("data_content", "images changed, or the path names another folder")):
        now, then = (expected or {}).get(key), result.get(key)
        if now is not None and then is not None and now != then:
            return f"{OTHER_IMAGES} ({what} since): redoing it"
    return None


def stale_advice(stale: dict[str, str]) -> str:
    """What a report tells a user to do about its out-of-date cells (``stale_results``): a rerun of ``qsal run``
    redoes them, but cells trained on images their folder no longer holds only with ``--force`` (it refuses them
    otherwise: ``cells_on_other_images``)."""
    moved = sum(why.startswith(OTHER_IMAGES) for why in stale.values())
    if not moved:
        return "rerun `qsal run` with that config to redo them"
    fix = "restore the folder as it was, or rerun `qsal run --force` with that config to train them on it as it is"
    if moved == len(stale):
        return fix
    return (f"rerun `qsal run` with that config to redo them; the {moved} trained on other images than their folder "
            f"holds now: {fix}")


def cells_on_other_images(groups: list[list], run_dir: Path, cfg) -> list[str]:
    """The finished FP32/SGT cells of ``groups`` trained on other images than their study folder holds now
    (``other_images``): ``qsal run`` redoes them, and the cells made from them, only when told to (``--force``)."""
    from qsal.study.grid import expected_schedules
    from qsal.study.redo import read_results

    out = []
    for g in groups:
        if g[0].dataset not in cfg.folders:
            continue
        schedules, results = expected_schedules(g, cfg), read_results(g, run_dir)
        out += [s.id for s in g if s.parent is None and results[s.label] is not None
                and (other_images(results[s.label], schedules.get(s.label)) or "").startswith(OTHER_IMAGES)]
    return out
