"""``ImageSplit``: one split of a dataset as validated uint8 arrays, and its tensor view."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from qsal.data.registry import TASK_MULTILABEL, DatasetInfo
from qsal.errors import QsalError

__all__ = ["ImageSplit", "validate_arrays", "data_meta"]


@dataclass
class ImageSplit:
    """Images ``(N, H, W, C)`` uint8 and labels ``(N,)`` int64 (``(N, L)`` for multi-label).

    Attributes:
        info: the dataset's table row (task, classes, normalisation).
        split: ``train``, ``val`` or ``test``.
        source: where the arrays were read from (a path, or ``embedded``).
        listing_sha256: a folder dataset's split as drawn (every file's path, class and split; ``folder.listing_sha256``):
            recorded at training, so a folder changed since is not scored as the model's own split. ``None`` otherwise.
        split_seed: the seed that drew this split (a folder's train/val/test, MNIST's and CIFAR-10's validation
            slice of train); ``None`` for an official split, which no seed changes.
    """

    info: DatasetInfo
    split: str
    images: np.ndarray
    labels: np.ndarray
    source: str = ""
    listing_sha256: str | None = None
    split_seed: int | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def tensors(self):
        """``(x, y)`` torch tensors: x float32 ``(N, C, H, W)`` normalised with the table's mean/std."""
        import torch

        images = np.ascontiguousarray(self.images)
        if not images.flags.writeable:  # a read-only view (memory-mapped or shared): torch warns on every such array
            images = images.copy()
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.info.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.info.std).view(1, -1, 1, 1)
        x = (x - mean) / std
        y = torch.from_numpy(self.labels)
        y = y.float() if self.info.task == TASK_MULTILABEL else y.long()
        return x.contiguous(), y

    def with_channels(self, channels: int) -> "ImageSplit":
        """The same images with 1 (ITU-R 601 luma) or 3 (gray repeated) channels, for a model of the other kind."""
        have = self.images.shape[-1]
        if channels == have:
            return self
        if channels == 3 and have == 1:
            images = np.repeat(self.images, 3, axis=-1)
        elif channels == 1 and have == 3:
            luma = self.images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            images = np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]
        else:
            raise QsalError(f"cannot convert {have}-channel images to {channels} channels; use 1 or 3")
        mean, std = self.info.mean, self.info.std
        m, sd = (mean * 3, std * 3) if channels == 3 else ((float(np.mean(mean)),), (float(np.mean(std)),))
        info = replace(self.info, n_channels=channels, mean=tuple(m)[:channels], std=tuple(sd)[:channels])
        return replace(self, info=info, images=images)

    def subset_indices(self, n: int, seed: int = 0) -> np.ndarray:
        """Positions in this split of the images ``subset(n, seed)`` returns (sorted)."""
        if n >= len(self):
            return np.arange(len(self))
        return np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))

    def subset(self, n: int, seed: int = 0) -> "ImageSplit":
        """A seeded random subset of ``n`` images (all of them when ``n >= len(self)``)."""
        if n >= len(self):
            return self
        idx = self.subset_indices(n, seed)
        return replace(self, images=self.images[idx], labels=self.labels[idx])


def data_meta(split: ImageSplit) -> dict:
    """What a model trained on ``split`` records of its data, and what a deployed model must know: name, task,
    labels, normalisation, channels and size; a folder's split digest and the seed that drew a split, where they apply.
    """
    info = split.info
    return {"name": info.name, "task": info.task, "labels": list(info.labels), "mean": list(info.mean),
            "std": list(info.std), "n_channels": info.n_channels, "image_size": int(split.images.shape[1]),
            "license": info.license,
            # a folder's split as drawn: a folder changed since is refused as the model's own data
            **({"listing_sha256": split.listing_sha256} if split.listing_sha256 else {}),
            **({"split_seed": int(split.split_seed)} if split.split_seed is not None else {})}


def validate_arrays(info: DatasetInfo, images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Check dtype, shape and label range; return images as ``(N, H, W, C)`` and labels squeezed.

    Raises:
        QsalError: naming the file and what is wrong with it.
    """
    if images.dtype != np.uint8:
        raise QsalError(f"{where}: images have dtype {images.dtype}, expected uint8 (0-255 pixels); re-export them as uint8")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise QsalError(f"{where}: images have shape {images.shape}, expected (N, H, W) or (N, H, W, 3)")
    if images.shape[-1] != info.n_channels:
        raise QsalError(f"{where}: images have {images.shape[-1]} channel(s) but {info.name} has {info.n_channels}")
    if images.shape[0] == 0:
        raise QsalError(f"{where}: the split is empty; the file is incomplete, download it again")
    labels = np.asarray(labels)
    if labels.shape[0] != images.shape[0]:
        raise QsalError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels; the file is corrupt")
    if info.task == TASK_MULTILABEL:
        labels = labels.reshape(labels.shape[0], -1).astype(np.int64)
        if labels.shape[1] != info.num_classes or not np.isin(labels, (0, 1)).all():
            raise QsalError(f"{where}: multi-label targets must be 0/1 of width {info.num_classes}, got shape {labels.shape}")
    else:
        labels = labels.reshape(labels.shape[0], -1)
        if labels.shape[1] != 1:
            raise QsalError(f"{where}: labels have shape {labels.shape}, expected (N,) or (N, 1)")
        labels = labels[:, 0].astype(np.int64)
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= info.num_classes:
            raise QsalError(f"{where}: labels span {lo}..{hi} but {info.name} has classes 0..{info.num_classes - 1}")
    return images, labels
