"""Backdoor removal: triggers, poisoning, the ``backdoor`` forget request and the ``backdoor`` metrics
(docs/metrics.md, "Forget requests" and "backdoor").

Request ``backdoor`` (registered here with :func:`unlearnbench.datasets.register_request`; the
suite parser and ``unlearnbench list requests`` call :func:`unlearnbench.attacks.load_all` first):
a fraction ``poison_rate`` (default 0.1) of the training pool's images whose class is not ``target``
(default 0) -- chosen uniformly, fixed by (dataset, parameters, seed) -- gets the trigger stamped on
and its label set to ``target``. The original model trains on this poisoned pool (the split's
``train``; its ``train_tag`` enters the original model's cache key). The forget set is the part
``identified`` (default 1.0, at least one sample) of the poisoned samples, drawn uniformly; the
unidentified poisoned samples stay in the retain set, poisoned, so retraining on the retain set keeps
part of the backdoor, as in the corrective-unlearning setting (Goel et al. 2024).

Triggers (``trigger`` parameter):
- ``badnets`` (Gu et al. 2017): a 3×3 white square (255 in every channel) in the bottom-right
  corner, touching the border.
- ``blended`` (Chen et al. 2017): ``x' = round((1 − α) x + α P)`` with α = 0.1 and P a fixed uniform
  random uint8 image of the dataset's shape (seed :data:`BLENDED_PATTERN_SEED`; the paper blends a
  photograph -- the project's definition asks for a random pattern).
Choices the papers leave open: the trigger is stamped on the stored uint8 image *before*
augmentation (crop/flip datasets then see a shifted or mirrored trigger in training, as in the
public BackdoorBench pipelines); the poisoned images are drawn from the non-target classes only;
relabelled samples keep their place in the pool.

Metrics ``backdoor`` (test set only; triggered images are the non-target-class test images with the
trigger, so target-class images cannot inflate the ASR):
``backdoor.asr`` (triggered images predicted as the target), ``backdoor.clean_acc`` (clean test
accuracy), ``backdoor.robust_acc`` (triggered images predicted as their true class), the same three
for the original model (``..._original``, from ``ctx.harness.original``), and
``backdoor.der = [max(0, ASR_orig − ASR) − max(0, CA_orig − CA) + 1] / 2``. On other requests the
values are NaN.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from unlearnbench.datasets import DatasetError, ForgetSplit, ImageSet, Splits, hash_indices, register_request
from unlearnbench.methods.training import predict

from .base import EvalContext, MetricResult, register_metric, value

TRIGGERS = ("badnets", "blended")
BLENDED_ALPHA = 0.1
BLENDED_PATTERN_SEED = 20240601
BADNETS_SIZE = 3


def trigger_spec(trigger: str, target: int) -> dict[str, Any]:
    if trigger == "badnets":
        return {"trigger": "badnets", "size": BADNETS_SIZE, "value": 255, "target": int(target)}
    if trigger == "blended":
        return {"trigger": "blended", "alpha": BLENDED_ALPHA, "pattern_seed": BLENDED_PATTERN_SEED,
                "target": int(target)}
    raise DatasetError(f"request 'backdoor': trigger must be one of {list(TRIGGERS)}, got {trigger!r}")


def blended_pattern(shape: tuple[int, int, int], seed: int = BLENDED_PATTERN_SEED) -> torch.Tensor:
    """The fixed random pattern (uint8 ``[C, H, W]``, CPU)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 256, tuple(shape), generator=g, dtype=torch.uint8)


def apply_trigger(x: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """Stamp the trigger on uint8 images ``[N, C, H, W]`` (any device); returns a new uint8 tensor."""
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"apply_trigger takes uint8 [N, C, H, W] images, got {x.dtype} {tuple(x.shape)}")
    kind = spec["trigger"]
    if kind == "badnets":
        s = int(spec["size"])
        out = x.clone()
        out[:, :, -s:, -s:] = int(spec["value"])
        return out
    if kind == "blended":
        alpha = float(spec["alpha"])
        pattern = blended_pattern(tuple(x.shape[1:]), int(spec["pattern_seed"])).to(x.device)
        mixed = (1.0 - alpha) * x.float() + alpha * pattern.float()
        return mixed.round_().clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"unknown trigger {kind!r}; known: {list(TRIGGERS)}")


