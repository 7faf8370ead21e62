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

from .base import DatasetError, ImageSet, close_matches, load_plugins
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


class RequestParamError(DatasetError):
    """A request parameter has the wrong type or range; ``key`` names it (suites report its line)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class RequestKind:
    name: str
    build: Callable[[Splits, dict[str, Any], int], ForgetSplit]
    params: tuple[str, ...]
    description: str
    check: Callable[[dict[str, Any]], None] | None = None  # types and ranges that need no data (suite parse time)


_KINDS: dict[str, RequestKind] = {}


def register_request(name: str, *, params: tuple[str, ...], description: str,
                     check: Callable[[dict[str, Any]], None] | None = None):
    """Register a request kind. ``check(params)`` (optional) validates parameter types and ranges without the
    data, raising :class:`RequestParamError`; the suite parser calls it, and so does :func:`build_request`."""

    def deco(fn):
        if name in _KINDS:
            raise ValueError(f"request kind {name!r} is registered twice")
        _KINDS[name] = RequestKind(name, fn, params, description, check)
        return fn

    return deco


def check_request(kind: str, params: dict[str, Any]) -> None:
    """Validate a request's parameters without the data (names, types, ranges); raises DatasetError."""
    load_plugins()
    if kind not in _KINDS:
        raise DatasetError(f"unknown request kind {kind!r}.{close_matches(kind, _KINDS)} "
                           f"Known kinds: {', '.join(sorted(_KINDS))}.")
    info = _KINDS[kind]
    unknown = sorted(set(params) - set(info.params) - {"label"})
    if unknown:
        raise RequestParamError(unknown[0], f"request {kind!r} has no parameter(s) {unknown}; it takes "
                                            f"{list(info.params)}")
    label = params.get("label")
    if "label" in params and (not isinstance(label, str) or not label.strip()):
        raise RequestParamError("label", f"request {kind!r}: label must be a non-empty string, got {label!r}")
    if info.check is not None:
        info.check(params)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _one_of(kind: str, params: dict, a: str, b: str, hint: str) -> None:
    if (a in params) == (b in params):
        raise RequestParamError(a if a in params else kind, f"request {kind!r} takes exactly one of {hint}")


def _count(kind: str, params: dict) -> None:
    c = params["count"]
    if not _is_int(c) or c < 1:
        raise RequestParamError("count", f"request {kind!r}: count must be a positive integer, got {c!r}")


def _check_random(params: dict) -> None:
    _one_of("random", params, "fraction", "count", "fraction=<0..1> or count=<N>")
    if "fraction" in params:
        f = params["fraction"]
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f < 1.0:
            raise RequestParamError("fraction", f"request 'random': fraction must lie in (0, 1) (a number), got {f!r}")
    else:
        _count("random", params)


def _check_class(params: dict) -> None:
    if "class" not in params:
        return
    c = params["class"]
    if _is_int(c):
        if c < 0:
            raise RequestParamError("class", f"request 'class': class must be a class index >= 0 or a class name, "
                                             f"got {c!r}")
    elif not (isinstance(c, str) and c.strip()):
        raise RequestParamError("class", f"request 'class': class must be an integer class index or a class name "
                                         f"(a string), got {c!r}")


def _check_points(params: dict) -> None:
    _one_of("points", params, "indices", "count", "indices=[...] or count=<N>")
    if "indices" in params:
        idx = params["indices"]
        if not isinstance(idx, (list, tuple)):
            raise RequestParamError("indices", f"request 'points': indices must be a list of integers, "
                                               f"e.g. indices = [1, 2], got {idx!r}")
        if not idx:
            raise RequestParamError("indices", "request 'points': indices = [] selects an empty forget set: give at "
                                               "least one index")
        bad = [i for i in idx if not _is_int(i) or i < 0]
        if bad:
            raise RequestParamError("indices", f"request 'points': indices must be integers >= 0, got {bad[:5]!r}")
        if len(set(idx)) != len(idx):
            dup = sorted({i for i in idx if idx.count(i) > 1})
            raise RequestParamError("indices", f"request 'points': indices contain duplicates {dup[:5]}")
    else:
        _count("points", params)


def list_requests() -> list[RequestKind]:
    load_plugins()
    return [_KINDS[k] for k in sorted(_KINDS)]


def build_request(splits: Splits, kind: str, params: dict[str, Any], seed: int) -> ForgetSplit:
    load_plugins()
    if kind not in _KINDS:
        raise DatasetError(f"unknown request kind {kind!r}.{close_matches(kind, _KINDS)} "
                           f"Known kinds: {', '.join(sorted(_KINDS))}.")
    info = _KINDS[kind]
    check_request(kind, params)
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


@register_request("random", params=("fraction", "count"), check=_check_random,
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


@register_request("class", params=("class",), check=_check_class,
                  description="every training image of one class: class=<index or name> (absent: chosen by seed)")
def _class(splits: Splits, params: dict, seed: int) -> ForgetSplit:
    c = params.get("class")
    if c is None:
        c = int(torch.randint(splits.num_classes, (1,), generator=_seeded(splits, "class", seed)))
    elif isinstance(c, str) and not c.isdigit():
        if c not in splits.classes:
            raise DatasetError(f"request 'class': no class named {c!r}.{close_matches(c, splits.classes)}")
        c = splits.classes.index(c)
    c = int(c)
    if not 0 <= c < splits.num_classes:
        raise DatasetError(f"request 'class': class {c} out of range [0, {splits.num_classes - 1}]")
    forget = torch.nonzero(splits.train.y == c).flatten()
    return _plain(splits, "class", params, forget, forget_class=c)


@register_request("points", params=("indices", "count"), check=_check_points,
                  description="explicit training-pool indices (indices=[...]) or count=N points chosen by seed")
def _points(splits: Splits, params: dict, seed: int) -> ForgetSplit:
    n = len(splits.train)
    if ("indices" in params) == ("count" in params):
        raise DatasetError("request 'points' takes exactly one of indices=[...] or count=<N>")
    if "indices" in params:
        idx = list(params["indices"])
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
