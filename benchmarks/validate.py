"""Validation where input enters: command-line arguments, environment variables, folders and seeds.

Suite files are checked in :mod:`~unlearnbench.benchmarks.suite`, data files in ``datasets/``, stored
files in :mod:`~unlearnbench.benchmarks.store` and :mod:`~unlearnbench.benchmarks.cache`; what they
share lives here. Values are validated, never coerced: ``"3.5"`` is not a seed and ``""`` is not an
empty list. Every failure is an :class:`InputError` (a :class:`~unlearnbench.errors.UserError`)
whose one-line message names the input, the bad value and the fix.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from unlearnbench.errors import UserError

# Seeds enter torch/numpy generators (``seed * 1000003 + offset``), scikit-learn's ``random_state``
# (< 2**32) and SQLite; this range is safe for every use.
SEED_MAX = 2**31 - 1
CPU_THREADS_ENV = "UNLEARNBENCH_CPU_THREADS"


class InputError(UserError, ValueError):
    """A command-line argument, environment variable or path is not usable as given."""


def warn(message: str) -> None:
    """A one-line warning on standard error (the run goes on)."""
    print(f"warning: {one_line(message)}", file=sys.stderr, flush=True)


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def close_matches(name: str, choices: Iterable[str]) -> str:
    near = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.4)
    return f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def seed_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable seed, or None."""
    if not is_int(value):
        return f"a seed must be an integer, got {value!r}"
    if not 0 <= value <= SEED_MAX:
        return f"a seed must lie in [0, {SEED_MAX}], got {value}"
    return None


def check_seed(value: Any, where: str) -> int:
    problem = seed_problem(value)
    if problem:
        raise InputError(f"{where}: {problem}")
    return value


def positive_int_env(name: str, default: int) -> int:
    """The environment variable ``name`` as a positive integer (``default`` when unset or empty)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip()
    if not text.isdigit() or int(text) < 1 or int(text) > 4096:
        raise InputError(f"environment variable {name}={raw!r} must be a positive integer (e.g. {name}=1); "
                         f"fix or unset it")
    return int(text)


def cpu_threads() -> int:
    """Torch intra-op threads for CPU runs: ``$UNLEARNBENCH_CPU_THREADS`` (default 1). CPU results depend
    on it (reductions split across threads round differently), so it enters the cell key when not 1."""
    return positive_int_env(CPU_THREADS_ENV, 1)


def folder_arg(path: str | os.PathLike, flag: str, *, must_exist: bool = False) -> Path:
    """A folder argument: it may not name a file; with ``must_exist`` it must exist."""
    p = Path(path)
    if str(path).strip() == "":
        raise InputError(f"{flag} is empty: name a folder")
    if p.exists() and not p.is_dir():
        raise InputError(f"{flag} {p} is a file, not a folder: name a folder (it is created if missing)"
                         if not must_exist else f"{flag} {p} is a file, not a folder: name the folder")
    if must_exist and not p.is_dir():
        raise InputError(f"{flag} {p} does not exist: check the path")
    for parent in p.parents:  # a file part-way up the path
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{flag} {p}: {parent} is a file, not a folder: check the path")
    return p


def data_root_arg(value: str | None, from_env: bool) -> str | None:
    """``--data-root`` (or ``$UNLEARNBENCH_DATA_ROOT``): an existing folder when given."""
    if value is None:
        return None
    flag = "environment variable UNLEARNBENCH_DATA_ROOT" if from_env else "--data-root"
    p = Path(value)
    if not p.exists():
        raise InputError(f"{flag} {p} does not exist: point it at the folder holding the dataset files")
    if not p.is_dir():
        raise InputError(f"{flag} {p} is a file, not a folder: point it at the folder holding the dataset files")
    return value


def csv_arg(flag: str, *, kind: Callable[[str], Any] = str, what: str = "names") -> Callable[[str], list]:
    """An argparse ``type`` for a comma-separated list: no empty list, no empty item, no duplicate."""

    def parse(text: str) -> list:
        items = [x.strip() for x in text.split(",")]
        if not any(items):
            raise argparse.ArgumentTypeError(f"empty: give comma-separated {what}, or leave {flag} out")
        if not all(items):
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item: give comma-separated {what}")
        values = [kind(x) for x in items]
        dup = sorted({str(v) for v in values if values.count(v) > 1})
        if dup:
            raise argparse.ArgumentTypeError(f"names {dup[0]} twice: remove one")
        return values

    return parse


def seed_text(text: str) -> int:
    """One seed of ``--seeds``: a decimal integer in [0, SEED_MAX]."""
    if not text.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"takes comma-separated integers, got {text!r}")
    problem = seed_problem(int(text))
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return int(text)


def positive_int_arg(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
        return int(text)

    return parse


def device_arg(text: str) -> str:
    """``--device``: auto | cpu | cuda | cuda:N (availability is checked when the run resolves it)."""
    t = text.strip()
    if t in ("auto", "cpu", "cuda") or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"unknown device {text!r}: use auto, cpu, cuda or cuda:N")


def out_file_arg(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output file argument: not a folder, and no part of its folder is a file."""
    p = Path(path)
    if str(path).strip() == "":
        raise InputError(f"{flag} is empty: name the file to write")
    if p.is_dir():
        raise InputError(f"{flag} {p} is a folder: name the file to write")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{flag} {p}: {parent} is a file, not a folder: check the path")
    return p


_ROW_IDENTITY = {"run_id", "cell_key", "suite", "dataset", "model", "request", "method", "seed", "status", "reason",
                 "config", "config_hash", "hashes", "env", "scores_file", "created_at"}


def stored_value_name(name: str, rows: Iterable[dict], what: str) -> str:
    """``name`` must be a value some stored row has (a typo would rank by nothing); ``what`` says where it
    came from (``--primary``, the suite's ``primary``)."""
    known = {k for r in rows for k in r if k not in _ROW_IDENTITY}
    if known and name not in known:
        raise InputError(f"{what} {name!r} is not a value of the stored runs.{close_matches(name, sorted(known))} "
                         f"Stored values include: {', '.join(sorted(known)[:12])}{', ...' if len(known) > 12 else ''}")
    return name
