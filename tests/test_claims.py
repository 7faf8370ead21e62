"""``unlearnbench claims`` (reports/claims.py): every claim of the seed papers gets a verdict computed from the
rows by its stated rule -- holds where the numbers meet it, does not hold where they do not, not measured
where no cell can check it -- and the command reads a results folder or an export file."""

from __future__ import annotations

import json

from unlearnbench.attacks import declaration
from unlearnbench.benchmarks.cli import main
from unlearnbench.reports.claims import FAILS, HOLDS, UNMEASURED, claims, render

CLAIMS = {
    "prune": ["certified forgetting of the requested points", "class-level unlearning", "lightweight extra storage",
              "efficiency and memory competitive with baselines", "resistance to membership inference"],
    "distribution_ft": ["unlearns backdoor triggers", "unlearns whole classes", "unlearns subsets",
                        "needs no extra storage", "is fast"],
    "weight_perturbation": ["15x faster than retraining", "removes the forget data's contribution"],
}


def _row(method: str, request: str, kind: str, seed: int, **values) -> dict:
    return {"run_id": f"{method}-{request}-{seed}", "cell_key": f"{method}-{request}-{seed}", "suite": "seeds",
            "dataset": "digits", "model": "mlp", "request": request, "method": method,
            "seed": seed, "status": "ok", "created_at": f"2026-01-01T00:00:0{seed}", "env": {"device_type": "cpu"},
            "config": {"request": {"kind": kind}, "params_source": "default"}, **values}


def _rows() -> list[dict]:
    rows = []
    for seed in (0, 1):
        rows += [
            _row("retrain", "points-10", "points", seed, forget_acc=1.0, **{"mia.loss_auc": 0.55}),
            _row("original", "points-10", "points", seed, forget_acc=1.0, **{"mia.loss_auc": 0.56}),
            _row("prune", "points-10", "points", seed, forget_acc=0.0, extra_bytes=1000.0, time_s=0.2,
                 **{"prune.certified_fraction": 1.0, "prune.original_bytes": 69000.0, "mia.loss_auc": 0.0}),
            _row("distribution_ft", "points-10", "points", seed, forget_acc=1.0, extra_bytes=0.0, time_s=0.1,
                 speedup_vs_retrain=3.0, passes_vs_retrain=8.0, **{"mia.loss_auc": 0.57}),
            _row("weight_perturbation", "points-10", "points", seed, forget_acc=1.0, extra_bytes=0.0, time_s=0.01,
                 speedup_vs_retrain=20.0, passes_vs_retrain=30.0, **{"mia.loss_auc": 0.56}),
            _row("retrain", "class", "class", seed, forget_acc=0.0, test_acc_forgotten_class=0.0, test_acc_rest=0.97),
            _row("prune", "class", "class", seed, forget_acc=0.0, test_acc_forgotten_class=0.12 + 0.04 * seed,
                 test_acc_rest=0.96, extra_bytes=40000.0, time_s=10.0,
                 **{"prune.certified_fraction": 0.0, "prune.original_bytes": 69000.0, "prune.flips_test_other": 3.0}),
            _row("distribution_ft", "class", "class", seed, forget_acc=0.0, test_acc_forgotten_class=0.0,
                 test_acc_rest=0.95, extra_bytes=0.0, time_s=0.3, speedup_vs_retrain=0.7, passes_vs_retrain=8.0),
            _row("weight_perturbation", "class", "class", seed, forget_acc=1.0, test_acc_forgotten_class=0.95,
                 test_acc_rest=0.97, extra_bytes=0.0, time_s=0.05, speedup_vs_retrain=7.0, passes_vs_retrain=18.0),
        ]
    return rows


def _by_name(checks):
    return {(c.method, c.claim): c for c in checks}


def test_every_claim_is_listed_with_a_verdict_and_its_rule():
    checks = claims(_rows(), declaration)
    assert [(c.method, c.claim) for c in checks] == [(m, k) for m, ks in CLAIMS.items() for k in ks]
    assert all(c.rule and c.verdict in (HOLDS, FAILS, UNMEASURED) for c in checks)


