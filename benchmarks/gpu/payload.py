"""Make the working tree small enough to travel to a lent GPU machine, and put it back afterwards.

The device tool sends the checkout's tracked files plus the paths a call carries, 64 MiB in all. The committed study
results alone are ~170 MB, and the data (../shared/data) does not travel at all. So, before the call:

    python3 benchmarks/gpu/payload.py hold KEEP [KEEP ...]    # move every other tracked results file out of the tree
    python3 benchmarks/gpu/payload.py data FILE [FILE ...]    # copy data files into .devdata/ (git-ignored, carried)
    python3 benchmarks/gpu/payload.py size                    # what would travel, in MB (must stay under 67.1)

and after it, always (also when the call failed), before any commit (a commit while files are held out would
delete them from the repository):

    python3 benchmarks/gpu/payload.py restore

KEEP: paths under benchmarks/results to leave in place: a study folder, or one of its groups
(``benchmarks/results/study_x/cifar10/resnet20/seed1``); a study's ``run_config.json`` is always kept with any of its
groups, so a run folder stays a run folder. FILE: paths under $QSAL_DATA_DIR, kept relative to it
(``cifar10/cifar10_jpeg.npz`` -> ``.devdata/cifar10/cifar10_jpeg.npz``), so the device's QSAL_DATA_DIR is .devdata.
Carry ``.devdata`` (and ``.whl`` for captum, which the device image lacks) in the call. Measured in session 13: the
tree without results is 1.5 MB, so CIFAR-10's 55.8 MB JPEG copy travels with breastmnist (the precheck's) and one
study's run config; the device converts it with cifar10_to_binary.py (copy that file too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path("benchmarks/results")
HOLD = ROOT.parent / f"gpu-payload-hold-{ROOT.name}"  # outside the checkout, so it never travels; one per checkout
DEVDATA = ROOT / ".devdata"
LIMIT_MB = 64 * 1024 * 1024 / 1e6


def _tracked(under: Path | None = None, untracked: bool = False) -> list[Path]:
    """Tracked files (with ``untracked``: and the untracked ones git does not ignore, which travel too)."""
    extra = ["--cached", "--others", "--exclude-standard"] if untracked else []
    args = ["git", "-C", str(ROOT), "ls-files", "-z", *extra, *([str(under)] if under else [])]
    out = subprocess.run(args, check=True, capture_output=True).stdout.decode()
    return [Path(p) for p in out.split("\0") if p]


def _study_of(path: Path) -> Path:
    """The study folder (``benchmarks/results/study_x``) a results path is in."""
    return Path(*path.parts[:3])


def _kept(path: Path, keep: list[Path]) -> bool:
    # a kept path keeps what is under it, and a kept group its study's run_config.json
    return any(path == k or k in path.parents or path == _study_of(k) / "run_config.json" for k in keep)


def hold(keep: list[str]) -> None:
    if HOLD.exists() and any(HOLD.rglob("*")):
        sys.exit(f"{HOLD} already holds files from an earlier hold; run `restore` first")
    keep_paths = [Path(os.path.normpath(k)) for k in keep]
    for k in keep_paths:
        # a group not begun yet has no folder: its study folder must exist (its run_config.json is kept)
        if RESULTS not in k.parents or not (ROOT / _study_of(k)).exists():
            sys.exit(f"{k}: not under a folder of {RESULTS} in this checkout")
    moved = 0
    for path in _tracked(RESULTS):
        if not _kept(path, keep_paths) and (ROOT / path).exists():
            (HOLD / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(ROOT / path, HOLD / path)
            moved += 1
    print(f"moved {moved} results files to {HOLD}; run `{Path(__file__).name} restore` after the call")


def restore() -> None:
    if not HOLD.exists():
        print("nothing held")
        return
    moved, conflicts = 0, []
    for src in sorted(p for p in HOLD.rglob("*") if p.is_file()):
        dst = ROOT / src.relative_to(HOLD)
        if dst.exists():
            if dst.read_bytes() == src.read_bytes():
                src.unlink()  # the same file is back in the tree (git checkout, an unpacked result)
            else:
                conflicts.append(dst)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dst)
        moved += 1
    if conflicts:
        for dst in conflicts:
            print(f"  {dst.relative_to(ROOT)}: the tree's copy differs from the held one", file=sys.stderr)
        sys.exit(f"restored {moved} files; {len(conflicts)} exist in the tree and differ from the copies still held in "
                 f"{HOLD} (listed above): keep one of each by hand, then delete {HOLD}")
    shutil.rmtree(HOLD)
    print(f"restored {moved} files; `git status` should show only what the call brought back")


def data(files: list[str]) -> None:
    src_root = Path(os.environ.get("QSAL_DATA_DIR", ROOT.parent / "shared" / "data"))
    for f in files:
        if Path(f).is_absolute() or ".." in Path(f).parts:
            sys.exit(f"{f}: give data files relative to QSAL_DATA_DIR ({src_root}), e.g. medmnist/breastmnist.npz")
        src = src_root / f
        if not src.is_file():
            sys.exit(f"{src}: no such data file (QSAL_DATA_DIR={src_root})")
        (DEVDATA / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, DEVDATA / f)
    print(f"copied {len(files)} files to {DEVDATA}; carry .devdata and set QSAL_DATA_DIR=$PWD/.devdata there")


def size() -> float:
    tracked = sum((ROOT / p).stat().st_size for p in _tracked(untracked=True) if (ROOT / p).is_file())
    carried = sum(p.stat().st_size for d in (DEVDATA, ROOT / ".whl") if d.exists() for p in d.rglob("*") if p.is_file())
    total = (tracked + carried) / 1e6
    print(f"tracked {tracked / 1e6:.1f} MB + .devdata/.whl {carried / 1e6:.1f} MB = {total:.1f} MB "
          f"(limit {LIMIT_MB:.1f} MB{'' if total <= LIMIT_MB else ': TOO BIG'})")
    return total


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("hold", "restore", "data", "size"):
        print(__doc__, file=sys.stderr)
        return 2
    verb, rest = argv[0], argv[1:]
    if verb == "hold":
        hold(rest)
    elif verb == "restore":
        restore()
    elif verb == "data":
        data(rest)
    else:
        return 0 if size() <= LIMIT_MB else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
