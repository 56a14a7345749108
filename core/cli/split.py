"""``python -m core split ROOT``: class folders split per class into train.txt / val.txt / test.txt."""

from __future__ import annotations

from ..spec.config import field_default
from .args import field_type


def cmd_split(args) -> int:
    from ..data.split import split_dataset, write_split
    from ..platform.workspace import lists_dir_for

    groups = None
    if args.keep_together:
        from ..analysis.datacheck import duplicate_groups_from_json

        groups = duplicate_groups_from_json(args.keep_together)
    from ..data.versions import load_version

    version = load_version(args.root)
    edits = None if args.no_version else version.edits()
    split = split_dataset(args.root, args.train_ratio, args.seed, val_ratio=args.val_ratio, keep_together=groups,
                          edits=edits)
    out = write_split(split, args.out or lists_dir_for(args.root), overwrite=args.force)
    for c in split.counts():
        print(f"{c.label:3d} {c.name:<24} train {c.train:6,d}  validation {c.val:6,d}  test {c.test:6,d}")
    print(f"total: {len(split.train):,} train, {len(split.val):,} validation, {len(split.test):,} test; lists written "
          f"to {out}")
    for s in split.skipped:
        print(f"skipped: {s.path}: {s.reason}")
    for w in split.warnings:
        print(f"warning: {w}")
    if edits:
        print(f"dataset version {version.name} applied ({len(version.changes)} change(s); `fix ROOT show` lists them)")
    if groups is not None:
        print(f"{len(groups)} duplicate group(s) kept each on one side of the split")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("split", help="split a class-folder root into train.txt/val.txt/test.txt/classes.json")
    p.add_argument("root")
    p.add_argument("--train-ratio", type=field_type("train_ratio"), default=field_default("train_ratio"))
    p.add_argument("--val-ratio", type=field_type("val_ratio"), default=field_default("val_ratio"),
                   help="share of each class's training images set aside as validation (0: none, as the tutorial)")
    p.add_argument("--seed", type=field_type("seed"), default=field_default("seed"))
    p.add_argument("--out", help="folder for the list files (default: in the workspace)")
    p.add_argument("--force", action="store_true", help="replace list files already in --out")
    p.add_argument("--keep-together", metavar="REPORT.json", help="a report of `inspect --json`: keep each of its "
                                                                  "duplicate groups on one side of the split")
    p.add_argument("--no-version", action="store_true", help="ignore the dataset version (`fix`): split the folder "
                                                             "as it is")
    p.set_defaults(func=cmd_split)
