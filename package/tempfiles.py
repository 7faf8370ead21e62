"""Temporaries of atomic writes (write to a temporary, then ``os.replace``), named after their writer.

A temporary carries ``.tmp.<host>.<pid>`` so that a later run can tell a killed writer's leftovers from a
live writer's: caches (the model cache, the decoded-data cache) are shared by concurrent runs, possibly by
several hosts of one file system, so only a temporary of *this* host whose process is gone is removed.
Names from before the host was recorded (``.tmp<pid>``) count as this host's.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path

_TMP = re.compile(r"\.tmp(?:\.(?P<host>.+)\.)?(?P<pid>\d+)(?:\.(?:npz|npy))?$")


def temp_tag() -> str:
    """``.tmp.<host>.<pid>`` of this process."""
    return f".tmp.{socket.gethostname()}.{os.getpid()}"


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def left_by_dead_writer(name: str) -> bool:
    """Whether ``name`` is a temporary whose writer, a process of this host, no longer runs."""
    m = _TMP.search(name)
    if not m or m.group("host") not in (None, socket.gethostname()):
        return False
    return not pid_alive(int(m.group("pid")))


def clean_dead_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries in ``folder`` (not recursive) that dead writers of this host left."""
    removed = []
    if not folder.is_dir():
        return removed
    for f in folder.iterdir():
        if f.is_file() and left_by_dead_writer(f.name):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                removed.append(f)
    return removed
