"""Regenerate the golden leaderboard fixtures in this folder from a real tiny CPU run.

    python tests/golden/make_golden.py              # re-run the tiny suite, rewrite records + texts
    python tests/golden/make_golden.py --text-only  # keep records.json, rewrite the texts (after an
                                                    # intended change of the leaderboard's format)

The run: the embedded ``synthetic`` dataset, a tiny MLP, random 10% and class 1, seeds 0 and 1, the
``original`` and ``retrain`` references plus five toy methods registered here so the records cover
every row kind without depending on other methods' code: ``golden_scaled``, ``golden_sharpened`` and
``golden_shrunk`` (halve or double the last layer's weights, scale every weight by 0.9: real method
results, three of them so that the mean ranks across cells are tested), ``golden_class_only`` (tagged class_only: not applicable on the
random request) and ``golden_fail`` (raises: a failed cell). Records are stored as the store's
``RunRecord.row()`` dicts, reduced to what reports read (see :func:`reduce_rows`) to keep the file a
few KB.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "records.json"
GENERATED_AT = "GENERATED-AT"
SUITE = """
name = "golden"
description = "tiny synthetic suite behind tests/golden (tests/golden/make_golden.py)"
seeds = [0, 1]
methods = ["original", "retrain", "golden_scaled", "golden_sharpened", "golden_shrunk", "golden_class_only", "golden_fail"]
metrics = ["accuracy", "mia.loss_auc", "mia.svc_efficacy"]

[recipes.tiny]
epochs = 8
batch_size = 32
lr = 0.05
augment = false

[[datasets]]
name = "synthetic"
model = "mlp"
recipe = "tiny"
model_options = { hidden = [32], head_hidden = [16] }

[[requests]]
kind = "random"
fraction = 0.1

[[requests]]
kind = "class"
class = 1
"""


def register_toy_methods() -> None:
    from unlearnbench.methods import Method, UnlearnRequest, register

    @register("golden_scaled", summary="test fixture: halve the last linear layer's weights")
    @dataclass(frozen=True)
    class GoldenScaled(Method):
        def unlearn(self, request: UnlearnRequest) -> nn.Module:
            last = [m for m in request.model.modules() if isinstance(m, nn.Linear)][-1]
            with torch.no_grad():
                last.weight.mul_(0.5)
            return request.model

    @register("golden_sharpened", summary="test fixture: double the last linear layer's weights")
    @dataclass(frozen=True)
    class GoldenSharpened(Method):
        def unlearn(self, request: UnlearnRequest) -> nn.Module:
            last = [m for m in request.model.modules() if isinstance(m, nn.Linear)][-1]
            with torch.no_grad():
                last.weight.mul_(2.0)
            return request.model

    @register("golden_shrunk", summary="test fixture: scale every parameter by 0.9")
    @dataclass(frozen=True)
    class GoldenShrunk(Method):
        def unlearn(self, request: UnlearnRequest) -> nn.Module:
            with torch.no_grad():
                for p in request.model.parameters():
                    p.mul_(0.9)
            return request.model

    @register("golden_class_only", tags=("class_only",), summary="test fixture: class forgetting only")
    @dataclass(frozen=True)
    class GoldenClassOnly(Method):
        def unlearn(self, request: UnlearnRequest) -> nn.Module:
            return request.model

    @register("golden_fail", summary="test fixture: always fails")
    @dataclass(frozen=True)
    class GoldenFail(Method):
        def unlearn(self, request: UnlearnRequest) -> nn.Module:
            raise RuntimeError("deliberate failure of the golden_fail test fixture")


def run_tiny_suite() -> list[dict]:
    from unlearnbench.benchmarks.cli import main
    from unlearnbench.benchmarks.store import Store

    register_toy_methods()
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "golden.toml"
        suite.write_text(SUITE)
        rc = main(["run", "--suite", str(suite), "--results", str(Path(tmp) / "res"), "--quiet", "--device", "cpu"])
        if rc not in (0, 1):  # 1: the golden_fail cells failed, as intended
            raise SystemExit(f"the tiny run exited {rc}")
        with Store(Path(tmp) / "res") as store:
            rows = [r.row() for r in store.records(suite="golden")]
    rows.sort(key=lambda r: (r["request"], r["method"], r["seed"]))
    return rows


# What reports read from a record; the rest is left out of the fixture to keep it a few KB.
CONFIG_KEYS = ("dataset", "request", "metrics")
ENV_KEYS = ("git_commit", "git_dirty", "device_type", "device_name", "precision", "deterministic_algorithms",
            "cpu_threads", "torch", "torchvision", "numpy", "sklearn", "python", "unlearnbench", "peak_mem_note")
DROP = ("hashes", "config_hash", "scores_file", "cell_key")


def reduce_rows(rows: list[dict]) -> dict:
    """Rows -> {"env": the environment shared by all runs, "rows": rows without it}, trimmed to what reports
    read: config (dataset, request, metrics), env (provenance), every metric except the per-phase
    ``cell.*`` timings other than ``cell.total_s``, a failed run's first reason line, floats to 10 digits."""
    envs = {json.dumps({k: r["env"].get(k) for k in ENV_KEYS}, sort_keys=True) for r in rows}
    if len(envs) != 1:
        raise SystemExit("the tiny run's records disagree on their environment")
    out = []
    for r in rows:
        r = {k: v for k, v in r.items() if k not in DROP and k != "env"
             and not (k.startswith("cell.") and k != "cell.total_s")}
        r["config"] = {k: r["config"][k] for k in CONFIG_KEYS}
        if r["status"] == "failed":
            r["reason"] = r["reason"].strip().splitlines()[0]
        out.append({k: float(f"{v:.10g}") if isinstance(v, float) else v for k, v in r.items()})
    return {"env": json.loads(envs.pop()), "rows": out}


def load_records() -> list[dict]:
    data = json.loads(RECORDS.read_text())
    return [{**r, "env": dict(data["env"])} for r in data["rows"]]


def render_texts(rows: list[dict]) -> dict[str, str]:
    """The golden texts, exactly as ``unlearnbench leaderboard --generated-at GENERATED-AT`` renders them."""
    from unlearnbench.benchmarks.commands._results import declarations, reference_methods
    from unlearnbench.reports.leaderboard import build, render

    lb = build(rows, primary="avg_gap", specs=declarations(rows), references=reference_methods(),
               generated_at=GENERATED_AT, title="Leaderboard: suite golden")
    return {"leaderboard.md": render(lb, "md"), "leaderboard.csv": render(lb, "csv")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text-only", action="store_true", help="keep records.json; rewrite the golden texts")
    args = ap.parse_args(argv)
    if not args.text_only:
        rows = run_tiny_suite()
        data = reduce_rows(rows)
        lines = ",\n".join(json.dumps(r, sort_keys=True, separators=(",", ":")) for r in data["rows"])
        RECORDS.write_text('{"env":' + json.dumps(data["env"], sort_keys=True, separators=(",", ":")) +
                           ',\n"rows":[\n' + lines + "\n]}\n")
    rows = load_records()
    for name, text in render_texts(rows).items():
        (HERE / name).write_text(text, encoding="utf-8", newline="")
    print(f"wrote {RECORDS.name} ({RECORDS.stat().st_size} bytes) and the golden texts in {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
