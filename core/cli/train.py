"""``python -m core train``: a run, with its records printed as they come; ``--resume RUN_DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

from ..platform.errors import ConfigError
from ..spec.config import TRAINS
from ..spec.states import RunState
from .args import EXIT_USER_ERROR, WEIGHTS_HELP, add_train_flags, check_data_first, config_from_args, drain


def cmd_train(args) -> int:
    from ..jobs.console import print_records  # deferred: it imports numpy (figures); --help does not
    from ..jobs.queue import start_next_queued
    from ..platform.distributed import broadcast, finish, start, world_from_env
    from ..platform.workspace import cache_dir, runs_dir
    from ..runs.create import new_run_dir, run_label
    from ..training.run import train

    if args.resume:
        return _resume(args)
    cfg, why = config_from_args(args)
    check_data_first(cfg)
    if why:
        print(f"note: {why}", file=sys.stderr, flush=True)
    world = world_from_env()  # several processes when started by torchrun
    start(world)
    if not cfg.pretrained and cfg.body_partly_fixed and world.main:
        print(f"warning: random weights with a frozen body (--freeze {cfg.freeze}: {TRAINS[cfg.freeze]} trains) train "
              "on top of layers that never learn; use --freeze all (every layer trains) for a real from-scratch "
              "baseline, or --weights pretrained", file=sys.stderr)
    out = broadcast(str(args.out or new_run_dir(runs_dir(), run_label(cfg))) if world.main else None, world)
    cache = None if args.no_cache else (args.cache_dir or cache_dir())
    if world.main:
        print(f"run folder: {out}", flush=True)
    stream = train(cfg, out, cache_dir=cache, force=args.force, world=world)
    try:
        final = print_records(stream) if world.main else drain(stream)
    finally:
        if world.main:  # this run's slot is free: queued app runs in the same folder start now, browser or not
            start_next_queued(Path(out).parent, cache)
    finish(world)
    if final is None:  # a rank other than 0: rank 0 reports
        return 0
    if final.status == RunState.FAILED:
        print(f"error: the run failed: {final.reason}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0 if final.status == RunState.COMPLETED else 1


def _resume(args) -> int:
    """``train --resume RUN_DIR``: a stopped or failed run goes on from its last checkpoint."""
    from ..jobs.console import print_records  # deferred: it imports numpy (figures); --help does not
    from ..platform.distributed import world_from_env
    from ..platform.workspace import cache_dir
    from ..training.run import resume_training

    if world_from_env().active:
        raise ConfigError("--resume runs as one process; start it without torchrun")
    print(f"run folder: {args.resume}", flush=True)
    final = print_records(resume_training(args.resume, cache_dir=None if args.no_cache else
                                          (args.cache_dir or cache_dir())))
    return 0 if final is None or final.status != RunState.FAILED else EXIT_USER_ERROR


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train and write a run folder")
    add_train_flags(p)
    p.add_argument("--weights", default="pretrained", help=WEIGHTS_HELP)
    p.add_argument("--out", help="run folder (default: a new, named folder under the workspace's runs)")
    p.add_argument("--force", action="store_true",
                   help="reuse --out when it holds a failed or stopped run (the old one is moved aside, not deleted)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or failed run from its last checkpoint "
                                                        "(its own settings and lists; other flags are ignored)")
    p.add_argument("--cache-dir", help="where cached backbone features are kept (default: the workspace's cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache on disk")
    p.add_argument("--exclude", dest="exclude_file", metavar="FILE",
                   help="leave these training images out: one path per line, or the label-issue CSV of the app "
                        "(the test split stays whole)")
    p.add_argument("--no-version", action="store_true", help="ignore the data root's dataset version (`fix`): "
                                                             "train on the folder as it is")
    p.add_argument("--keep-together", dest="keep_together_file", metavar="REPORT.json",
                   help="with --data: a report of `inspect --json`; each duplicate group stays on one side of the "
                        "split")
    p.set_defaults(func=cmd_train)


