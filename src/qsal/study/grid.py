"""A study's grid: its cells, grouped per (dataset, model, seed), and the ``--only`` choice among groups.

A cell is one model: (dataset, model, seed, method). A group runs in order in one worker, each parent (FP32, SGT)
before the quantized cells made from it; ``quant_config`` is the one place a cell's quantization config is made.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from qsal.errors import QsalError
from qsal.study.config import RunConfig

__all__ = ["CellSpec", "plan_groups", "quant_config", "expected_configs", "expected_schedules", "folder_listing",
           "folder_content", "group_name", "select_groups"]


@dataclass(frozen=True)
class CellSpec:
    dataset: str
    model: str
    seed: int
    kind: str  # fp32 | sgt | ptq | qat | pact | sgt+pact
    bits: int = 8
    observer: str = ""

    @property
    def label(self) -> str:
        return {"fp32": "fp32", "sgt": "sgt", "ptq": f"ptq-int8-{self.observer}", "qat": "qat-int8",
                "pact": f"pact-{self.bits}", "sgt+pact": f"sgt+pact-{self.bits}"}[self.kind]

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.model}/seed{self.seed}/{self.label}"

    @property
    def parent(self) -> str | None:
        """Label of the float cell a quantized cell starts from (SGT+PACT: the SGT model); None for fp32/sgt."""
        return None if self.kind in ("fp32", "sgt") else "sgt" if self.kind == "sgt+pact" else "fp32"


def plan_groups(cfg: RunConfig) -> list[list[CellSpec]]:
    """Cells grouped by (dataset, model, seed), each parent before its children and the FP32 family first:
    SGT's long training comes after the quick quantized cells of FP32, so a run stopped early (a time
    limit) has finished as many cells as it could."""
    groups = []
    for ds in cfg.datasets:
        for model in cfg.models:
            for seed in cfg.seeds:
                cells = [CellSpec(ds, model, seed, "fp32")]
                if "ptq" in cfg.methods:
                    cells += [CellSpec(ds, model, seed, "ptq", 8, o) for o in cfg.observers]
                if "qat" in cfg.methods:
                    cells.append(CellSpec(ds, model, seed, "qat"))
                if "pact" in cfg.methods:
                    cells += [CellSpec(ds, model, seed, "pact", b) for b in cfg.bits]
                if "sgt" in cfg.methods or "sgt+pact" in cfg.methods:
                    cells.append(CellSpec(ds, model, seed, "sgt"))
                if "sgt+pact" in cfg.methods:
                    cells += [CellSpec(ds, model, seed, "sgt+pact", b) for b in cfg.bits]
                groups.append(cells)
    return groups


def quant_config(spec: CellSpec, cfg: RunConfig):
    """The quantization config a study makes its cell ``spec`` with (``None`` for FP32 and SGT parents)."""
    from qsal.quant import PTQConfig, QATConfig

    if spec.kind in ("fp32", "sgt"):
        return None
    if spec.kind == "ptq":
        return PTQConfig(observer=spec.observer)
    return QATConfig() if spec.kind == "qat" else cfg.pact_config(spec.bits)


def expected_configs(specs: list[CellSpec], cfg: RunConfig) -> dict[str, dict]:
    """``{label: quant config to_dict()}`` of a group's quantized cells, for ``redo.cells_to_redo``."""
    return {s.label: quant_config(s, cfg).to_dict() for s in specs if s.parent is not None}


