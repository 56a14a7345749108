"""The training process the app starts: ``python -m core.worker RUN_DIR [--cache-dir DIR]``.

It trains the config that the run folder already holds (written once, by whoever created
the run) and reports its own state in ``status.json``; its output goes to the run's log.
"""
from __future__ import annotations

import argparse
import sys

from .errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.worker", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder made by core.rundir.create_run")
    parser.add_argument("--cache-dir", help="where cached backbone features are kept")
    args = parser.parse_args(argv)
    from .cli import print_records
    from .train import run_training

    try:
        final = print_records(run_training(args.run_dir, cache_dir=args.cache_dir))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0 if final is not None and final.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
