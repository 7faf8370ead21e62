"""On-disk cache of trained models (original and retrain reference), keyed by a hash of everything
that determines them. A checkpoint is a ``state_dict`` (loaded with ``weights_only=True``) plus a
JSON sidecar with how long it took to build; both are written atomically, the checkpoint last, so
a half-written entry is never read. Two processes racing on one key both train and one rename wins:
wasted work, never a corrupt file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .suite import stable_hash

# Bump when the training code changes in a way that changes trained weights: stale entries then miss.
TRAINING_CODE_VERSION = 3


class ModelCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(kind: str, ingredients: dict[str, Any]) -> str:
        return f"{kind}-{stable_hash({'kind': kind, 'code': TRAINING_CODE_VERSION, **ingredients}, 24)}"

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.pt", self.root / f"{key}.json"

    def has(self, key: str) -> bool:
        pt, meta = self.paths(key)
        return pt.is_file() and meta.is_file()

    def load(self, key: str, model: nn.Module) -> dict[str, Any]:
        pt, meta = self.paths(key)
        state = torch.load(pt, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return json.loads(meta.read_text())

    def save(self, key: str, model: nn.Module, info: dict[str, Any]) -> None:
        pt, meta = self.paths(key)
        tag = f".tmp{os.getpid()}"
        tmp_meta = meta.with_name(meta.name + tag)
        tmp_meta.write_text(json.dumps(info, sort_keys=True, indent=1))
        os.replace(tmp_meta, meta)
        tmp_pt = pt.with_name(pt.name + tag)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp_pt)
        os.replace(tmp_pt, pt)

    def get_or_build(self, key: str, make: Callable[[], nn.Module], build: Callable[[nn.Module], dict[str, Any]],
                     device: torch.device) -> tuple[nn.Module, dict[str, Any], bool]:
        """Return (model on device, info, built_now). ``build(model)`` trains in place and returns info."""
        model = make()
        if self.has(key):
            info = self.load(key, model)
            return model.to(device), info, False
        info = build(model)
        self.save(key, model, info)
        return model, info, True
