"""``python -m core runs list|clean``: the runs, and what killed writes left behind."""

from __future__ import annotations

from pathlib import Path

from ..platform.errors import UserError
from .args import Parser


def add_parser(sub) -> None:
    p = sub.add_parser("runs", help="the workspace's runs: list them, or clean up what killed writes left behind")
    actions = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    listing = actions.add_parser("list", help="every run, newest first, with its state (reads only)")
    clean = actions.add_parser("clean", help="remove temporary files of writes whose process has provably ended")
    clean.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    for q in (listing, clean):
        q.add_argument("--runs", default=None, help="the runs folder (default: the workspace's)")
    listing.set_defaults(func=cmd_runs_list)
    clean.set_defaults(func=cmd_runs_clean)


def _runs_folder(args) -> Path:
    from ..platform.workspace import runs_dir

    folder = Path(args.runs) if args.runs else runs_dir()
    if not folder.is_dir():
        raise UserError(f"'{folder}' is not a folder of runs")
    return folder


def cmd_runs_list(args) -> int:
    from ..runs.listing import list_runs

    for info in list_runs(_runs_folder(args)):
        print(f"{info.name}\t{info.status}\t{info.reason}")
    return 0


def cmd_runs_clean(args) -> int:
    from ..runs.listing import clean_leftovers
    from ..runs.rundir import RunDir

    folder = _runs_folder(args)
    removed = kept = 0
    for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
        for item in clean_leftovers(RunDir(path), dry_run=args.dry_run):
            goes = item.removed or (args.dry_run and item.writer_gone)
            verb = "left" if not goes else "would remove" if args.dry_run else "removed"
            print(f"{verb} {item.path} ({item.size:,} bytes): {item.why}")
            removed += goes
            kept += not goes
    print(f"{'would remove' if args.dry_run else 'removed'} {removed} leftover file(s); left {kept}")
    return 0