def expected_schedules(specs: list[CellSpec], cfg: RunConfig) -> dict[str, dict]:
    """``{label: schedule}`` of a group's cells that train, for ``redo.cells_to_redo``: the part of the ``run.json``
    config each would write now that the study decides. FP32/SGT: the training ``TrainConfig`` and the SGT settings
    (as ``pipeline.train_model`` records them); QAT/PACT/SGT+PACT: the fine-tune's ``train_config`` (with the cell's
    seed, as ``pipeline.quantize_checkpoint`` records it) and the SGT step's settings. PTQ trains nothing."""
    # a group's FP32 and SGT cells share one split: the folder is listed once per (set, seed), its bytes once per set
    out, listings, contents = {}, {}, {}
    for s in specs:
        if s.kind == "ptq":
            continue
        train, finetune = cfg.train_configs(s.dataset, s.model, s.seed, progress=False)
        guided = s.kind in ("sgt", "sgt+pact")
        sgt = {"k": cfg.sgt.k, "lambda": cfg.sgt.lam, "target": cfg.sgt.target} if guided else None
        if s.parent is None:
            if (s.dataset, s.seed) not in listings:
                listings[s.dataset, s.seed] = folder_listing(cfg, s.dataset, cfg.split_seed(s.dataset, s.seed))
            # a folder's size and positive class, as train_model records them (a table set: its own size, none named)
            positive, listing = cfg.positive_class(s.dataset), listings[s.dataset, s.seed]
            if listing is not None and s.dataset not in contents:
                contents[s.dataset] = folder_content(cfg, s.dataset)
            out[s.label] = {**train.to_dict(), "size": cfg.dataset_size(s.dataset), "sgt": sgt,
                            **({"positive_class": positive} if positive is not None else {}),
                            # as train_model records it: only where it is not the cell's own seed
                            **({"split_seed": fixed} if (fixed := cfg.fixed_split_seed(s.dataset)) not in (None, s.seed)
                               else {}),
                            # compared with the cell's result.json (folders.other_images), not its run.json
                            **({"data_listing": listing, "data_content": contents[s.dataset]} if listing is not None
                               else {}),
                            **({"data_split_seed": cfg.split_seed(s.dataset, s.seed)} if s.dataset in cfg.folders
                               else {})}
        else:
            out[s.label] = {"train_config": finetune.to_dict(), "step": sgt}
    return out


def folder_listing(cfg: RunConfig, dataset: str, seed: int) -> str | None:
    """The digest of the split ``seed`` (a split seed: ``RunConfig.split_seed``) draws of a study folder as it is now
    (``folder.listing_sha256``: file names, classes and splits; nothing decoded); ``None`` for a table set, or a
    folder that is not there (a report of a committed study)."""
    from qsal.data.folder import folder_split_files, listing_sha256

    return _digest_of_folder(cfg, dataset, lambda root: listing_sha256(folder_split_files(root, seed=seed)))


def folder_content(cfg: RunConfig, dataset: str) -> str | None:
    """The digest of the bytes of a study folder's images as they are now (``folders.folder_content_sha256``);
    ``None`` for a table set, or a folder that is not there or no longer a folder of classes."""
    from qsal.study.folders import folder_content_sha256

    return _digest_of_folder(cfg, dataset, folder_content_sha256)


def _digest_of_folder(cfg: RunConfig, dataset: str, digest) -> str | None:
    """``digest(root)`` of ``dataset``'s study folder; ``None`` for a table set, a folder that is not there (a report
    of a committed study), or one no longer a folder of classes or unreadable (the run's own check names it)."""
    root = Path(cfg.folders[dataset]["path"]) if dataset in cfg.folders else None
    if root is None or not root.is_dir():
        return None
    try:
        return digest(root)
    except (QsalError, OSError):
        return None


def group_name(group: list[CellSpec]) -> str:
    """``dataset/model/seedN``: the name ``--only`` patterns match (a cell's id without its label)."""
    return group[0].id.rsplit("/", 1)[0]


def select_groups(groups: list[list[CellSpec]], only: list[str] | None) -> list[list[CellSpec]]:
    """The groups whose name ``dataset/model/seedN`` matches one of the shell patterns ``only``, in the order of the
    first pattern each matches (then plan order): ``["pneumoniamnist/*/seed1", "*"]`` runs every group, seed 1 of
    PneumoniaMNIST first. ``None`` keeps all. A pattern that matches no group raises ``QsalError``."""
    if not only:
        return groups
    names = [group_name(g) for g in groups]
    for pattern in only:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise QsalError(f"--only {pattern!r} matches no cell group; groups are named dataset/model/seedN "
                            f"(this study: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    rank = {n: min((i for i, p in enumerate(only) if fnmatch.fnmatchcase(n, p)), default=None) for n in names}
    chosen = [(rank[n], i) for i, n in enumerate(names) if rank[n] is not None]
    return [groups[i] for _, i in sorted(chosen)]
