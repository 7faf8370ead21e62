"""Core data types of the datasets floor and the source registry.

A *source* turns (root, download flag, options) into a :class:`SourceData`: uint8 image tensors in
NCHW layout, int64 labels, class names and the standard train/test split. Everything downstream
(held-out carving, forget requests, device residency, augmentation) works on these tensors.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from unlearnbench.errors import UserError


class DatasetError(UserError, ValueError):
    """A dataset cannot be built as asked (missing files, unknown name, bad option)."""


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 ``[N, C, H, W]`` (CPU), labels as int64 ``[N]``."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise DatasetError(f"images must be uint8 [N, C, H, W], got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.shape != (self.x.shape[0],):
            raise DatasetError(f"labels must be int64 [N] matching the images, got {self.y.dtype} {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        return ImageSet(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class SourceData:
    """What a source returns: the standard split, class names and how to treat the images."""

    name: str
    train: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    augment: str = "none"  # "none" | "crop_flip" (random crop with 4-pixel padding + horizontal flip)
    provenance: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True)
class SourceInfo:
    name: str
    loader: Callable[..., SourceData]
    description: str
    default_heldout: int
    needs_files: bool = True
    options: tuple[str, ...] = field(default_factory=tuple)


_SOURCES: dict[str, SourceInfo] = {}


def register_source(name: str, *, description: str, default_heldout: int, needs_files: bool = True,
                    options: tuple[str, ...] = ()):
    """Register a loader ``fn(root: Path | None, download: bool, **options) -> SourceData``."""

    def deco(fn: Callable[..., SourceData]) -> Callable[..., SourceData]:
        if name in _SOURCES:
            raise ValueError(f"dataset source {name!r} is registered twice")
        _SOURCES[name] = SourceInfo(name, fn, description, default_heldout, needs_files, tuple(options))
        return fn

    return deco


def close_matches(name: str, choices) -> str:
    near = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.4)
    return f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""


def load_plugins() -> None:
    """Load the ``unlearnbench.datasets`` plug-ins once (sources and request kinds of other distributions;
    see ``unlearnbench.plugins``); called where a dataset or request kind is first looked up."""
    from unlearnbench import plugins

    from .requests import _KINDS

    plugins.ensure("unlearnbench.datasets", lambda: [_SOURCES, _KINDS])


def source_info(name: str) -> SourceInfo:
    load_plugins()
    if name not in _SOURCES:
        raise DatasetError(
            f"unknown dataset {name!r}.{close_matches(name, _SOURCES)} Known datasets: {', '.join(sorted(_SOURCES))}."
        )
    return _SOURCES[name]


def list_sources() -> list[SourceInfo]:
    load_plugins()
    return [_SOURCES[k] for k in sorted(_SOURCES)]


def cache_dir() -> Path:
    """Folder for derived data (unpacked archives, decoded arrays): ``$UNLEARNBENCH_CACHE`` or ~/.cache."""
    root = os.environ.get("UNLEARNBENCH_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "unlearnbench"
    path.mkdir(parents=True, exist_ok=True)
    return path
