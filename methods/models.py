"""Architectures. Every model takes float images in [0, 1] (normalisation is its first layer), and
exposes ``features(x) -> z`` and a ReLU MLP ``head`` with ``forward(x) == head(features(x))``.
PRUNE patches the head; methods that need penultimate features use ``features``.

- ``mlp``: flatten -> Linear/ReLU blocks (features) -> head. For the 8x8 digits.
- ``small_cnn``: conv32-pool-conv64-pool-fc128 (features) -> head. For MNIST-family images.
- ``resnet18``: ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool) -> 512-d features -> head.
"""

from __future__ import annotations

import difflib
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearnbench.errors import UserError

from .cost import record_forward


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def relu_head(in_dim: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """A ReLU MLP: Linear, ReLU, ..., Linear (no activation on the logits)."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """``forward(x) = head(features(x))``; ``body`` maps normalised images to the feature vector."""

    def __init__(self, normalize: Normalize, body: nn.Module, head: nn.Sequential, feature_dim: int,
                 arch: str, conv: bool):
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.head = head
        self.feature_dim = feature_dim
        self.arch = arch
        self.is_conv = conv

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        record_forward(x, out)  # example passes, counted while the harness measures a method (methods/cost.py)
        return out


# ------------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet18_body(in_channels: int, width: int = 64) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for i, mult in enumerate((1, 2, 4, 8)):
        cout = width * mult
        stride = 1 if i == 0 else 2
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


# -------------------------------------------------------------------------------- registry


def _mlp(shape, num_classes, hidden: Sequence[int] = (128,), head_hidden: Sequence[int] = (64,)):
    c, h, w = shape
    layers: list[nn.Module] = [nn.Flatten()]
    d = c * h * w
    for k in hidden:
        layers += [nn.Linear(d, k), nn.ReLU()]
        d = k
    return nn.Sequential(*layers), d, relu_head(d, head_hidden, num_classes), False


def _small_cnn(shape, num_classes, channels: Sequence[int] = (32, 64), fc: int = 128, head_hidden: Sequence[int] = (64,)):
    c, h, w = shape
    layers: list[nn.Module] = []
    cin = c
    for cout in channels:
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        cin = cout
        h, w = h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(cin * h * w, fc), nn.ReLU()]
    return nn.Sequential(*layers), fc, relu_head(fc, head_hidden, num_classes), True


def _resnet18(shape, num_classes, width: int = 64, head_hidden: Sequence[int] = (128,)):
    body = resnet18_body(shape[0], width)
    return body, 8 * width, relu_head(8 * width, head_hidden, num_classes), True


MODELS: dict[str, Callable] = {"mlp": _mlp, "small_cnn": _small_cnn, "resnet18": _resnet18}


class ModelError(UserError, ValueError):
    pass


def build_model(name: str, image_shape: Sequence[int], num_classes: int, mean: Sequence[float],
                std: Sequence[float], **options) -> Classifier:
    """Build an architecture by name; ``options`` are the builder's keyword arguments (e.g. head_hidden)."""
    if name not in MODELS:
        near = difflib.get_close_matches(name, list(MODELS), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ModelError(f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(MODELS))}.")
    try:
        body, dim, head, conv = MODELS[name](tuple(image_shape), num_classes, **options)
    except TypeError as exc:
        raise ModelError(f"model {name!r}: bad option ({exc})") from exc
    return Classifier(Normalize(mean, std), body, head, dim, name, conv)


def head_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers of a model's head, checking that it is a ReLU MLP (what PRUNE needs)."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Sequential):
        raise ModelError("model has no nn.Sequential `head`")
    for m in head:
        if not isinstance(m, (nn.Linear, nn.ReLU)):
            raise ModelError(f"head is not a ReLU MLP: found {type(m).__name__}")
    return [m for m in head if isinstance(m, nn.Linear)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
