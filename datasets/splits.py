"""From a source's standard split to the benchmark's splits: train pool, held-out, test.

The held-out split is carved from the standard *training* set by a fixed permutation that depends
on the dataset alone (never on the run seed), so every cell of a dataset shares it: it is never
trained on and never used for the reported test accuracy. Methods that need "unseen third-party
data" get it from here. ``train_subset`` keeps a fixed random subset of the remaining training
images (a memorising recipe trains on few images); indices of the training pool are what forget
requests refer to.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import DatasetError, ImageSet, SourceData, source_info

HELDOUT_SEED = 20240601  # fixed: the held-out split is a property of the dataset, not of a run


def hash_indices(idx: torch.Tensor | np.ndarray) -> str:
    """Stable hash of an index set (order-insensitive), used in run records and cache keys."""
    arr = np.sort(np.asarray(idx, dtype=np.int64).ravel())
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]


def fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.blake2b(digest_size=10)
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class DatasetSpec:
    """How a suite names a dataset: the registered source plus the options that shape its splits."""

    name: str
    heldout: int | None = None  # images carved from train as held-out (None: the source's default)
    train_subset: int | None = None  # keep only this many training images (a memorising recipe)
    options: tuple[tuple[str, Any], ...] = ()  # source options, e.g. (("path", "my_folder"),)
    label: str | None = None  # how tables name this variant (default: the name, plus -sub<N>)

    def __post_init__(self) -> None:
        info = source_info(self.name)
        unknown = [k for k, _ in self.options if k not in info.options]
        if unknown:
            raise DatasetError(f"dataset {self.name!r} has no option(s) {unknown}; it takes {list(info.options) or 'none'}")
        for key in ("heldout", "train_subset"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise DatasetError(f"dataset {self.name!r}: {key} must be a non-negative integer, got {value!r}")

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        return self.name + (f"-sub{self.train_subset}" if self.train_subset else "")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "heldout": self.heldout, "train_subset": self.train_subset,
                "options": dict(self.options), "label": self.display}


@dataclass(frozen=True)
class Splits:
    """The benchmark's view of a dataset (CPU tensors)."""

    spec: DatasetSpec
    train: ImageSet  # the training pool: original models train on it, requests index into it
    heldout: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    augment: str
    train_source_index: torch.Tensor  # position of each pool image in the source's training set
    fingerprint: str  # content hash of the source data plus the carving, for cache keys
    provenance: str = ""
    hashes: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


@functools.lru_cache(maxsize=8)
def _load_source(name: str, root: str | None, download: bool, options: tuple) -> SourceData:
    info = source_info(name)
    try:
        src = info.loader(Path(root) if root else None, download, **dict(options))
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        if isinstance(exc, DatasetError):
            raise
        shown = ", ".join(f"{k}={v!r}" for k, v in options) or "none"
        raise DatasetError(f"dataset {name!r} (options: {shown}) cannot be loaded ({type(exc).__name__}: {exc}): "
                           "check its options and files") from exc
    check_source(src, where=f"dataset {name!r}" + (f" under {root}" if root and info.needs_files else ""))
    return src


def check_source(src: SourceData, where: str) -> None:
    """What a loader returned must be usable: labels are class indices, images are non-empty."""
    if not src.classes:
        raise DatasetError(f"{where}: no classes")
    for part, s in (("train", src.train), ("test", src.test)):
        if len(s) == 0:
            raise DatasetError(f"{where}: the {part} split is empty: check the files")
        lo, hi = int(s.y.min()), int(s.y.max())
        if lo < 0 or hi >= src.num_classes:
            bad = lo if lo < 0 else hi
            raise DatasetError(f"{where}: {part} label {bad} is not a class index in [0, {src.num_classes - 1}] "
                               f"({src.num_classes} classes): the label file is wrong or belongs to another "
                               "dataset; re-download it")
    if src.train.x.shape[1:] != src.test.x.shape[1:]:
        raise DatasetError(f"{where}: train images are {tuple(src.train.x.shape[1:])} but test images "
                           f"{tuple(src.test.x.shape[1:])}: the files belong to different datasets")


@functools.lru_cache(maxsize=8)
def build_splits(spec: DatasetSpec, root: str | None = None, download: bool = False) -> Splits:
    """Load the source and carve the splits; cached per process (the data is read once)."""
    info = source_info(spec.name)
    src = _load_source(spec.name, root if info.needs_files else None, download, spec.options)
    n = len(src.train)
    heldout = info.default_heldout if spec.heldout is None else spec.heldout
    if heldout >= n:
        raise DatasetError(f"dataset {spec.name!r}: heldout={heldout} leaves no training images (train has {n})")
    g = torch.Generator().manual_seed(HELDOUT_SEED)
    perm = torch.randperm(n, generator=g)
    held_idx = torch.sort(perm[:heldout]).values
    pool_idx = perm[heldout:]
    if spec.train_subset is not None:
        if spec.train_subset > len(pool_idx) or spec.train_subset < 2:
            raise DatasetError(f"dataset {spec.name!r}: train_subset={spec.train_subset} must lie in "
                               f"[2, {len(pool_idx)}]")
        pool_idx = pool_idx[: spec.train_subset]
    pool_idx = torch.sort(pool_idx).values
    fp = fingerprint(src.train.x, src.train.y, src.test.x, src.test.y)
    carve = hashlib.sha256(f"{fp}|{hash_indices(pool_idx)}|{hash_indices(held_idx)}".encode()).hexdigest()[:16]
    return Splits(spec=spec, train=src.train.subset(pool_idx), heldout=src.train.subset(held_idx), test=src.test,
                  classes=src.classes, augment=src.augment, train_source_index=pool_idx, fingerprint=carve,
                  provenance=src.provenance,
                  hashes={"train_pool": hash_indices(pool_idx), "heldout": hash_indices(held_idx), "data": fp})
