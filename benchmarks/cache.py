"""On-disk cache of trained models (original and retrain reference), keyed by a hash of everything
that determines them. A checkpoint is a ``state_dict`` (loaded with ``weights_only=True``) plus a
JSON sidecar with how long it took to build and the key and sha256 of the checkpoint's bytes; both
are written atomically, the checkpoint last. Every load checks the key and the hash, so a truncated,
garbage or swapped checkpoint is reported with its path and rebuilt, never used. Two processes
racing on one key both train and one rename wins: wasted work, never a corrupt file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from unlearnbench.tempfiles import clean_dead_temporaries, temp_tag

from .suite import stable_hash
from .validate import one_line, warn

# Bump when the training code changes in a way that changes trained weights: stale entries then miss.
TRAINING_CODE_VERSION = 4  # 4: fit folds the ragged rest of an epoch into its last batch


class CacheEntryError(RuntimeError):
    """A cache entry failed its checks (the harness rebuilds it); the message names the file."""


class ModelCache:
    """Checkpoints under ``root``: ``<key>.pt`` and ``<key>.json`` (the harness's info, plus a ``checkpoint``
    block with the key and the sha256 and size of the ``.pt`` bytes). An entry is used only when the
    sidecar names this key and the bytes hash as recorded; anything else (truncated, garbage, a copy of
    another entry, written by an older version) is reported with its path, removed and rebuilt.
    ``readonly`` (a cache in a read-only folder): nothing is written or removed; a bad entry is skipped."""

    def __init__(self, root: str | Path, readonly: bool = False):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            from .validate import InputError

            raise InputError(f"model cache {self.root} is a file, not a folder: pass --cache-dir naming a folder")
        self.readonly = readonly
        if not readonly:
            self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(kind: str, ingredients: dict[str, Any]) -> str:
        return f"{kind}-{stable_hash({'kind': kind, 'code': TRAINING_CODE_VERSION, **ingredients}, 24)}"

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.pt", self.root / f"{key}.json"

    # ------------------------------------------------------------------------------ checks
    def _problem(self, key: str, data: bytes | None = None) -> tuple[str | None, dict[str, Any]]:
        """(why the entry is unusable or None, its info). ``data``: the checkpoint bytes, if read already."""
        pt, meta = self.paths(key)
        try:
            info = json.loads(meta.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return f"its sidecar {meta.name} is unreadable ({type(exc).__name__})", {}
        check = info.get("checkpoint") if isinstance(info, dict) else None
        if not isinstance(check, dict):
            return f"its sidecar {meta.name} has no content hash (written by an older unlearnbench)", {}
        if check.get("key") != key:
            return f"its sidecar names another entry ({check.get('key')!r}): a copy of another cell's model", {}
        if data is None:
            try:
                size = pt.stat().st_size
            except OSError as exc:
                return f"its checkpoint is unreadable ({exc.strerror})", {}
            if size != check.get("bytes"):
                return f"its checkpoint has {size} bytes, {check.get('bytes')} were written (truncated or replaced)", {}
            try:
                data = pt.read_bytes()
            except OSError as exc:
                return f"its checkpoint is unreadable ({exc.strerror})", {}
        if hashlib.sha256(data).hexdigest() != check.get("sha256"):
            return "its checkpoint's sha256 differs from the one written (corrupt or replaced)", {}
        return None, {k: v for k, v in info.items() if k != "checkpoint"}

    def _reject(self, key: str, why: str) -> None:
        pt, _ = self.paths(key)
        if self.readonly:
            warn(f"model cache entry {pt} is unusable: {why}; not used (the cache is read-only), training anew")
            return
        for p in self.paths(key):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        warn(f"model cache entry {pt} is unusable: {why}; removed, rebuilding it")

    def has(self, key: str) -> bool:
        """True when a verified entry exists; a bad one is reported, removed and counts as missing."""
        pt, meta = self.paths(key)
        if not (pt.is_file() and meta.is_file()):
            return False
        why, _ = self._problem(key)
        if why:
            self._reject(key, why)
            return False
        return True

    def load(self, key: str, model: nn.Module) -> dict[str, Any]:
        """Load a verified entry into ``model`` and return its info; :class:`CacheEntryError` (after reporting
        and removing the entry) when it fails a check or does not load."""
        pt, _ = self.paths(key)
        try:
            data = pt.read_bytes()
        except OSError as exc:
            self._reject(key, f"its checkpoint is unreadable ({exc.strerror})")
            raise CacheEntryError(f"model cache entry {pt} is unreadable") from exc
        why, info = self._problem(key, data)
        if why is None:
            try:
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                model.load_state_dict(state)
            except Exception as exc:  # noqa: BLE001 - any failure to load means: rebuild
                why = f"it does not load into the model ({type(exc).__name__}: {one_line(exc)[:200]})"
        if why:
            self._reject(key, why)
            raise CacheEntryError(f"model cache entry {pt} is unusable: {why}")
        return info

    # ------------------------------------------------------------------------------ writing
    def save(self, key: str, model: nn.Module, info: dict[str, Any]) -> None:
        if self.readonly:
            return
        pt, meta = self.paths(key)
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
        data = buf.getvalue()
        sidecar = {**info, "checkpoint": {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
        tag = temp_tag()
        tmp_pt, tmp_meta = pt.with_name(pt.name + tag), meta.with_name(meta.name + tag)
        try:
            with open(tmp_pt, "wb") as fh:
                fh.write(data)
            tmp_meta.write_text(json.dumps(sidecar, sort_keys=True, indent=1))
            os.replace(tmp_meta, meta)  # a sidecar without its checkpoint fails the hash check: rebuilt
            os.replace(tmp_pt, pt)
        finally:
            for p in (tmp_pt, tmp_meta):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def clean_stale(self) -> list[Path]:
        """Remove temporaries of writers that are gone (killed mid-save): ``*.tmp.<host>.<pid>`` of this host
        whose process no longer runs, and older ``*.tmp<pid>`` ones. Another live process's are kept."""
        if self.readonly:
            return []
        return clean_dead_temporaries(self.root)

    def get_or_build(self, key: str, make: Callable[[], nn.Module], build: Callable[[nn.Module], dict[str, Any]],
                     device: torch.device) -> tuple[nn.Module, dict[str, Any], bool]:
        """Return (model on device, info, built_now). ``build(model)`` trains in place and returns info."""
        model = make()
        if self.has(key):
            try:
                info = self.load(key, model)
                return model.to(device), info, False
            except CacheEntryError:
                model = make()
        info = build(model)
        self.save(key, model, info)
        return model, info, True
