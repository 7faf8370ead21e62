"""The one base class of every error a user can fix, and how operating-system errors are worded.

Every error raised because of what the user gave -- a suite file, a command-line argument, an
environment variable, a data file, a stored file -- derives from :class:`UserError`
(``SuiteError``, ``DatasetError``, ``MethodError``, ``MetricError``, ``ModelError``, ``RecipeError``,
``StoreError``, ``InputError``, ...). Its message is one line: what is wrong, where (file and
key/line, or path) and the fix. The CLI catches :class:`UserError` in one place, prints ``error:
<message>`` and exits 2; a traceback is shown only with ``--debug``.

This module sits above the floors (``unlearnbench`` itself), so every floor may import it.
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """A problem with the user's input or stored files; the message says what, where and the fix."""


# What to do about the operating-system errors a run meets; the errno name is always shown.
_OS_FIX = {
    errno.ENOSPC: "free space and re-run",
    errno.EDQUOT: "free space (disk quota exceeded) and re-run",
    errno.EACCES: "make it writable/readable for this user, or choose another path",
    errno.EPERM: "make it writable/readable for this user, or choose another path",
    errno.EROFS: "the file system is read-only: choose a writable path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "it is a folder, not a file: name a file",
    errno.EEXIST: "remove it or choose another path",
    errno.EIO: "the device reported an I/O error: check the disk",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
}


def os_error_line(exc: OSError, *, kept: bool = False) -> str:
    """One line for an operating-system error: what (strerror and errno name), where (the path) and the
    fix, e.g. ``no space left on device writing results/x.npz (ENOSPC): free space and re-run``."""
    code = exc.errno
    name = errno.errorcode.get(code, "") if code is not None else ""
    what = (exc.strerror or os.strerror(code) if code is not None else str(exc)) or type(exc).__name__
    what = what[0].lower() + what[1:] if what else what
    paths = [p for p in (exc.filename, getattr(exc, "filename2", None)) if p not in (None, "")]
    where = (" at " + " -> ".join(os.fsdecode(p) if isinstance(p, bytes) else str(p) for p in paths)) if paths else ""
    fix = _OS_FIX.get(code, "") if code is not None else ""
    line = f"{what}{where}" + (f" ({name})" if name else "") + (f": {fix}" if fix else "")
    if kept:
        line += "; finished results are kept (run the same command again to resume)"
    return line
