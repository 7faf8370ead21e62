"""The results store: SQLite (WAL) in the results folder, per-example scores in ``.npz`` beside it.

One row per finished run, written in one transaction by the driver alone; the run's ``.npz`` is
written (atomically, by rename) before its row, so a run killed at any moment leaves either a
complete row or none, and never loses a finished one. Results are append-only: ``--force`` adds a
new row for the same cell, and readers take the newest row per cell. Metric values are REAL
columns (SQLite stores NaN as NULL; it reads back as NaN).

One process writes a folder at a time (``unlearnbench run`` holds :mod:`~unlearnbench.benchmarks.lock`);
at its start it removes what a killed run left (temporary and orphaned ``.npz``). Readers open the
store read-only (``Store(..., readonly=True)``) and create nothing in the folder. A damaged or foreign
database file, a full disk or a read-only folder is reported as itself, with the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import sqlite3
import tempfile
import urllib.parse
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from unlearnbench.errors import UserError

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


class StoreError(UserError, RuntimeError):
    """The results folder or one of its files cannot be used; the message names the path and the fix."""


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


_SQLITE_ERRNO = {13: errno.ENOSPC, 8: errno.EACCES, 10: errno.EIO, 14: errno.EACCES}  # FULL, READONLY, IOERR, CANTOPEN


def _sqlite_error(exc: sqlite3.Error, path: Path, doing: str) -> Exception:
    """A SQLite error as what it is: an operating-system error (full disk, no permission, read-only file
    system, I/O error) with the database's path, or a :class:`StoreError` naming the path and the fix."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary is None:  # Python < 3.11: from the message
        primary = 13 if "full" in text else 8 if "readonly" in text else 14 if "unable to open" in text else None
    if primary in _SQLITE_ERRNO:
        num = _SQLITE_ERRNO[primary]
        if num == errno.EACCES and _read_only_fs(path.parent):
            num = errno.EROFS
        return OSError(num, f"{os.strerror(num)} ({doing}: sqlite: {text})", str(path))
    if primary in (5, 6):  # BUSY, LOCKED
        return StoreError(f"{path} is locked by another process ({text}) while {doing}: wait for it and re-run")
    if primary in (11, 26) or isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return StoreError(f"{path} is not a readable results database ({text}): move it aside (e.g. rename it) to "
                          "start a new store there, or choose another --results")
    return StoreError(f"{path}: {doing} failed ({text})")


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


@contextlib.contextmanager
def _guard(path: Path, doing: str):
    try:
        yield
    except sqlite3.Error as exc:
        raise _sqlite_error(exc, path, doing) from exc


