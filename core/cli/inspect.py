"""``python -m core inspect``: the data check, printed (and stored for the app)."""

from __future__ import annotations

import json
import sys

from ..platform.errors import ConfigError
from ..spec.archs import OFFLINE_ARCH, PREFERRED_ARCH
from ..spec.config import field_default
from ..spec.records import follow
from .args import WEIGHTS_HELP, field_type, number, progress_line


def cmd_inspect(args) -> int:
    from ..analysis.datacheck import check_data, describe, load_split, save_report
    from ..models.weights import NO_WEIGHTS, PRETRAINED, default_arch, resolve_weights
    from ..platform.workspace import cache_dir, checks_dir
    from ..spec.archs import get_arch

    if not args.data_root and not args.lists_dir:
        raise ConfigError("inspect needs --data ROOT (class folders) or --lists DIR (train.txt / test.txt)")
    arch = args.arch
    if arch is None:
        arch, why = default_arch(args.weights if args.weights not in (PRETRAINED, NO_WEIGHTS) else None)
        print(f"note: {why}", file=sys.stderr, flush=True)
    weights = resolve_weights(get_arch(arch), args.weights)
    split = load_split(args.data_root, args.lists_dir, train_ratio=args.train_ratio, seed=args.seed)
    stream = check_data(split, arch=arch, weights=weights, cache_dir=None if args.no_cache else cache_dir(),
                        near_threshold=args.near_threshold, device=args.device, letterbox=args.letterbox)
    report = follow(stream, progress_line(describe))
    print_data_report(report)
    try:
        stored = save_report(report, checks_dir())
        print(f"stored for the app: {stored}")
    except OSError as exc:  # a read-only workspace: the printed and --json report are still whole
        print(f"note: the report could not be stored in the workspace ({exc.strerror or exc})", file=sys.stderr)
    if args.json:
        from ..platform.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(report.to_json(), indent=1, ensure_ascii=False))
        print(f"full report: {args.json}")
    return 0


def print_data_report(report) -> None:
    """The short summary of a data check."""
    h = report.health
    print(f"{len(report.classes)} classes, {report.train} train / {report.test} test images; {h.readable} readable")
    for c in h.classes:
        print(f"  {c.label:3d} {c.name:<24} train {c.train:6d}  test {c.test:6d}"
              + (f"  unreadable {c.unreadable}" if c.unreadable else ""))
    print("formats: " + ", ".join(f"{k} {v}" for k, v in h.formats.items()))
    if h.small:
        print(f"{len(h.small)} image(s) smaller than the model's {h.input_size}-pixel input")
    if h.converted:
        print(f"{len(h.converted)} image(s) not RGB (converted before training)")
    for u in h.unreadable:
        print(f"unreadable: {u.path}: {u.reason}")
    for w in h.warnings:
        print(f"warning: {w}")
    exact = sum(g.kind == "exact" for g in report.duplicates)
    near = len(report.duplicates) - exact
    print(f"duplicates: {len(report.duplicates)} group(s) ({exact} of identical files, {near} of resized or near "
          f"copies); {len(report.leaks)} across train and test; {len(report.conflicts)} across classes")
    print(f"  pixel copies: perceptual hash within {report.hash_distance} of 256 bits, same colour layout; near "
          f"copies: feature similarity ≥ {report.near_threshold:.3f}"
          + (f", {report.threshold_rule}" if report.threshold_rule else ""))
    for group in report.duplicates[:10]:
        print(f"  {len(group.members)} × ({group.found_by}): " + ", ".join(m.path for m in group.members[:4])
              + (" …" if len(group.members) > 4 else ""))
    if report.leak_effect():
        print(f"leakage: {report.leak_effect()}")
    if report.baseline:
        b = report.baseline
        print(f"baseline: a linear head on the features reaches {100 * b.accuracy:.1f}% ± {100 * b.std:.1f} "
              f"({b.folds}-fold cross-validation over {b.images} images; k-NN {100 * b.knn_accuracy:.1f}%)")
    if report.label_issues:
        print(f"label issues: {len(report.label_issues)} suspect(s), most suspect first:")
        for i in report.label_issues[:10]:
            print(f"  {i.path}: given {i.given}, looks like {i.suggested} ({100 * i.confidence:.0f}%)")
    if report.hard_cases:
        print(f"hard or mislabelled: {len(report.hard_cases)} image(s) the model takes for another class (not counted "
              "as suspects: look at them)")
    for note in report.notes:
        print(f"note: {note}")


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="check the data: health, duplicates and leakage, label issues, a baseline")
    p.add_argument("--data", dest="data_root", help="a class-folder root, split as a run would split it")
    p.add_argument("--lists", dest="lists_dir", help="a folder with train.txt / test.txt")
    p.add_argument("--arch", help=f"the backbone whose features are compared (default: {PREFERRED_ARCH} when its "
                                  f"pretrained weights are on this machine, else {OFFLINE_ARCH})")
    p.add_argument("--weights", default="pretrained", help=WEIGHTS_HELP)
    p.add_argument("--train-ratio", type=field_type("train_ratio"), default=field_default("train_ratio"))
    p.add_argument("--seed", type=field_type("seed"), default=field_default("seed"))
    p.add_argument("--near-threshold", type=number(0.5, 1.0, float), default=None,
                   help="cosine similarity of features from which two images count as near copies (default: chosen "
                        "from the data, far above its images' nearest-neighbour similarities; the report says how)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", metavar="OUT.json", help="write the full report here")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache on disk")
    p.add_argument("--letterbox", action="store_true",
                   help="preprocess as a run with --letterbox does (its features are then that run's)")
    p.set_defaults(func=cmd_inspect)
