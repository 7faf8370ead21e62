"""Accuracy metrics (docs/metrics.md, "accuracy"): retain, forget and test accuracy, SalUn's UA, and for
class forgetting the test accuracy split into the forgotten class and the rest."""

from __future__ import annotations

import numpy as np

from .base import EvalContext, MetricResult, register_metric, value


def _correct(ctx: EvalContext, part: str) -> np.ndarray:
    return (ctx.logits(part).argmax(1) == ctx.part(part).y).cpu().numpy()


_ACC = dict(kind="score", unit="fraction", family="accuracy")


@register_metric("accuracy", produces=(
    value("retain_acc", direction="higher", definition="accuracy on the retain set D_r", sample="D_r", **_ACC),
    value("forget_acc", direction="closest", definition="accuracy on the forget set D_f (its target is retrain's "
          "value, which generalisation keeps above 0 except for a forgotten class)", sample="D_f", **_ACC),
    value("test_acc", direction="higher", definition="accuracy on the test split D_t", sample="D_t", **_ACC),
    value("UA", direction="closest", definition="unlearning accuracy, 1 − forget_acc (SalUn's convention)",
          sample="D_f", **_ACC),
    value("test_acc_forgotten_class", direction="closest", definition="test accuracy on the forgotten class "
          "(class requests; NaN otherwise)", sample="test images of the forgotten class", **_ACC),
    value("test_acc_rest", direction="higher", definition="test accuracy on the other classes (class requests; "
          "NaN otherwise)", sample="test images of the other classes", **_ACC)),
    description="Acc on D_r, D_f, D_t; UA = 1 - forget_acc; class requests split test acc")
def accuracy_metrics(ctx: EvalContext) -> MetricResult:
    forget = _correct(ctx, "forget")
    test = _correct(ctx, "test")
    values = {"retain_acc": float(_correct(ctx, "retain").mean()), "forget_acc": float(forget.mean()),
              "test_acc": float(test.mean())}
    values["UA"] = 1.0 - values["forget_acc"]
    if ctx.split.forget_class is not None:
        in_class = (ctx.test.y == ctx.split.forget_class).cpu().numpy()
        values["test_acc_forgotten_class"] = float(test[in_class].mean()) if in_class.any() else float("nan")
        values["test_acc_rest"] = float(test[~in_class].mean()) if (~in_class).any() else float("nan")
    return MetricResult(values, {"forget_correct": forget.astype(np.int8), "test_correct": test.astype(np.int8)})
