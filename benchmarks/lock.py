"""One writer per results folder: an advisory lock (``flock``) on ``<results>/unlearnbench.lock``.

``unlearnbench run`` holds it from before it reads which cells are finished until its last record is
written, so two runs on one folder never run the same cells twice. The file holds the holder's PID,
host and command line; a second run names them and exits (exit 2), or waits with ``--wait-lock``.
The operating system releases the lock when the holder dies, however it dies (SIGKILL included), so
a stale lock file never blocks a run. Readers (leaderboard, figures, reproduce, export) take no lock:
the store is append-only and they read a consistent snapshot.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from unlearnbench.errors import UserError

LOCK_NAME = "unlearnbench.lock"

_HELD: set[int] = set()  # descriptors of locks this process holds


def _close_in_child() -> None:
    # A forked child (e.g. a worker-pool process) must not keep the lock alive after its parent dies.
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class LockBusy(UserError):
    """Another process holds the results folder's lock."""


def _read_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    return info if isinstance(info, dict) else {}


def _holder(path: Path, settle_s: float = 2.0) -> str:
    # The holder writes its PID just after it takes the lock: a process that lost the race by a few
    # milliseconds may read an empty file, so give the holder a moment before naming nobody.
    info = _read_info(path)
    deadline = time.monotonic() + settle_s
    while not info.get("pid") and time.monotonic() < deadline:
        time.sleep(0.02)
        info = _read_info(path)
    if not info.get("pid"):
        return "another process"
    host = f" on {info['host']}" if info.get("host") and info["host"] != socket.gethostname() else ""
    since = f", since {info['since']}" if info.get("since") else ""
    return f"process {info['pid']}{host} (`{info.get('command', '?')}`{since})"


@contextlib.contextmanager
def results_lock(results_dir: str | Path, wait: bool = False, timeout: float | None = None) -> Iterator[Path]:
    """Hold the results folder's lock for the ``with`` block; raises :class:`LockBusy` when another process
    holds it (unless ``wait``: then block until it is free, at most ``timeout`` seconds when given)."""
    path = Path(results_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(path)
            if not wait:
                raise LockBusy(f"results folder {results_dir} is in use by {who}: wait for it to finish, pass "
                               "--wait-lock to wait, or use another --results") from None
            print(f"waiting for {who} to release {results_dir} ...", file=sys.stderr, flush=True)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        raise LockBusy(f"results folder {results_dir} is still in use by {_holder(path)} after "
                                       f"{timeout:g} s: try again later or use another --results") from None
                    time.sleep(0.2)
        _HELD.add(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["unlearnbench", *sys.argv[1:]]),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield path
        finally:
            _HELD.discard(fd)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)  # releases the lock


def holder(results_dir: str | Path) -> str | None:
    """Who holds the folder's lock now (None when nobody does), without creating any file."""
    path = Path(results_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _holder(path)
    finally:
        os.close(fd)
