"""``python -m core fix ROOT …``: the dataset version of a class-folder root (relabel, drop, keep one of copies,
keep copies together, undo, export), kept in the workspace; the folder itself is never written."""

from __future__ import annotations

import json
import os
import sys

from ..spec.config import field_default
from .args import Parser, field_type

ACTIONS = ("show", "relabel", "drop", "keep-one", "keep-together", "undo", "export")


def add_parser(sub) -> None:
    p = sub.add_parser("fix", help="decide about images without touching the folder: relabel, drop, keep one of "
                                   "copies, keep copies together, undo, export the corrected dataset")
    p.add_argument("root", help="the class-folder root")
    actions = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    show = actions.add_parser("show", help="the version in force and its changes (reads only)")
    show.add_argument("--json", action="store_true", help="print the version as JSON")
    relabel = actions.add_parser("relabel", help="give images another class")
    relabel.add_argument("paths", nargs="+", metavar="PATH")
    relabel.add_argument("--as", dest="label", required=True, metavar="CLASS", help="the new class (a class folder's "
                                                                                      "name)")
    drop = actions.add_parser("drop", help="leave images out of every split")
    drop.add_argument("paths", nargs="+", metavar="PATH")
    keep_one = actions.add_parser("keep-one", help="keep the first image, drop its copies")
    keep_one.add_argument("paths", nargs="+", metavar="PATH", help="the image kept, then its copies")
    together = actions.add_parser("keep-together", help="keep copies on one side of the split")
    together.add_argument("paths", nargs="+", metavar="PATH")
    for q in (relabel, drop, keep_one, together):
        q.add_argument("--reason", default="", help="why (kept with the change)")
    undo = actions.add_parser("undo", help="take back the latest change, or the one that made --version vN")
    undo.add_argument("--version", default=None, metavar="vN", help="the version whose change to take back")
    export = actions.add_parser("export", help="write the corrected dataset: list files, or with --copy a copy of "
                                               "the images in class folders (the data root is never written)")
    export.add_argument("out", help="a folder outside the data root")
    export.add_argument("--copy", action="store_true", help="copy the images into OUT/<class>/ (OUT must be empty)")
    export.add_argument("--train-ratio", type=field_type("train_ratio"), default=field_default("train_ratio"))
    export.add_argument("--val-ratio", type=field_type("val_ratio"), default=field_default("val_ratio"))
    export.add_argument("--seed", type=field_type("seed"), default=field_default("seed"))
    for q in (show, relabel, drop, keep_one, together, undo, export):
        q.set_defaults(func=cmd_fix)


def cmd_fix(args) -> int:
    from ..data.split import split_dataset
    from ..data.versions import Action, load_version, record, undo

    root = args.root
    plain = split_dataset(root)  # the folder as it is: which images and classes exist
    known = {os.path.abspath(p): p for p, _ in [*plain.train, *plain.val, *plain.test]}
    if args.action == "show":
        return _show(load_version(root), plain, args.json)
    if args.action == "undo":
        number = None if args.version is None else _version_number(args.version)
        version, change = undo(root, number)
        print(f"took back v{change.version} ({change.describe()}); now {version.name}")
        return 0
    if args.action == "export":
        return _export(args)
    paths = [known.get(os.path.abspath(p), p) for p in args.paths]
    action = {"relabel": Action.RELABEL, "drop": Action.DROP, "keep-one": Action.KEEP_ONE,
              "keep-together": Action.KEEP_TOGETHER}[args.action]
    version = record(root, action, paths, label=getattr(args, "label", ""), reason=args.reason,
                     classes=plain.classes, known=set(known.values()))
    print(f"{version.name}: {version.changes[-1].describe()}")
    return 0


def _version_number(text: str) -> int:
    from ..platform.errors import UserError

    digits = text[1:] if text.lower().startswith("v") else text
    if not digits.isdigit():
        raise UserError(f"--version takes a version such as v3, got {text!r}")
    return int(digits)


def _show(version, plain, as_json: bool) -> int:
    if as_json:
        edits = version.edits()
        json.dump({"root": plain.root, "version": version.name, "changes": [c.to_json() for c in version.changes],
                   "relabelled": dict(edits.relabel), "dropped": sorted(edits.drop),
                   "together": [list(g) for g in edits.together]}, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    print(f"{plain.root}: {version.name}" + (" (the folder as it is)" if not version.changes else ""))
    for change in version.changes:
        why = f" — {change.reason}" if change.reason else ""
        print(f"  v{change.version}  {change.describe()}{why}")
    return 0


def _export(args) -> int:
    from ..data.split import split_dataset
    from ..data.versions import export_copy, export_lists, load_version

    version = load_version(args.root)
    split = split_dataset(args.root, args.train_ratio, args.seed, val_ratio=args.val_ratio, edits=version.edits())
    if args.copy:
        count = export_copy(split, args.out)
        print(f"copied {count:,} images of {version.name} into {args.out}/<class>/")
    else:
        target = export_lists(split, version, args.out)
        print(f"wrote the lists of {version.name} ({len(split.train):,} train, {len(split.val):,} validation, "
              f"{len(split.test):,} test) to {target}")
    return 0
