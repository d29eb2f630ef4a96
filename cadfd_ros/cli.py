"""The ``cadfd`` command line. Each sub-command lives in ``cadfd_ros/commands/<name>.py``
and exposes ``register(subparsers)``; handlers import heavy modules lazily."""
from __future__ import annotations

import argparse
import importlib
import sys

from cadfd_ros import __version__
from cadfd_ros.errors import CadfdError

COMMAND_MODULES = (
    "cadfd_ros.commands.psf_bank",
    "cadfd_ros.commands.simulate",
    "cadfd_ros.commands.reconstruct",
    "cadfd_ros.commands.bench",
    "cadfd_ros.commands.demo",
    "cadfd_ros.commands.prior",
    "cadfd_ros.commands.bag",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cadfd", description="Coded-aperture depth from defocus.")
    parser.add_argument("--version", action="version", version=f"cadfd {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command not part of this build
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cadfd_ros.runtime import keep_freed_memory

    keep_freed_memory()  # before the solvers' first allocations
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CadfdError, FileNotFoundError, ValueError) as exc:
        print(f"cadfd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output folder under a file, a read-only place, a full disk: the path and the cause
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"cadfd {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