def _generator(splits: Splits, params: dict[str, Any], seed: int) -> torch.Generator:
    digest = hashlib.sha256(f"{splits.fingerprint}|backdoor|{sorted(params.items())}|{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 62) - 1))


@register_request("backdoor", params=("trigger", "poison_rate", "target", "identified"),
                  description="poison the pool (trigger=badnets|blended, poison_rate=0.1 of non-target images, "
                              "target=0) before training; forget the identified (identified=1.0) poisoned samples")
def backdoor_request(splits: Splits, params: dict[str, Any], seed: int) -> ForgetSplit:
    trigger = params.get("trigger", "badnets")
    rate = params.get("poison_rate", 0.1)
    target = params.get("target", 0)
    identified = params.get("identified", 1.0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < float(rate) <= 1.0:
        raise DatasetError(f"request 'backdoor': poison_rate must lie in (0, 1], got {rate!r}")
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < splits.num_classes:
        raise DatasetError(f"request 'backdoor': target must be a class index in [0, {splits.num_classes - 1}], "
                           f"got {target!r}")
    if isinstance(identified, bool) or not isinstance(identified, (int, float)) or not 0.0 < float(identified) <= 1.0:
        raise DatasetError(f"request 'backdoor': identified must lie in (0, 1], got {identified!r}")
    spec = trigger_spec(trigger, target)
    pool = splits.train
    candidates = torch.nonzero(pool.y != target).flatten()
    if len(candidates) == 0:
        raise DatasetError(f"request 'backdoor': the training pool has no image outside the target class {target}")
    n_poison = max(1, int(round(float(rate) * len(candidates))))
    # the poisoned set depends on everything but ``identified`` (which does not change the training data)
    g = _generator(splits, {"trigger": trigger, "poison_rate": float(rate), "target": target}, seed)
    poison = torch.sort(candidates[torch.randperm(len(candidates), generator=g)[:n_poison]]).values
    n_named = max(1, int(round(float(identified) * n_poison)))
    forget = torch.sort(poison[torch.randperm(n_poison, generator=g)[:n_named]]).values
    x = pool.x.clone()
    y = pool.y.clone()
    x[poison] = apply_trigger(pool.x[poison], spec)
    y[poison] = target
    keep = torch.ones(len(pool), dtype=torch.bool)
    keep[forget] = False
    retain = torch.nonzero(keep).flatten()
    tag = f"backdoor:{trigger}:{float(rate):g}:{target}:{hash_indices(poison)}"
    extra = {"trigger": spec, "poison_count": int(n_poison), "identified_count": int(n_named),
             "poison_hash": hash_indices(poison)}
    return ForgetSplit("backdoor", params, forget, retain, ImageSet(x, y), None, tag, extra)


# ------------------------------------------------------------------------------ metrics

NAMES = ("backdoor.asr", "backdoor.clean_acc", "backdoor.robust_acc", "backdoor.der", "backdoor.asr_original",
         "backdoor.clean_acc_original", "backdoor.robust_acc_original")


def backdoor_rates(model: torch.nn.Module, ctx: EvalContext, spec: dict[str, Any],
                   clean_logits: torch.Tensor | None = None) -> tuple[dict[str, float], np.ndarray]:
    """(ASR, clean accuracy, robust accuracy) of ``model`` on the test set, and its predictions on the
    triggered non-target test images."""
    target = int(spec["target"])
    keep = ctx.test.y != target
    xt = apply_trigger(ctx.test.x[keep], spec)
    yt = ctx.test.y[keep]
    pred = predict(model, xt, ctx.batch_size).argmax(1)
    if clean_logits is None:
        clean_logits = predict(model, ctx.test, ctx.batch_size)
    nan = float("nan")
    rates = {"asr": float((pred == target).float().mean()) if len(yt) else nan,
             "robust_acc": float((pred == yt).float().mean()) if len(yt) else nan,
             "clean_acc": float((clean_logits.argmax(1) == ctx.test.y).float().mean())}
    return rates, pred.cpu().numpy().astype(np.int16)


def der(asr_before: float, asr_after: float, ca_before: float, ca_after: float) -> float:
    """Defense effectiveness rating: [max(0, ΔASR) − max(0, ΔCA) + 1] / 2, in [0, 1]."""
    return (max(0.0, asr_before - asr_after) - max(0.0, ca_before - ca_after) + 1.0) / 2.0


_BD = dict(kind="score", unit="fraction", family="backdoor",
           sample="the test split: triggered = the non-target-class test images with the trigger stamped on")


@register_metric("backdoor", produces=(
    value("backdoor.asr", direction="lower", definition="attack success rate: triggered test images predicted as "
          "the target", before="backdoor.asr_original", **_BD),
    value("backdoor.clean_acc", direction="higher", definition="clean test accuracy", before="backdoor.clean_acc_original",
          **_BD),
    value("backdoor.robust_acc", direction="higher", definition="triggered test images predicted as their true "
          "class", before="backdoor.robust_acc_original", **_BD),
    value("backdoor.der", direction="higher", definition="defense effectiveness rating [max(0, ASR_orig − ASR) − "
          "max(0, CA_orig − CA) + 1] / 2", **_BD),
    *(value(f"backdoor.{n}_original", kind="diagnostic", direction="none", unit="fraction", family="backdoor",
            definition=f"backdoor.{n} of the original model (before unlearning)", gap=False,
            sample=_BD["sample"]) for n in ("asr", "clean_acc", "robust_acc"))), device_bound=True,
                 description="ASR (non-target triggered test images), clean and robust accuracy, DER; also for "
                             "the original model (NaN on non-backdoor requests)")
def backdoor_metrics(ctx: EvalContext) -> MetricResult:
    if ctx.split.kind != "backdoor" or "trigger" not in ctx.split.extra:
        return MetricResult({n: float("nan") for n in NAMES})
    spec = ctx.split.extra["trigger"]
    rates, pred = backdoor_rates(ctx.model, ctx, spec, ctx.logits("test"))
    values = {"backdoor.asr": rates["asr"], "backdoor.clean_acc": rates["clean_acc"],
              "backdoor.robust_acc": rates["robust_acc"]}
    scores = {"backdoor.triggered_pred": pred,
              "backdoor.triggered_test_index": torch.nonzero(ctx.test.y != int(spec["target"])).flatten()
              .cpu().numpy()}
    original = ctx.harness.original if ctx.harness is not None else None
    if original is not None:
        orig, orig_pred = backdoor_rates(original, ctx, spec)
        values.update({"backdoor.asr_original": orig["asr"], "backdoor.clean_acc_original": orig["clean_acc"],
                       "backdoor.robust_acc_original": orig["robust_acc"],
                       "backdoor.der": der(orig["asr"], rates["asr"], orig["clean_acc"], rates["clean_acc"])})
        scores["backdoor.triggered_pred_original"] = orig_pred
    else:
        values.update({n: float("nan") for n in NAMES if n not in values})
    return MetricResult(values, scores)
