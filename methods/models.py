"""Architectures. Every model takes float images in [0, 1] (normalisation is its first layer), and
exposes ``features(x) -> z`` and a ReLU MLP ``head`` with ``forward(x) == head(features(x))``.
PRUNE patches the head; methods that need penultimate features use ``features``.

- ``mlp``: flatten -> Linear/ReLU blocks (features) -> head. For the 8x8 digits.
- ``small_cnn``: conv32-pool-conv64-pool-fc128 (features) -> head. For MNIST-family images.
- ``resnet18``: ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool) -> 512-d features -> head.

More architectures: :func:`register_model` (here, or in a plug-in's ``unlearnbench.models`` entry point).
"""

from __future__ import annotations

import difflib
from typing import Callable, Iterator, Mapping, Sequence

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
    """flatten -> Linear/ReLU blocks (options: hidden, head_hidden); for the 8x8 digits"""
    c, h, w = shape
    layers: list[nn.Module] = [nn.Flatten()]
    d = c * h * w
    for k in hidden:
        layers += [nn.Linear(d, k), nn.ReLU()]
        d = k
    return nn.Sequential(*layers), d, relu_head(d, head_hidden, num_classes), False


def _small_cnn(shape, num_classes, channels: Sequence[int] = (32, 64), fc: int = 128, head_hidden: Sequence[int] = (64,)):
    """conv-pool blocks -> fc (options: channels, fc, head_hidden); for MNIST-family images"""
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
    """ResNet-18 with the CIFAR stem (options: width, head_hidden); for CIFAR-size images"""
    body = resnet18_body(shape[0], width)
    return body, 8 * width, relu_head(8 * width, head_hidden, num_classes), True


class ModelError(UserError, ValueError):
    pass


Builder = Callable[..., tuple[nn.Module, int, nn.Sequential, bool]]


class ModelRegistry(Mapping[str, Builder]):
    """The architectures by name (read-only mapping; add with :func:`register_model`). Looking a name up
    first loads the ``unlearnbench.models`` plug-ins (``unlearnbench.plugins``), so suites may name them."""

    def __init__(self) -> None:
        self._builders: dict[str, Builder] = {}
        self.origins: dict[str, str] = {}

    def _loaded(self) -> dict[str, Builder]:
        from unlearnbench import plugins

        plugins.ensure("unlearnbench.models", lambda: [self._builders, self.origins])
        return self._builders

    def __getitem__(self, name: str) -> Builder:
        return self._loaded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._loaded()))

    def __len__(self) -> int:
        return len(self._loaded())

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def add(self, name: str, builder: Builder) -> None:
        if not isinstance(name, str) or not name or name != name.strip():
            raise ModelError(f"model name must be a non-empty string without surrounding spaces, got {name!r}")
        if not callable(builder):
            raise ModelError(f"model {name!r}: the builder must be callable, got {builder!r}")
        if name in self._builders:
            old = getattr(self._builders[name], "__module__", "?")
            raise ModelError(f"model {name!r} is registered twice ({old} and {getattr(builder, '__module__', '?')})")
        from unlearnbench.plugins import origin_of

        self._builders[name] = builder
        self.origins[name] = origin_of(getattr(builder, "__module__", "") or "")


MODELS = ModelRegistry()


def register_model(name: str, builder: Builder | None = None):
    """Register an architecture: ``builder(image_shape, num_classes, **options) -> (body, feature_dim, head,
    is_conv)``, where ``body`` maps normalised images ``[N, C, H, W]`` to ``[N, feature_dim]`` features and
    ``head`` is an ``nn.Sequential`` (a ReLU MLP: Linear, ReLU, ..., Linear, for methods that patch it; see
    :func:`relu_head`). :func:`build_model` wraps them in a :class:`Classifier` (normalisation first,
    ``forward = head(features(x))``, example passes counted). Usable as a decorator
    (``@register_model("name")``) or a call (``register_model("name", fn)``); a name registered twice is an
    error. Plug-ins register through the ``unlearnbench.models`` entry-point group."""
    if builder is not None:
        MODELS.add(name, builder)
        return builder

    def deco(fn: Builder) -> Builder:
        MODELS.add(name, fn)
        return fn

    return deco


register_model("mlp", _mlp)
register_model("small_cnn", _small_cnn)
register_model("resnet18", _resnet18)


def model_names() -> list[str]:
    return sorted(MODELS)


def build_model(name: str, image_shape: Sequence[int], num_classes: int, mean: Sequence[float],
                std: Sequence[float], **options) -> Classifier:
    """Build an architecture by name; ``options`` are the builder's keyword arguments (e.g. head_hidden)."""
    if name not in MODELS:
        near = difflib.get_close_matches(name, list(MODELS), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ModelError(f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(MODELS))}.")
    try:
        built = MODELS[name](tuple(image_shape), num_classes, **options)
    except TypeError as exc:
        raise ModelError(f"model {name!r}: bad option ({exc})") from exc
    if not (isinstance(built, tuple) and len(built) == 4 and isinstance(built[0], nn.Module)
            and isinstance(built[2], nn.Module)):
        raise ModelError(f"model {name!r}: its builder must return (body, feature_dim, head, is_conv) with "
                         f"body and head nn.Modules, got {type(built).__name__} (see register_model)")
    body, dim, head, conv = built
    return Classifier(Normalize(mean, std), body, head, int(dim), name, bool(conv))


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
