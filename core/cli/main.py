"""Command line over the same functions the pages use: ``python -m core {split,inspect,surgery,train,predict,…}``.

Every subcommand imports only what it needs (``--help`` and ``split`` start fast), and every
error the user can fix is one ``error: …`` line with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..platform.errors import UserError
from . import archs, datasets, fix, inspect, lr_find, predict, report, runs, split, surgery, train, tune
from .args import EXIT_USER_ERROR, Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m core", description="Transfer-learning dashboard engine")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (split, fix, inspect, archs, surgery, train, lr_find, tune, predict, report, datasets, runs):
        module.add_parser(sub)
    for name, command in sub.choices.items():
        if name in OUTPUT_FILES:
            flags = ", ".join(f"--{flag}" for flag in OUTPUT_FILES[name])
            command.add_argument("--force", action="store_true", help=f"replace the file {flags} names if it exists")
    return parser


# The files a command writes where the user says (as opposed to run folders and caches it names itself): each
# is refused when it exists already, unless --force, so nothing the user made is overwritten silently.
OUTPUT_FILES = {"inspect": ("json",), "lr-find": ("json",), "tune": ("json",), "report": ("json",),
                "predict": ("csv", "cam", "json"), "export": ("out",)}


def refuse_existing_outputs(args) -> None:
    for name in OUTPUT_FILES.get(args.command, ()):
        path = getattr(args, name, None)
        if isinstance(path, str) and Path(path).exists() and not getattr(args, "force", False):
            raise UserError(f"'{path}' exists already; give another file name for --{name}, or --force to replace it")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        refuse_existing_outputs(args)
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a folder we may not write: the user can act on it
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
