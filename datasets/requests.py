"""Forget requests: deterministic functions (splits, parameters, seed) -> which training images to forget.

A request kind is registered with :func:`register_request`. ``build`` returns a :class:`ForgetSplit`
of indices into the training pool. A kind that changes the training data itself (``backdoor``
poisons it before the original model is trained) returns the data the original must train on in
``train`` and a ``train_tag`` that enters the original model's cache key; plain kinds leave both
at their defaults.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .base import DatasetError, ImageSet, close_matches
from .splits import Splits, hash_indices


@dataclass(frozen=True)
class ForgetSplit:
    kind: str
    params: dict[str, Any]
    forget_idx: torch.Tensor  # int64, sorted, indices into ``train``
    retain_idx: torch.Tensor  # int64, sorted, the complement
    train: ImageSet  # the data the original model trains on (the pool, or a poisoned pool)
    forget_class: int | None = None
    train_tag: str = ""  # non-empty when ``train`` differs from the pool; enters cache keys
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the backdoor trigger, for its metrics

    @property
    def hashes(self) -> dict[str, str]:
        return {"forget": hash_indices(self.forget_idx), "retain": hash_indices(self.retain_idx)}

    @property
    def label(self) -> str:
        return request_label(self.kind, self.params)


def request_label(kind: str, params: dict[str, Any]) -> str:
    """Short human name used in tables: ``random-10%``, ``class-3``, ``points-1``."""
    if kind == "random":
        if "fraction" in params:
            return f"random-{100 * float(params['fraction']):g}%"
        return f"random-{params.get('count')}"
    if kind == "class":
        return f"class-{params['class']}" if "class" in params else "class"
    if kind == "points":
        if "indices" in params:
            return f"points-{len(params['indices'])}"
        return f"points-{params.get('count')}"
    rest = ",".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "label")
    return params.get("label") or (f"{kind}({rest})" if rest else kind)


@dataclass(frozen=True)
class RequestKind:
    name: str
    build: Callable[[Splits, dict[str, Any], int], ForgetSplit]
    params: tuple[str, ...]
    description: str


_KINDS: dict[str, RequestKind] = {}


def register_request(name: str, *, params: tuple[str, ...], description: str):
    def deco(fn):
        if name in _KINDS:
            raise ValueError(f"request kind {name!r} is registered twice")
        _KINDS[name] = RequestKind(name, fn, params, description)
        return fn

    return deco


def list_requests() -> list[RequestKind]:
    return [_KINDS[k] for k in sorted(_KINDS)]


def build_request(splits: Splits, kind: str, params: dict[str, Any], seed: int) -> ForgetSplit:
    if kind not in _KINDS:
        raise DatasetError(f"unknown request kind {kind!r}.{close_matches(kind, _KINDS)} "
                           f"Known kinds: {', '.join(sorted(_KINDS))}.")
    info = _KINDS[kind]
    unknown = sorted(set(params) - set(info.params) - {"label"})
    if unknown:
        raise DatasetError(f"request {kind!r} has no parameter(s) {unknown}; it takes {list(info.params)}")
    split = info.build(splits, dict(params), int(seed))
    if split.forget_idx.numel() == 0:
        raise DatasetError(f"request {request_label(kind, params)} on {splits.spec.display} selects an empty forget set")
    if split.retain_idx.numel() == 0:
        raise DatasetError(f"request {request_label(kind, params)} on {splits.spec.display} leaves no retain data")
    return split


def params_hash(kind: str, params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([kind, params], sort_keys=True, default=str).encode()).hexdigest()[:12]


def _seeded(splits: Splits, kind: str, seed: int) -> torch.Generator:
    # the request's randomness depends on (dataset, kind, seed) only, not on other cells
    digest = hashlib.sha256(f"{splits.fingerprint}|{kind}|{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 62) - 1))


def _complement(n: int, forget: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[forget] = False
    return torch.nonzero(mask).flatten()


def _plain(splits: Splits, kind: str, params: dict, forget: torch.Tensor, forget_class: int | None = None):
    forget = torch.sort(forget.to(torch.int64)).values
    return ForgetSplit(kind, params, forget, _complement(len(splits.train), forget), splits.train, forget_class)


@register_request("random", params=("fraction", "count"),
                  description="a uniformly random subset of the training pool: fraction=0.1 or count=N")
def _random(splits: Splits, params: dict, seed: int) -> ForgetSplit:
    n = len(splits.train)
    if ("fraction" in params) == ("count" in params):
        raise DatasetError("request 'random' takes exactly one of fraction=<0..1> or count=<N>")
    if "fraction" in params:
        frac = float(params["fraction"])
        if not 0.0 < frac < 1.0:
            raise DatasetError(f"request 'random': fraction must lie in (0, 1), got {frac}")
        count = max(1, int(round(frac * n)))
    else:
        count = int(params["count"])
        if not 1 <= count < n:
            raise DatasetError(f"request 'random': count must lie in [1, {n - 1}], got {count}")
    perm = torch.randperm(n, generator=_seeded(splits, "random", seed))
    return _plain(splits, "random", params, perm[:count])


@register_request("class", params=("class",),
                  description="every training image of one class: class=<index or name> (absent: chosen by seed)")
def _class(splits: Splits, params: dict, seed: int) -> ForgetSplit:
    c = params.get("class")
    if c is None:
        c = int(torch.randint(splits.num_classes, (1,), generator=_seeded(splits, "class", seed)))
    elif isinstance(c, str) and not c.lstrip("-").isdigit():
        if c not in splits.classes:
            raise DatasetError(f"request 'class': no class named {c!r}.{close_matches(c, splits.classes)}")
        c = splits.classes.index(c)
    c = int(c)
    if not 0 <= c < splits.num_classes:
        raise DatasetError(f"request 'class': class {c} out of range [0, {splits.num_classes - 1}]")
    forget = torch.nonzero(splits.train.y == c).flatten()
    return _plain(splits, "class", params, forget, forget_class=c)


@register_request("points", params=("indices", "count"),
                  description="explicit training-pool indices (indices=[...]) or count=N points chosen by seed")
def _points(splits: Splits, params: dict, seed: int) -> ForgetSplit:
    n = len(splits.train)
    if ("indices" in params) == ("count" in params):
        raise DatasetError("request 'points' takes exactly one of indices=[...] or count=<N>")
    if "indices" in params:
        idx = [int(i) for i in params["indices"]]
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise DatasetError(f"request 'points': indices {bad[:5]} out of range [0, {n - 1}] of the "
                               f"{splits.spec.display} training pool")
        if len(set(idx)) != len(idx):
            raise DatasetError("request 'points': indices contain duplicates")
        forget = torch.tensor(idx, dtype=torch.int64)
    else:
        count = int(params["count"])
        if not 1 <= count < n:
            raise DatasetError(f"request 'points': count must lie in [1, {n - 1}], got {count}")
        forget = torch.randperm(n, generator=_seeded(splits, "points", seed))[:count]
    return _plain(splits, "points", params, forget)
