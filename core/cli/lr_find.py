"""``python -m core lr-find``: the learning-rate finder."""

from __future__ import annotations

import json
import sys

from ..spec.records import follow
from .args import add_run_settings, check_data_first, config_from_args, number, progress_line


def add_parser(sub) -> None:
    p = sub.add_parser("lr-find", help="sweep the learning rate (fastai's finder) for these settings; suggests one")
    add_run_settings(p)
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--steps", type=number(10, 1000), default=100, help="mini-batches in the sweep")
    p.add_argument("--json", metavar="OUT.json", help="write the curve and the suggestions as JSON")
    p.set_defaults(func=cmd_lr_find, exclude_file=None, keep_together_file=None)


def cmd_lr_find(args) -> int:
    from ..platform.workspace import cache_dir
    from ..training.lr_find import find_lr

    cfg, why = config_from_args(args)
    check_data_first(cfg)
    if why:
        print(f"note: {why}", file=sys.stderr, flush=True)
    stream = find_lr(cfg, cache_dir=None if args.no_cache else (args.cache_dir or cache_dir()),
                     start_lr=args.start_lr, end_lr=args.end_lr, num_it=args.steps)
    result = follow(stream, progress_line(lambda record: f"{record.phase.doing}: {record.done}/{record.total}"))
    print(f"{len(result.lrs)} steps from {result.lrs[0]:.1e} ({result.feature_path}, {result.seconds:.1f} s); "
          f"{result.stopped}")
    for note in result.notes:
        print(f"note: {note}")
    if result.valley is not None:
        print(f"suggested learning rate: {result.valley:.2e} (valley)" +
              (f"; steepest descent at {result.steep:.2e}" if result.steep else ""))
    if args.json:
        from ..platform.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(result.to_json(), indent=1))
        print(f"curve: {args.json}")
    return 0
