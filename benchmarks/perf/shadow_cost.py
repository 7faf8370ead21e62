"""Cost of training LiRA shadow models: batched (``torch.func`` vmap) versus one model after another.

    python -m unlearnbench.benchmarks.perf.shadow_cost --data-root ../shared/data --out shadow_cost.json

Measures, with :func:`unlearnbench.attacks.shadows.train_shadow_models` exactly as ``mia.lira`` calls
it (each shadow on a balanced half of a LiRA pool = training pool + test set):

- ``mnist``: the small CNN (conv32-conv64-fc128) on MNIST, K = 16 and 64 (``--ks``), ``vmap`` and
  ``loop``, batch 256 (ANCHORS.md's per-step reference: 10.1 ms vs 48.7 ms at K=16, 4.8x), ``--epochs``
  epochs (default 3). The loop is ``fit`` (bf16 autocast + channels_last on CUDA), the vmapped trainer
  fp32/TF32: this is the choice ``trainer = "auto"`` makes, timed.
- ``cifar``: ResNet-18 on ``cifar10-jpeg``, 16 shadows with the trainer ``auto`` picks (the loop:
  11 M parameters), the privacy suite's recipe (20 epochs, batch 512, crop+flip); ``--cifar-epochs``
  shortens it. ``--resnet-vmap-k K`` also times a few vmapped ResNet-18 steps for K shadows (fp32),
  to show why ``auto`` does not batch it.

Every timing is wall clock around the call with ``torch.cuda.synchronize()`` before and after, after
one untimed warm-up call of a few steps (cuDNN autotuning, kernel caches). Prints a table and writes
the numbers, the device and the library versions as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from unlearnbench.attacks.shadows import balanced_memberships, count_params, resolve_mode, train_shadow_models
from unlearnbench.datasets import DatasetSpec, TensorData, build_splits
from unlearnbench.methods.models import build_model
from unlearnbench.methods.training import Recipe, prepare


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(device: torch.device) -> None:
    if device.type == "cuda":  # what the harness sets (benchmarks.harness.setup_device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _pool(name: str, data_root: str | None, device: torch.device, train_subset: int | None = None):
    splits = build_splits(DatasetSpec(name, train_subset=train_subset), data_root)
    n_test = min(len(splits.test), len(splits.train))
    train = TensorData.from_imageset(splits.train, device, splits.augment)
    test = TensorData.from_imageset(splits.test.subset(torch.arange(n_test)), device, splits.augment)
    x = splits.train.x.double() / 255.0
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return splits, train.concat(test), mean, std


def _maker(arch: str, splits, mean, std, device):
    def make():
        return prepare(build_model(arch, splits.image_shape, splits.num_classes, mean, std), device)

    return make


def _time(make, pool, member, recipe, device, mode, epochs) -> float:
    _sync(device)
    t0 = time.perf_counter()
    train_shadow_models(make, pool, member, recipe, list(range(1, member.shape[0] + 1)), device, mode=mode,
                        epochs=epochs)
    _sync(device)
    return time.perf_counter() - t0


def _steps(n_per_shadow: int, batch: int, epochs: float) -> int:
    return max(1, math.ceil(epochs * math.ceil(n_per_shadow / batch)))


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    _setup(device)
    rows: list[dict] = []
    if "mnist" in args.what:
        splits, pool, mean, std = _pool("mnist", args.data_root, device, args.mnist_subset)
        make = _maker("small_cnn", splits, mean, std, device)
        recipe = Recipe(epochs=args.epochs, batch_size=256, lr=0.05, augment=False)
        for k in args.ks:
            member = balanced_memberships(k, len(pool), np.random.default_rng(0))
            warm = max(2.0 / math.ceil(len(pool) / 2 / 256), 1e-3)  # ~2 steps
            steps = _steps(int(member[0].sum()), 256, args.epochs)
            times = {}
            for mode in ("vmap", "loop"):
                _time(make, pool, member, recipe, device, mode, warm)
                times[mode] = _time(make, pool, member, recipe, device, mode, args.epochs)
            rows.append({"what": f"mnist small_cnn K={k}", "k": k, "params": count_params(make()),
                         "train_per_shadow": int(member[0].sum()), "epochs": args.epochs, "batch": 256,
                         "steps_per_shadow": steps, "vmap_s": times["vmap"], "loop_s": times["loop"],
                         "vmap_ms_per_step": 1e3 * times["vmap"] / steps,
                         "loop_ms_per_step_all_k": 1e3 * times["loop"] / steps,
                         "speedup": times["loop"] / times["vmap"],
                         "auto": resolve_mode("auto", make(), device)})
    if "cifar" in args.what:
        splits, pool, mean, std = _pool("cifar10-jpeg", args.data_root, device)
        make = _maker("resnet18", splits, mean, std, device)
        recipe = Recipe(epochs=args.cifar_epochs, batch_size=512, lr=0.2, augment=True)
        member = balanced_memberships(16, len(pool), np.random.default_rng(0))
        mode = resolve_mode("auto", make(), device)
        steps = _steps(int(member[0].sum()), 512, args.cifar_epochs)
        _time(make, pool, member[:1], recipe, device, mode, 2.0 / math.ceil(member[0].sum() / 512))
        total = _time(make, pool, member, recipe, device, mode, args.cifar_epochs)
        rows.append({"what": "cifar10-jpeg resnet18 K=16", "k": 16, "params": count_params(make()),
                     "train_per_shadow": int(member[0].sum()), "epochs": args.cifar_epochs, "batch": 512,
                     "steps_per_shadow": steps, f"{mode}_s": total, "per_shadow_s": total / 16, "auto": mode})
        if args.resnet_vmap_k:
            k = args.resnet_vmap_k
            few = 10.0 / math.ceil(member[0].sum() / 512)  # ~10 steps
            vm = {}
            row = {"what": f"cifar10-jpeg resnet18 K={k}, 10 steps", "k": k, "params": count_params(make()),
                   "batch": 512, "steps_per_shadow": 10, "auto": mode}
            try:
                for m in ("vmap", "loop"):
                    _time(make, pool, member[:k], recipe, device, m, 2.0 / math.ceil(member[0].sum() / 512))
                    vm[m] = _time(make, pool, member[:k], recipe, device, m, few)
                row.update({"vmap_s": vm["vmap"], "loop_s": vm["loop"], "speedup": vm["loop"] / vm["vmap"]})
            except (RuntimeError, torch.OutOfMemoryError) as exc:  # report it: the reason auto does not batch
                row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            rows.append(row)
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
           else (platform.processor() or platform.machine()), "cuda": torch.version.cuda,
           "python": platform.python_version()}
    return {"env": env, "args": {k: v for k, v in vars(args).items() if k != "func"}, "rows": rows}


def _table(result: dict) -> str:
    cols = ["what", "params", "steps_per_shadow", "vmap_s", "loop_s", "speedup", "vmap_ms_per_step",
            "loop_ms_per_step_all_k", "per_shadow_s", "auto", "error"]
    rows = result["rows"]
    cols = [c for c in cols if any(c in r for r in rows)]

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [f"device: {result['env']['device']}  torch {result['env']['torch']}",
             "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="write the measurements as JSON here")
    p.add_argument("--data-root", default=None, help="folder with mnist/ and cifar10_jpeg/ (e.g. ../shared/data)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--what", default="mnist,cifar", type=lambda s: s.split(","), help="mnist,cifar")
    p.add_argument("--ks", default="16,64", type=lambda s: [int(x) for x in s.split(",")], help="K for mnist")
    p.add_argument("--epochs", type=float, default=3.0, help="epochs per MNIST shadow")
    p.add_argument("--mnist-subset", type=int, default=None, help="train_subset of MNIST (a quick run)")
    p.add_argument("--cifar-epochs", type=float, default=20.0, help="epochs per ResNet-18 shadow")
    p.add_argument("--resnet-vmap-k", type=int, default=0, help="also time 10 vmapped ResNet-18 steps for K shadows")
    args = p.parse_args(argv)
    result = run(args)
    print(_table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
