"""The results store: SQLite (WAL) in the results folder, per-example scores in ``.npz`` beside it.

One row per finished run, written in one transaction by the driver alone; the run's ``.npz`` is
written (atomically, by rename) before its row, so a run killed at any moment leaves either a
complete row or none, and never loses a finished one. Results are append-only: ``--force`` adds a
new row for the same cell, and readers take the newest row per cell. Metric values are REAL
columns (SQLite stores NaN as NULL; it reads back as NaN).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

DB_NAME = "results.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    cell_key    TEXT NOT NULL,
    suite       TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    model       TEXT NOT NULL,
    request     TEXT NOT NULL,
    method      TEXT NOT NULL,
    seed        INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('ok', 'not_applicable', 'failed')),
    reason      TEXT NOT NULL DEFAULT '',
    config      TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    hashes      TEXT NOT NULL,
    env         TEXT NOT NULL,
    scores_file TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_cell ON runs (cell_key);
CREATE INDEX IF NOT EXISTS runs_suite ON runs (suite);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    name   TEXT NOT NULL,
    value  REAL,
    PRIMARY KEY (run_id, name)
);
"""


class StoreError(RuntimeError):
    pass


@dataclass
class RunRecord:
    """A typed run record. ``metrics`` holds floats (NaN stays NaN)."""

    cell_key: str
    suite: str
    dataset: str
    model: str
    request: str
    method: str
    seed: int
    status: str
    config: dict[str, Any]
    config_hash: str
    hashes: dict[str, str]
    env: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    scores_file: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def row(self) -> dict[str, Any]:
        """A flat dict for reports: identity columns, then one column per metric."""
        base = {k: v for k, v in asdict(self).items() if k not in ("metrics", "config", "hashes", "env")}
        base.update({"config": self.config, "hashes": self.hashes, "env": self.env})
        base.update(self.metrics)
        return base


class Store:
    def __init__(self, results_dir: str | Path):
        self.dir = Path(results_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "scores").mkdir(exist_ok=True)
        self.path = self.dir / DB_NAME
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------ writing
    def write(self, record: RunRecord, scores: dict[str, np.ndarray] | None = None) -> None:
        if scores:
            rel = f"scores/{record.run_id}.npz"
            final = self.dir / rel
            tmp = final.with_name(f".{record.run_id}.tmp.npz")
            np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in scores.items()})
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            record.scores_file = rel
        values = [(record.run_id, k, None if (isinstance(v, float) and math.isnan(v)) else float(v))
                  for k, v in record.metrics.items()]
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (
                record.run_id, record.cell_key, record.suite, record.dataset, record.model, record.request,
                record.method, record.seed, record.status, record.reason, json.dumps(record.config, sort_keys=True),
                record.config_hash, json.dumps(record.hashes, sort_keys=True), json.dumps(record.env, sort_keys=True),
                record.scores_file, record.created_at))
            c.executemany("INSERT INTO metrics VALUES (?,?,?)", values)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------------------ reading
    def finished_keys(self, suite: str) -> set[str]:
        """Cells of ``suite`` with a finished result (ok or not applicable); failed cells are retried."""
        rows = self._conn.execute("SELECT DISTINCT cell_key FROM runs WHERE suite = ? AND status IN "
                                  "('ok', 'not_applicable')", (suite,))
        return {r[0] for r in rows}

    def records(self, suite: str | None = None, latest: bool = True) -> list[RunRecord]:
        q = "SELECT * FROM runs" + (" WHERE suite = ?" if suite else "") + " ORDER BY created_at, rowid"
        cur = self._conn.execute(q, (suite,) if suite else ())
        cols = [d[0] for d in cur.description]
        runs = [dict(zip(cols, r)) for r in cur.fetchall()]
        metrics: dict[str, dict[str, float]] = {}
        for run_id, name, value in self._conn.execute("SELECT run_id, name, value FROM metrics"):
            metrics.setdefault(run_id, {})[name] = float("nan") if value is None else float(value)
        out = [RunRecord(cell_key=r["cell_key"], suite=r["suite"], dataset=r["dataset"], model=r["model"],
                         request=r["request"], method=r["method"], seed=r["seed"], status=r["status"],
                         config=json.loads(r["config"]), config_hash=r["config_hash"], hashes=json.loads(r["hashes"]),
                         env=json.loads(r["env"]), metrics=metrics.get(r["run_id"], {}), reason=r["reason"],
                         run_id=r["run_id"], scores_file=r["scores_file"], created_at=r["created_at"]) for r in runs]
        if latest:
            newest: dict[str, RunRecord] = {}
            for rec in out:  # ordered oldest first, so the last one wins
                newest[rec.cell_key] = rec
            out = list(newest.values())
        return out

    def scores(self, record: RunRecord) -> dict[str, np.ndarray]:
        if not record.scores_file:
            return {}
        with np.load(self.dir / record.scores_file, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def suites(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT DISTINCT suite FROM runs ORDER BY suite")]


def open_store(results_dir: str | Path, must_exist: bool = False) -> Store:
    path = Path(results_dir) / DB_NAME
    if must_exist and not path.is_file():
        raise StoreError(f"no results in {Path(results_dir)} (no {DB_NAME}). Run a suite first, e.g. "
                         f"`unlearnbench run --results {results_dir}`.")
    return Store(results_dir)


def iter_rows(records: Iterable[RunRecord]) -> list[dict[str, Any]]:
    return [r.row() for r in records]