class Store:
    """The results store of one folder. ``readonly=True`` (reports) opens an existing store without
    writing or creating anything in the folder, so reports work on read-only folders."""

    def __init__(self, results_dir: str | Path, readonly: bool = False):
        self.dir = Path(results_dir)
        self.path = self.dir / DB_NAME
        self.readonly = readonly
        self._tmp: tempfile.TemporaryDirectory | None = None
        if self.dir.exists() and not self.dir.is_dir():
            raise StoreError(f"results folder {self.dir} is a file, not a folder: choose another --results")
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"{self.path} is not a file: move it aside or choose another --results")
        if readonly:
            if not self.path.is_file():
                raise StoreError(f"no results in {self.dir} (no {DB_NAME}). Run a suite first, e.g. "
                                 f"`unlearnbench run --results {self.dir}`.")
            self._conn = self._connect_readonly()
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "scores").mkdir(exist_ok=True)
            with _guard(self.path, "opening the results database"):
                self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._check("opening")
                self._conn.executescript(_SCHEMA)
                self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _connect_readonly(self) -> sqlite3.Connection:
        wal = self.path.with_name(DB_NAME + "-wal")
        pending = wal.is_file() and wal.stat().st_size > 0  # committed rows may still be in the WAL
        uri = "file:" + urllib.parse.quote(str(self.path.resolve()))
        with _guard(self.path, "opening the results database read-only"):
            if not pending:  # nothing outside the main file: read it as an immutable file (no -shm/-wal created)
                conn = sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, isolation_level=None)
                self._conn = conn
                self._check("reading")
                return conn
            try:
                conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=60, isolation_level=None)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:  # a read-only folder without the WAL index: read a private copy
                self._tmp = tempfile.TemporaryDirectory(prefix="unlearnbench-store-")
                copy = Path(self._tmp.name) / DB_NAME
                shutil.copyfile(self.path, copy)
                shutil.copyfile(wal, copy.with_name(DB_NAME + "-wal"))
                conn = sqlite3.connect(copy, isolation_level=None)
            self._conn = conn
            self._check("reading")
            return conn

    def _check(self, doing: str) -> None:
        """A damaged file or one that is not ours is a clear error before any work (quick_check is ms)."""
        rows = self._conn.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            raise StoreError(f"{self.path} is damaged ({'; '.join(str(r[0]) for r in rows[:3])}): move it aside "
                             "(e.g. rename it) to start a new store there, or choose another --results")
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and not {"runs", "metrics", "meta"} <= tables:
            raise StoreError(f"{self.path} is an SQLite file but not an unlearnbench results database (tables: "
                             f"{', '.join(sorted(tables))}): choose another --results")
        if "meta" in tables:
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row and (not str(row[0]).isdigit() or int(row[0]) > SCHEMA_VERSION):
                raise StoreError(f"{self.path} has schema version {row[0]}, newer than this unlearnbench reads "
                                 f"({SCHEMA_VERSION}): upgrade unlearnbench")
        elif self.readonly:
            raise StoreError(f"no results in {self.dir} ({DB_NAME} holds no tables). Run a suite first.")

    def close(self) -> None:
        self._conn.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------ writing
    def write(self, record: RunRecord, scores: dict[str, np.ndarray] | None = None) -> None:
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only")
        written: Path | None = None
        if scores:
            rel = f"scores/{record.run_id}.npz"
            final = self.dir / rel
            tmp = final.with_name(f".{record.run_id}.tmp.npz")
            try:
                np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in scores.items()})
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, final)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                if exc.filename is None:  # numpy's zip writer does not say which file
                    raise OSError(exc.errno, exc.strerror or str(exc), str(tmp)) from exc
                raise
            written = final
            record.scores_file = rel
        values = [(record.run_id, k, None if (isinstance(v, float) and math.isnan(v)) else float(v))
                  for k, v in record.metrics.items()]
        c = self._conn
        try:
            with _guard(self.path, f"storing the record of {record.dataset}/{record.request}/{record.method}/"
                                   f"seed{record.seed}"):
                c.execute("BEGIN IMMEDIATE")
                try:
                    c.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (
                        record.run_id, record.cell_key, record.suite, record.dataset, record.model, record.request,
                        record.method, record.seed, record.status, record.reason,
                        json.dumps(record.config, sort_keys=True), record.config_hash,
                        json.dumps(record.hashes, sort_keys=True), json.dumps(record.env, sort_keys=True),
                        record.scores_file, record.created_at))
                    c.executemany("INSERT INTO metrics VALUES (?,?,?)", values)
                    c.execute("COMMIT")
                except BaseException:
                    if c.in_transaction:  # SQLite may have rolled back already (e.g. a full disk at COMMIT)
                        with contextlib.suppress(sqlite3.Error):
                            c.execute("ROLLBACK")
                    raise
        except BaseException:
            if written is not None:  # no row points at it: do not leave an orphan
                with contextlib.suppress(OSError):
                    written.unlink()
            record.scores_file = None
            raise

    def clean_stale(self) -> list[Path]:
        """Remove what a killed run left: temporary score files and score files no row points at. Only
        the lock holder may call this (a concurrent writer's files would look stale)."""
        folder = self.dir / "scores"
        if not folder.is_dir():
            return []
        with _guard(self.path, "listing score files"):
            used = {r[0] for r in self._conn.execute("SELECT scores_file FROM runs WHERE scores_file IS NOT NULL")}
        removed = []
        for f in folder.iterdir():
            stale = (f.name.startswith(".") and ".tmp" in f.name) or (
                f.suffix == ".npz" and not f.name.startswith(".") and f"scores/{f.name}" not in used)
            if stale and f.is_file():
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                    removed.append(f)
        return removed

    # ------------------------------------------------------------------------------ reading
    def finished_keys(self, suite: str) -> set[str]:
        """Cells of ``suite`` with a finished result (ok or not applicable); failed cells are retried."""
        with _guard(self.path, "reading finished cells"):
            rows = self._conn.execute("SELECT DISTINCT cell_key FROM runs WHERE suite = ? AND status IN "
                                      "('ok', 'not_applicable')", (suite,)).fetchall()
        return {r[0] for r in rows}

    def records(self, suite: str | None = None, latest: bool = True) -> list[RunRecord]:
        q = "SELECT * FROM runs" + (" WHERE suite = ?" if suite else "") + " ORDER BY created_at, rowid"
        with _guard(self.path, "reading records"):
            cur = self._conn.execute(q, (suite,) if suite else ())
            cols = [d[0] for d in cur.description]
            runs = [dict(zip(cols, r)) for r in cur.fetchall()]
            metrics: dict[str, dict[str, float]] = {}
            for run_id, name, value in self._conn.execute("SELECT run_id, name, value FROM metrics"):
                metrics.setdefault(run_id, {})[name] = float("nan") if value is None else float(value)
        try:
            out = [RunRecord(cell_key=r["cell_key"], suite=r["suite"], dataset=r["dataset"], model=r["model"],
                             request=r["request"], method=r["method"], seed=r["seed"], status=r["status"],
                             config=json.loads(r["config"]), config_hash=r["config_hash"],
                             hashes=json.loads(r["hashes"]), env=json.loads(r["env"]),
                             metrics=metrics.get(r["run_id"], {}), reason=r["reason"], run_id=r["run_id"],
                             scores_file=r["scores_file"], created_at=r["created_at"]) for r in runs]
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"{self.path} holds a damaged record ({exc}): move the file aside or choose another "
                             "--results") from exc
        if latest:
            newest: dict[str, RunRecord] = {}
            for rec in out:  # ordered oldest first, so the last one wins
                newest[rec.cell_key] = rec
            out = list(newest.values())
        return out

    def scores(self, record: RunRecord) -> dict[str, np.ndarray]:
        """The run's per-example arrays; :class:`StoreError` naming the file when it cannot be read."""
        if not record.scores_file:
            return {}
        path = self.dir / record.scores_file
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise StoreError(f"per-example scores of {record.dataset}/{record.request}/{record.method}/"
                             f"seed{record.seed} unreadable: {path} ({type(exc).__name__}: {exc})") from exc

    def suites(self) -> list[str]:
        with _guard(self.path, "reading suites"):
            return [r[0] for r in self._conn.execute("SELECT DISTINCT suite FROM runs ORDER BY suite")]


def open_store(results_dir: str | Path, must_exist: bool = False, readonly: bool | None = None) -> Store:
    """The store of ``results_dir``. ``must_exist`` (reports): an error naming the fix when there are no
    results; such stores open read-only unless ``readonly=False``."""
    if must_exist:
        folder = Path(results_dir)
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"--results {folder} is a file, not a folder: name the results folder")
        if not (folder / DB_NAME).is_file():
            raise StoreError(f"no results in {folder} (no {DB_NAME}). Run a suite first, e.g. "
                             f"`unlearnbench run --results {results_dir}`.")
    return Store(results_dir, readonly=must_exist if readonly is None else readonly)


def iter_rows(records: Iterable[RunRecord]) -> list[dict[str, Any]]:
    return [r.row() for r in records]
