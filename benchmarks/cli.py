"""``unlearnbench``: the command-line entry point.

Subcommands live one per module in ``benchmarks/commands/`` and are discovered here. Every error a
user can fix derives from :class:`unlearnbench.errors.UserError` (bad suite, argument, environment
variable, data or stored file; results folder in use): it prints one line, ``error: <what, where,
fix>``, and exits 2. Operating-system errors (no space left, permission denied, read-only file
system) print as themselves, with the path, and exit 2 too. Anything else is a bug: one line naming
the exception, exit 1. ``--debug`` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from . import commands


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types reported as user errors (exit 2, one line). Kept for callers that catch them."""
    from unlearnbench.errors import UserError

    return (UserError,)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <problem> (see `unlearnbench <cmd> --help`)``, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="unlearnbench",
        description="Benchmark machine-unlearning methods: run suites, list what is registered, and build "
                    "leaderboards, reproducibility checks and figures from stored results.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{mod.name}").add_parser(sub)
    for p in sub.choices.values():  # `unlearnbench run ... --debug` works too
        if not any("--debug" in a.option_strings for a in p._actions):
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help="show the full traceback of an error")
    return parser


def default_data_root() -> str | None:
    return os.environ.get("UNLEARNBENCH_DATA_ROOT") or None


def data_root(args: argparse.Namespace) -> str | None:
    """``--data-root``, else ``$UNLEARNBENCH_DATA_ROOT``, validated as an existing folder."""
    from .validate import data_root_arg

    given = getattr(args, "data_root", None)
    if given is not None:
        return data_root_arg(given, from_env=False)
    return data_root_arg(default_data_root(), from_env=True)


def main(argv: list[str] | None = None) -> int:
    from unlearnbench.errors import UserError, os_error_line

    from .validate import one_line

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("UNLEARNBENCH_DEBUG", "") not in ("", "0")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    debug = debug or bool(getattr(args, "debug", False))
    command = getattr(args, "command", "")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted: finished runs are in the store; run the same command again to resume", file=sys.stderr)
        return 130
    except UserError as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if debug:
            raise
        print(f"error: {os_error_line(exc, kept=command == 'run')}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line, the traceback with --debug
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {one_line(exc)[:500]} -- this is a bug; re-run with "
              f"--debug for the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
