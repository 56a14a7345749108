"""The training process the app starts: ``python -m core.jobs.worker RUN_DIR [--cache-dir DIR]``.

It trains the config that the run folder already holds (written once, by whoever created
the run) and reports its own state in ``status.json``; its output goes to the run's log.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..platform.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.jobs.worker", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder made by core.runs.create.create_run")
    parser.add_argument("--cache-dir", help="where cached backbone features are kept")
    parser.add_argument("--confined", action="store_true",
                        help="read images only inside TLD_ALLOWED_ROOTS (runs started from the app)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run from its last checkpoint (checked and claimed by queue.resume)")
    args = parser.parse_args(argv)
    if os.environ.get("RANK", "0") == "0":  # the next seconds go into importing: say so where the page looks
        # deferred: these import no torch, and the status is written before anything slow is imported
        from ..runs.rundir import RunDir
        from ..runs.status import this_process_state, write_status
        from ..spec.states import RunState

        starting = this_process_state(RunState.STARTING, "importing PyTorch and the model code")
        write_status(RunDir(args.run_dir), starting)
    # deferred: the status says 'importing PyTorch' before the slow imports, so the page shows what the run is doing
    from ..platform.distributed import finish, start, world_from_env
    from ..platform.workspace import allowed_roots
    from ..spec.states import RunState
    from ..training.run import resume_training, run_training
    from .console import print_records
    from .queue import start_next_queued

    world = world_from_env()  # the app starts several processes through torchrun
    final = None
    try:
        start(world)
        roots = allowed_roots() if args.confined else None
        stream = (resume_training(args.run_dir, cache_dir=args.cache_dir, allowed_roots=roots, claimed=True)
                  if args.resume else
                  run_training(args.run_dir, cache_dir=args.cache_dir, allowed_roots=roots, world=world))
        if world.main:
            final = print_records(stream)
        else:
            for _ in stream:
                pass
        finish(world)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        if world.main:
            start_next_queued(Path(args.run_dir).parent, args.cache_dir)
    if not world.main:
        return 0
    return 0 if final is not None and final.status == RunState.COMPLETED else 1


if __name__ == "__main__":
    from ..platform.exiting import exit_without_teardown, under_torchrun

    code = main()
    if under_torchrun():  # every output is written; the teardown can abort a rank after a completed run
        exit_without_teardown(code)
    sys.exit(code)
