"""Device-resident data: images live on the device once, as uint8; batches, conversion to float
and augmentation are tensor operations on the device (no host loader, no per-step transfer).

Models take float images in [0, 1]; their first layer normalises (see ``methods.models``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from .base import ImageSet


@dataclass(frozen=True)
class TensorData:
    """Images (uint8 ``[N, C, H, W]``) and labels (int64) on one device, with the source's augmentation."""

    x: torch.Tensor
    y: torch.Tensor
    augment: str = "none"

    @staticmethod
    def from_imageset(data: ImageSet, device: torch.device | str, augment: str = "none") -> "TensorData":
        return TensorData(data.x.to(device), data.y.to(device), augment)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: torch.Tensor) -> "TensorData":
        idx = idx.to(self.x.device)
        return TensorData(self.x[idx], self.y[idx], self.augment)

    def with_labels(self, y: torch.Tensor) -> "TensorData":
        return TensorData(self.x, y.to(self.x.device), self.augment)

    def concat(self, other: "TensorData") -> "TensorData":
        return TensorData(torch.cat([self.x, other.x]), torch.cat([self.y, other.y]), self.augment)

    def floats(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Float images in [0, 1] (all, or the rows ``idx``), no augmentation."""
        x = self.x if idx is None else self.x[idx]
        return x.float().div_(255.0)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                augment: bool = False, drop_last: bool = False, fold_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(float images, labels)``; shuffling and augmentation draw from ``generator`` on the device.

        ``drop_last``: skip the ragged last batch. ``fold_last``: the last full batch takes the ragged rest
        too (one batch of up to ``2 * batch_size - 1``), so every example is used once per pass while the
        batch shapes stay two at most (a new shape costs a cuDNN autotuning pass on CUDA)."""
        n = len(self)
        order = torch.randperm(n, device=self.device, generator=generator) if shuffle else None
        stop = n - n % batch_size if (drop_last or fold_last) and n >= batch_size else n
        for start in range(0, stop, batch_size):
            end = n if fold_last and start + 2 * batch_size > stop and stop < n else start + batch_size
            idx = order[start:end] if order is not None else slice(start, end)
            xb = self.x[idx].float().div_(255.0)
            if augment and self.augment != "none":
                xb = apply_augment(xb, self.augment, generator)
            yield xb, self.y[idx]

    def num_batches(self, batch_size: int, drop_last: bool = False, fold_last: bool = False) -> int:
        n = len(self)
        if (drop_last or fold_last) and n >= batch_size:
            return n // batch_size
        return -(-n // batch_size)


def apply_augment(x: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    if kind == "crop_flip":
        return random_crop_flip(x, generator)
    if kind == "none":
        return x
    raise ValueError(f"unknown augmentation {kind!r}; known: none, crop_flip")


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None, pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel translation (zero padding, as torchvision's RandomCrop(padding=4)) and a
    horizontal flip with probability 1/2, one draw per image, as one batched gather."""
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    offs = torch.randint(0, 2 * pad + 1, (2, b), device=dev, generator=generator)
    flip = torch.randint(0, 2, (b,), device=dev, generator=generator).bool()
    rows = (offs[0, :, None] + torch.arange(h, device=dev)).view(b, 1, h, 1)
    cols = offs[1, :, None] + torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols).view(b, 1, 1, w)
    bidx = torch.arange(b, device=dev).view(b, 1, 1, 1)
    cidx = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[bidx, cidx, rows, cols]