def test_verdicts_follow_the_rules():
    c = _by_name(claims(_rows(), declaration))
    assert c["prune", "certified forgetting of the requested points"].verdict == HOLDS
    # 0.12 and 0.16 -> mean 0.14 > retrain 0.0 + 0.1
    cls = c["prune", "class-level unlearning"]
    assert cls.verdict == FAILS and "0.140 vs retrain 0.000" in cls.checks[0].text
    assert "other-class test predictions changed: 3" in cls.checks[0].text
    store = c["prune", "lightweight extra storage"]  # 1,000 of 69,000 bytes holds; 40,000 does not
    assert [ch.ok for ch in store.checks] == [False, True] and store.verdict == FAILS
    mia = c["prune", "resistance to membership inference"]
    assert mia.verdict == FAILS and "mia.loss_auc 0.000 vs retrain 0.550" in mia.checks[0].text
    assert c["distribution_ft", "unlearns backdoor triggers"].verdict == UNMEASURED  # no backdoor cell
    assert c["distribution_ft", "unlearns whole classes"].verdict == HOLDS
    assert c["distribution_ft", "unlearns subsets"].verdict == HOLDS
    assert c["distribution_ft", "needs no extra storage"].verdict == HOLDS
    fast = c["distribution_ft", "is fast"]  # 0.7x in wall time on the class cell
    assert fast.verdict == FAILS and [ch.ok for ch in fast.checks] == [False, True]
    wp = c["weight_perturbation", "15x faster than retraining"]  # 20x / 30x on points, 7x / 18x on class
    assert [ch.ok for ch in wp.checks] == [False, True] and wp.verdict == FAILS
    gone = c["weight_perturbation", "removes the forget data's contribution"]
    assert {ch.cell.split(" / ")[-1]: ch.ok for ch in gone.checks} == {"class": False, "points-10": True}
    # efficiency: prune 0.2 s vs the others' median 0.055 s on points (not within 2x); 10 s vs 0.175 s on class
    assert c["prune", "efficiency and memory competitive with baselines"].verdict == FAILS


def test_backdoor_claim_reads_the_declared_attack_success_rate():
    rows = []
    for seed in (0, 1):
        rows += [_row("retrain", "badnets", "backdoor", seed, test_acc=0.97, **{"backdoor.asr": 0.01}),
                 _row("distribution_ft", "badnets", "backdoor", seed, test_acc=0.96,
                      **{"backdoor.asr": 0.03, "backdoor.asr_original": 1.0})]
    bd = _by_name(claims(rows, declaration))["distribution_ft", "unlearns backdoor triggers"]
    assert bd.verdict == HOLDS and "backdoor.asr 0.030 (before: backdoor.asr_original 1.000) vs retrain 0.010" in \
        bd.checks[0].text
    rows = [{**r, "backdoor.asr": 0.5} if r["method"] == "distribution_ft" else r for r in rows]
    assert _by_name(claims(rows, declaration))["distribution_ft", "unlearns backdoor triggers"].verdict == FAILS


def test_newest_record_per_cell_and_only_ok_rows_count():
    rows = _rows()
    old = _row("distribution_ft", "class", "class", 0, forget_acc=1.0, test_acc_forgotten_class=0.9,
               created_at="2025-01-01")
    failed = {**_row("distribution_ft", "class", "class", 2, test_acc_forgotten_class=0.9), "status": "failed"}
    c = _by_name(claims([old, *rows, failed], declaration))
    chk = c["distribution_ft", "unlearns whole classes"].checks[0]
    assert chk.ok and chk.n == 2


def test_render_lists_every_claim(tmp_path):
    text = render(claims(_rows(), declaration), title="T")
    for ks in CLAIMS.values():
        for k in ks:
            assert f"| {k} |" in text and f"### {k}: " in text
    assert "Rule: " in text and "**does not hold (1 of 2 cells)**" in text


def test_claims_command_on_an_export_file(tmp_path, capsys):
    path = tmp_path / "records.json"
    path.write_text(json.dumps({"format": "unlearnbench-records/1", "suite": "seeds", "rows": _rows()}))
    assert main(["claims", "--records", str(path)]) == 0
    out = capsys.readouterr().out
    assert "# Claims of the seed papers: suite seeds" in out and "15x faster than retraining" in out
    dest = tmp_path / "claims.md"
    assert main(["claims", "--records", str(path), "--out", str(dest)]) == 0
    assert dest.read_text() == out


def test_claims_command_reads_several_export_files(tmp_path, capsys):
    seeds = tmp_path / "seeds.json"
    seeds.write_text(json.dumps({"format": "unlearnbench-records/1", "suite": "seeds", "rows": _rows()}))
    bd_rows = []
    for seed in (0, 1):
        for method, asr in (("retrain", 0.0), ("distribution_ft", 0.02)):
            r = _row(method, "badnets", "backdoor", seed, **{"backdoor.asr": asr, "backdoor.asr_original": 1.0})
            bd_rows.append({**r, "suite": "backdoor", "run_id": r["run_id"] + "-bd", "cell_key": r["cell_key"] + "-bd"})
    backdoor = tmp_path / "backdoor.json"
    backdoor.write_text(json.dumps({"format": "unlearnbench-records/1", "suite": "backdoor", "rows": bd_rows}))
    assert main(["claims", "--records", str(seeds), str(backdoor)]) == 0
    out = capsys.readouterr().out
    assert "suite seeds + backdoor" in out
    assert "| unlearns backdoor triggers | **holds (1 of 1 cells)** |" in out
