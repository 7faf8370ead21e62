"""``unlearnbench``: the command-line entry point.

Subcommands live one per module in ``benchmarks/commands/`` and are discovered here. A user error
(unknown name, malformed suite, missing data, no results yet) prints one clear line and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from . import commands


def user_errors() -> tuple[type[BaseException], ...]:
    from unlearnbench.attacks import MetricError
    from unlearnbench.datasets import DatasetError
    from unlearnbench.methods import MethodError
    from unlearnbench.methods.models import ModelError
    from unlearnbench.methods.training import RecipeError

    from .store import StoreError
    from .suite import SuiteError

    return (SuiteError, DatasetError, MethodError, MetricError, ModelError, RecipeError, StoreError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlearnbench",
        description="Benchmark machine-unlearning methods: run suites, list what is registered, and build "
                    "leaderboards, reproducibility checks and figures from stored results.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{mod.name}").add_parser(sub)
    return parser


def default_data_root() -> str | None:
    return os.environ.get("UNLEARNBENCH_DATA_ROOT") or None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are in the store; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
