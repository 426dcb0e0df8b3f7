"""The ``amulet-lab`` command: a thin dispatcher over per-area sub-command modules.

Each module in ``COMMAND_MODULES`` defines ``register(subparsers)``, which adds its
sub-commands and sets ``func(args, settings) -> int`` on each. Modules are imported only
when the command line is parsed, so ``amulet-lab --help`` stays quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from amulet_lab import __version__
from amulet_lab.errors import AmuletError

__all__ = ["main", "build_parser"]

COMMAND_MODULES = (
    "amulet_lab.cli._data",  # synth
    "amulet_lab.cli._model",  # train, evaluate, train-default, predict
    "amulet_lab.cli._bench",  # bench run / compare / micro, report, demo
    "amulet_lab.cli._service",  # serve, token
    "amulet_lab.cli._batch",  # classify
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(prog="amulet-lab", description="Classify photos of Thai amulets; benchmark and report.")
    parser.add_argument("--version", action="version", version=f"amulet-lab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module: say so
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``amulet-lab`` console script."""
    from amulet_lab.config import get_settings
    from amulet_lab.logs import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = get_settings()
        configure_logging(settings.log_format, settings.effective_log_level)
        from amulet_lab.runtime import apply_settings

        apply_settings(settings)
        return int(args.func(args, settings) or 0)
    except AmuletError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
