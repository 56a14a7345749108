"""``python -m core tune``: the head search."""

from __future__ import annotations

import sys

from ..spec.records import follow
from ..spec.states import RunState
from .args import EXIT_USER_ERROR, add_run_settings, check_data_first, config_from_args, number, progress_line


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="search the head's settings (Optuna, cross-validated on the training split)")
    add_run_settings(p)
    p.add_argument("--trials", type=number(1, 10_000), default=50, help="settings to try")
    p.add_argument("--around-lr", type=number(1e-7, 10.0, float), metavar="LR",
                   help="search learning rates within ×/÷ 10 of LR (the finder's suggestion, `python -m core "
                        "lr-find`) instead of the whole range")
    p.add_argument("--json", metavar="OUT.json", help="write every trial and the best settings as JSON")
    p.add_argument("--train", action="store_true", help="then train a normal run with the best settings (it "
                                                        "records that they came from this search)")
    p.set_defaults(func=cmd_tune, exclude_file=None, keep_together_file=None)


def cmd_tune(args) -> int:
    from ..jobs.console import print_records  # deferred: it imports numpy (figures); --help does not
    from ..platform.workspace import cache_dir
    from ..training.tune import save_result, tune_head

    cfg, why = config_from_args(args)
    if cfg.data_root:
        check_data_first(cfg)
    if why:
        print(f"note: {why}", file=sys.stderr, flush=True)
    result = follow(tune_head(cfg, cache_dir=None if args.no_cache else (args.cache_dir or cache_dir()),
                              trials=args.trials, seed=cfg.seed, lr_centre=args.around_lr),
                    progress_line(lambda record: f"{record.phase.doing}: {record.done}/{record.total}"))
    pruned = sum(t.state == "pruned" for t in result.trials)
    print(f"{len(result.trials)} trials ({pruned} pruned) in {result.seconds:.1f} s; {result.folds}-fold "
          f"cross-validation on {result.train_images} training images (the test split was not read)")
    for note in result.notes:
        print(f"note: {note}")
    print(f"best: {100 * result.best_score:.1f}% with " + ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.best.items()))
    flags = " ".join(f"--{k.replace('_', '-')} {v:.3g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
                     for k, v in result.best.items())
    source = f"--data {cfg.data_root}" if cfg.data_root else f"--lists {cfg.lists_dir}"
    print(f"train with them: python -m core train {source} --arch {cfg.arch} {flags}")
    if args.json:
        save_result(result, args.json)
        print(f"trials: {args.json}")
    if not args.train:
        return 0
    from ..platform.workspace import runs_dir
    from ..runs.create import new_run_dir, run_label
    from ..training.run import train

    tuned = result.apply(cfg)
    out = new_run_dir(runs_dir(), run_label(tuned))
    print(f"run folder: {out}", flush=True)
    final = print_records(train(tuned, out, cache_dir=None if args.no_cache else (args.cache_dir or cache_dir())))
    return 0 if final is None or final.status != RunState.FAILED else EXIT_USER_ERROR
