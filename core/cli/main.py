"""Command line over the same functions the pages use: ``python -m core {split,inspect,surgery,train,predict,…}``.

Every subcommand imports only what it needs (``--help`` and ``split`` start fast), and every
error the user can fix is one ``error: …`` line with exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
import time
from pathlib import Path

from ..data.split import MAX_CLASSES
from ..jobs.console import print_records
from ..platform.errors import ConfigError, UserError
from ..spec.archs import ARCHITECTURES, OFFLINE_ARCH, PREFERRED_ARCH
from ..spec.config import FREEZE_MODES, TRAINS, TTA_MODES, TrainConfig, field_default, field_range
from ..spec.records import Final, follow
from ..spec.states import RunState

EXIT_USER_ERROR = 2


# ----------------------------------------------------------------------------- argument types
def _number(low, high, kind: type = int):
    """An argparse type for a ``kind`` from ``low`` to ``high`` (inclusive); words, nan and inf are refused."""
    def parse(text: str):
        try:
            value = kind(text) if kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be from {low:,} to {high:,}, got {text}")
        return value
    return parse


def _field_type(name: str):
    """The flag type of a TrainConfig field: its own range, so the flag refuses what the config would."""
    low, high = field_range(name)
    return _number(low, high, type(field_default(name)))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one line, exit 2, like ours
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------- split / surgery / demo
def cmd_split(args) -> int:
    from ..data.split import split_dataset, write_split
    from ..platform.workspace import lists_dir_for

    groups = None
    if args.keep_together:
        from ..analysis.datacheck import duplicate_groups_from_json

        groups = duplicate_groups_from_json(args.keep_together)
    split = split_dataset(args.root, args.train_ratio, args.seed, val_ratio=args.val_ratio, keep_together=groups)
    out = write_split(split, args.out or lists_dir_for(args.root), overwrite=args.force)
    for c in split.counts():
        print(f"{c.label:3d} {c.name:<24} train {c.train:6,d}  validation {c.val:6,d}  test {c.test:6,d}")
    print(f"total: {len(split.train):,} train, {len(split.val):,} validation, {len(split.test):,} test; lists written "
          f"to {out}")
    for s in split.skipped:
        print(f"skipped: {s.path}: {s.reason}")
    for w in split.warnings:
        print(f"warning: {w}")
    if groups is not None:
        print(f"{len(groups)} duplicate group(s) kept each on one side of the split")
    return 0


# ----------------------------------------------------------------------------- inspect
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
    report = follow(stream, _progress_line(describe))
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
    print(f"duplicates: {len(report.duplicates)} group(s) ({exact} exact, {len(report.duplicates) - exact} near, "
          f"threshold {report.near_threshold:g}); {len(report.leaks)} across train and test; "
          f"{len(report.conflicts)} across classes")
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
    for note in report.notes:
        print(f"note: {note}")


def cmd_surgery(args) -> int:
    from ..models.surgery import adapt_model
    from ..models.weights import resolve_weights
    from ..spec.archs import get_arch

    weights = resolve_weights(get_arch(args.arch), args.weights)
    _, report = adapt_model(args.arch, args.num_classes, weights=weights, head_variant=args.head_variant,
                            freeze=args.freeze)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format(architectures=not args.brief))
    return 0


def cmd_demo(args) -> int:
    from ..data.demo import generate_demo

    print(generate_demo(args.out, seed=args.seed))
    return 0


# ----------------------------------------------------------------------------- train
def _drain(stream) -> Final | None:
    """Run a record stream to its end (a rank that prints nothing); its Final record."""
    final = None
    for record in stream:
        if isinstance(record, Final):
            final = record
    return final


def _train_flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, its default and help text taken from the field."""
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("flag") == "":
            continue
        names = [_train_flag(f), *f.metadata.get("aliases", ())]
        if isinstance(f.default, bool):
            if f.default:
                parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false",
                                    help=f"turn off: {f.metadata['help']}")
            else:
                parser.add_argument(*names, dest=f.name, action="store_true", help=f.metadata["help"])
            continue
        kind = _field_type(f.name) if f.metadata.get("low") is not None else str
        if f.name == "arch":  # no default here: without --arch the app's rule picks one (weights.default_arch)
            parser.add_argument(*names, dest=f.name, default=None, help=f.metadata["help"] + (
                f" (default: {PREFERRED_ARCH} when its pretrained weights are on this machine, else {OFFLINE_ARCH})"))
            continue
        parser.add_argument(*names, dest=f.name, type=kind, default=f.default, choices=f.metadata.get("choices"),
                            help=f.metadata["help"] + (f" (default {f.default})" if f.default is not None else ""))


def _config_from_args(args) -> tuple[TrainConfig, str]:
    """The run's config, and a note to print once it proved valid (why the architecture was chosen)."""
    from ..models.weights import NO_WEIGHTS, PRETRAINED, default_arch, resolve_weights
    from ..spec.archs import get_arch

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if not values["data_root"] and not values["lists_dir"]:
        raise ConfigError("train needs --data ROOT (class folders) or --lists DIR (train.txt / test.txt)")
    why = ""
    if values["arch"] is None:  # no --arch: what the app does (resnet18 when its weights are here)
        values["arch"], why = default_arch(args.weights if args.weights not in (PRETRAINED, NO_WEIGHTS) else None)
    if getattr(args, "exclude_file", None):
        from ..analysis.datacheck import read_path_list

        values["exclude"] = tuple(read_path_list(args.exclude_file))
    if getattr(args, "keep_together_file", None):
        from ..analysis.datacheck import duplicate_groups_from_json

        values["keep_together"] = tuple(tuple(g) for g in duplicate_groups_from_json(args.keep_together_file))
    cfg = TrainConfig(**values)
    cfg.weights = resolve_weights(get_arch(cfg.arch), args.weights)
    return cfg, why


def _check_data(cfg: TrainConfig) -> None:
    """Refuse bad data before a run folder is made for it."""
    from pathlib import Path

    from ..data.split import read_split

    if cfg.data_root and not Path(cfg.data_root).is_dir():
        raise ConfigError(f"data root '{cfg.data_root}' is not a folder; give a folder with one sub-folder per class")
    if cfg.lists_dir:
        read_split(cfg.lists_dir)


def cmd_train(args) -> int:
    from ..jobs.queue import start_next_queued
    from ..platform.distributed import broadcast, finish, start, world_from_env
    from ..platform.workspace import cache_dir, runs_dir
    from ..runs.rundir import new_run_dir, run_label
    from ..training.run import train

    if args.resume:
        return _resume(args)
    cfg, why = _config_from_args(args)
    _check_data(cfg)
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
        final = print_records(stream) if world.main else _drain(stream)
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


def _progress_line(describe):
    """A progress record's line on stderr: the first and the last, and on a terminal one a second between."""
    last = [0.0]

    def show(record) -> None:
        if not hasattr(record, "done"):
            return
        now = time.monotonic()
        if record.done in (0, record.total) or (sys.stderr.isatty() and now - last[0] >= 1.0):
            last[0] = now
            print(describe(record), file=sys.stderr, flush=True)
    return show


# ----------------------------------------------------------------------------- report
def cmd_report(args) -> int:
    from ..analysis.report import evaluate_tta, run_report

    if not Path(args.run).is_dir():
        raise ConfigError(f"'{args.run}' is not a run folder")
    report = run_report(args.run)
    print_run_report(report)
    data = report.to_json()
    if args.tta:
        tta = follow(evaluate_tta(args.run, args.tta, device=args.device),
                     _progress_line(lambda step: f"test-time augmentation: {step.done}/{step.total} images"))
        kind = "calibrated" if tta.calibrated else "raw"
        print(f"test-time augmentation ({tta.mode}), checkpoint of epoch {tta.epoch}, {tta.images} images: accuracy "
              f"{tta.accuracy:.3f} → {tta.tta_accuracy:.3f}, ECE ({kind}) {tta.ece:.3f} → {tta.tta_ece:.3f}"
              + (f" ({tta.note})" if tta.note else ""))
        data["tta"] = tta.to_json()
    if args.json:
        from ..platform.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(data, indent=1, ensure_ascii=False))
        print(f"full report: {args.json}")
    return 0


def print_run_report(report) -> None:
    from ..jobs.console import test_line
    from ..platform.figures import pct

    print(f"{test_line(report.accuracy, report.tested, report.epoch, report.chosen_on)} · {report.state}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"{'class':<24} precision  recall     f1  support")
    for s in [*report.per_class, report.macro, report.weighted]:
        print(f"{s.name:<24} {s.precision:9.3f} {s.recall:7.3f} {s.f1:6.3f} {s.support:8d}")
    for pair in report.most_confused[:5]:
        print(f"most confused: {pair.sentence()}")
    for image in report.top_losses[:5]:
        print(f"top loss {image.loss:.2f}: {image.path} ({report.classes[image.label]} → "
              f"{report.classes[image.pred]}, {pct(image.prob)}{'' if report.temperature else ' raw'})")
    c = report.calibration
    if c:
        after = f"{c.ece_calibrated:.3f}" if c.ece_calibrated is not None else "n/a (one test image)"
        print(f"calibration: ECE {c.ece:.3f} raw, {after} after temperature scaling (T = {c.temperature:.2f}: "
              f"{c.method})")


# ----------------------------------------------------------------------------- predict
def cmd_predict(args) -> int:
    from ..inference.predict import Predictor

    if args.arch or args.classes:
        predictor = Predictor.from_state_dict(args.run, arch=args.arch, classes=args.classes,
                                              head_variant=args.head_variant, fold=False)
    else:
        predictor = Predictor.load(args.run, fold=not Path(args.image).is_file())
        if Path(args.run).is_dir():
            from ..inference.export import stale_exports

            for stale in stale_exports(args.run):  # predicting here uses the checkpoint; an export may not match it
                print(f"warning: {stale.sentence()}", file=sys.stderr)
    if Path(args.image).is_dir():
        if args.cam:
            raise ConfigError("--cam explains one image; give an image file, not a folder")
        return _predict_folder(predictor, args)
    calibrated = not args.raw and predictor.temperature is not None
    top = predictor.predict(args.image, topk=args.topk, calibrated=calibrated, tta=args.tta)
    note = predictor.transform.tta_note(args.tta)
    result: dict[str, object] = {"image": str(args.image), "model": predictor.source,
              "probabilities": ("calibrated" if calibrated else "raw") + (f", averaged over {args.tta} views"
                                                                          if args.tta else "")
                               + (f" ({note})" if note else ""),
              "temperature": predictor.temperature,
              "predictions": [{"class": c, "probability": p} for c, p in top]}
    if args.cam:
        result["cam"] = _write_cam(predictor, args)
    print(json.dumps(result, indent=2))
    return 0


def _write_cam(predictor, args) -> dict:
    """The Grad-CAM overlay of the top class (or --cam-class) as a PNG; what it shows, for the JSON."""
    from ..models.explain import class_index, explain
    from ..platform.io import atomic_file

    if Path(args.cam).suffix.lower() != ".png":
        raise ConfigError(f"--cam writes a PNG; give a file name ending in .png, not '{args.cam}'")
    explanation = explain(predictor, args.image, class_index(predictor.classes, args.cam_class))
    with atomic_file(args.cam) as f:
        explanation.overlay().save(f, format="PNG")
    return {"file": str(args.cam), "class": explanation.class_name, "probability": explanation.probability}


def cmd_import(args) -> int:
    from ..data.cifar import download_cifar10, import_cifar10

    archive = args.archive or download_cifar10(Path(args.out).parent, progress=_download_line)
    root = import_cifar10(archive, args.out, progress=lambda done, total: print(f"batch {done}/{total} written",
                                                                               flush=True))
    print(f"CIFAR-10 as class folders: {root}/train and {root}/test; list files in {root / 'lists'}")
    return 0


def _download_line(done: int, total: int | None) -> None:
    if sys.stdout.isatty():
        print(f"\rdownloading… {done / 1e6:.0f} MB" + (f" of {total / 1e6:.0f} MB" if total else ""), end="",
              flush=True)


def cmd_export(args) -> int:
    from ..inference.export import export

    path, side = export(args.run, args.format, args.out)
    print(f"exported {args.format}: {path}\nsidecar (classes, input size, preprocessing): {side}")
    return 0


def _predict_folder(predictor, args) -> int:
    """Every image under a folder: one CSV row each (to --csv, or to the console)."""
    import csv

    from ..inference.predict import CSV_HEADER, image_files, predict_many

    paths = image_files(args.image)
    if not paths:
        raise ConfigError(f"no images under '{args.image}'")
    if args.tta:
        raise ConfigError("--tta predicts one image at a time; give an image file, not a folder")
    batches = predict_many(predictor, paths, topk=args.topk, calibrated=not args.raw)
    while True:
        try:
            done, total = next(batches)
        except StopIteration as finished:
            rows = finished.value
            break
        if sys.stderr.isatty():
            print(f"\rpredicted {done}/{total} images", end="", file=sys.stderr, flush=True)
    out = io.StringIO(newline="")
    writer = csv.writer(out if args.csv else sys.stdout)
    writer.writerow(CSV_HEADER)
    writer.writerows(row.csv_fields() for row in rows)
    if args.csv:
        from ..platform.io import atomic_write_text

        atomic_write_text(args.csv, out.getvalue())  # whole or not at all, under the user's own name
        failed = sum(bool(row.error) for row in rows)
        print(f"{len(rows)} images predicted into {args.csv}" + (f"; {failed} could not be read" if failed else ""))
    return 0


# ----------------------------------------------------------------------------- parser
WEIGHTS_HELP = ("pretrained (default: found on this machine, as the app does), none (random initialisation) "
                "or a state-dict FILE")


def _add_split(sub) -> None:
    p = sub.add_parser("split", help="split a class-folder root into train.txt/val.txt/test.txt/classes.json")
    p.add_argument("root")
    p.add_argument("--train-ratio", type=_field_type("train_ratio"), default=field_default("train_ratio"))
    p.add_argument("--val-ratio", type=_field_type("val_ratio"), default=field_default("val_ratio"),
                   help="share of each class's training images set aside as validation (0: none, as the tutorial)")
    p.add_argument("--seed", type=_field_type("seed"), default=field_default("seed"))
    p.add_argument("--out", help="folder for the list files (default: in the workspace)")
    p.add_argument("--force", action="store_true", help="replace list files already in --out")
    p.add_argument("--keep-together", metavar="REPORT.json", help="a report of `inspect --json`: keep each of its "
                                                                  "duplicate groups on one side of the split")
    p.set_defaults(func=cmd_split)


def _add_inspect(sub) -> None:
    from ..analysis.datacheck import NEAR_THRESHOLD

    p = sub.add_parser("inspect", help="check the data: health, duplicates and leakage, label issues, a baseline")
    p.add_argument("--data", dest="data_root", help="a class-folder root, split as a run would split it")
    p.add_argument("--lists", dest="lists_dir", help="a folder with train.txt / test.txt")
    p.add_argument("--arch", help=f"the backbone whose features are compared (default: {PREFERRED_ARCH} when its "
                                  f"pretrained weights are on this machine, else {OFFLINE_ARCH})")
    p.add_argument("--weights", default="pretrained", help=WEIGHTS_HELP)
    p.add_argument("--train-ratio", type=_field_type("train_ratio"), default=field_default("train_ratio"))
    p.add_argument("--seed", type=_field_type("seed"), default=field_default("seed"))
    p.add_argument("--near-threshold", type=_number(0.5, 1.0, float), default=NEAR_THRESHOLD,
                   help=f"cosine similarity of features from which two images count as near copies "
                        f"(default {NEAR_THRESHOLD})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", metavar="OUT.json", help="write the full report here")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache on disk")
    p.add_argument("--letterbox", action="store_true",
                   help="preprocess as a run with --letterbox does (its features are then that run's)")
    p.set_defaults(func=cmd_inspect)


def _add_surgery(sub) -> None:
    p = sub.add_parser("surgery", help="adapt a model to N classes and print the surgery report")
    p.add_argument("--arch", required=True, help=", ".join(ARCHITECTURES))
    p.add_argument("--num-classes", type=_number(1, MAX_CLASSES), required=True)
    p.add_argument("--weights", default="pretrained", help=WEIGHTS_HELP)
    p.add_argument("--head-variant", "--vgg-variant", dest="head_variant",
                   help=", ".join(sorted({v.name for spec in ARCHITECTURES.values() for v in spec.variants})))
    p.add_argument("--freeze", default=field_default("freeze"), choices=list(FREEZE_MODES))
    p.add_argument("--brief", action="store_true", help="leave out the printed architectures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_surgery)


def _resume(args) -> int:
    """``train --resume RUN_DIR``: a stopped or failed run goes on from its last checkpoint."""
    from ..platform.distributed import world_from_env
    from ..platform.workspace import cache_dir
    from ..training.run import resume_training

    if world_from_env().active:
        raise ConfigError("--resume runs as one process; start it without torchrun")
    print(f"run folder: {args.resume}", flush=True)
    final = print_records(resume_training(args.resume, cache_dir=None if args.no_cache else
                                          (args.cache_dir or cache_dir())))
    return 0 if final is None or final.status != RunState.FAILED else EXIT_USER_ERROR


def _add_train(sub) -> None:
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
    p.add_argument("--keep-together", dest="keep_together_file", metavar="REPORT.json",
                   help="with --data: a report of `inspect --json`; each duplicate group stays on one side of the "
                        "split")
    p.set_defaults(func=cmd_train)


def _add_run_settings(p) -> None:
    """The settings of a run, for a command that works with the run's model and cache without training it."""
    add_train_flags(p)
    p.add_argument("--weights", default="pretrained", help=WEIGHTS_HELP)
    p.add_argument("--cache-dir", help="where cached backbone features are kept (default: the workspace's cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache on disk")


def _add_lr_find(sub) -> None:
    p = sub.add_parser("lr-find", help="sweep the learning rate (fastai's finder) for these settings; suggests one")
    _add_run_settings(p)
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--steps", type=_number(10, 1000), default=100, help="mini-batches in the sweep")
    p.add_argument("--json", metavar="OUT.json", help="write the curve and the suggestions as JSON")
    p.set_defaults(func=cmd_lr_find, exclude_file=None, keep_together_file=None)


def cmd_lr_find(args) -> int:
    from ..platform.workspace import cache_dir
    from ..training.lr_find import find_lr

    cfg, why = _config_from_args(args)
    _check_data(cfg)
    if why:
        print(f"note: {why}", file=sys.stderr, flush=True)
    stream = find_lr(cfg, cache_dir=None if args.no_cache else (args.cache_dir or cache_dir()),
                     start_lr=args.start_lr, end_lr=args.end_lr, num_it=args.steps)
    result = follow(stream, _progress_line(lambda record: f"{record.phase.doing}: {record.done}/{record.total}"))
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


def _add_tune(sub) -> None:
    p = sub.add_parser("tune", help="search the head's settings (Optuna, cross-validated on the training split)")
    _add_run_settings(p)
    p.add_argument("--trials", type=_number(1, 10_000), default=50, help="settings to try")
    p.add_argument("--around-lr", type=_number(1e-7, 10.0, float), metavar="LR",
                   help="search learning rates within ×/÷ 10 of LR (the finder's suggestion, `python -m core "
                        "lr-find`) instead of the whole range")
    p.add_argument("--json", metavar="OUT.json", help="write every trial and the best settings as JSON")
    p.add_argument("--train", action="store_true", help="then train a normal run with the best settings (it "
                                                        "records that they came from this search)")
    p.set_defaults(func=cmd_tune, exclude_file=None, keep_together_file=None)


def cmd_tune(args) -> int:
    from ..platform.workspace import cache_dir
    from ..training.tune import save_result, tune_head

    cfg, why = _config_from_args(args)
    if cfg.data_root:
        _check_data(cfg)
    if why:
        print(f"note: {why}", file=sys.stderr, flush=True)
    result = follow(tune_head(cfg, cache_dir=None if args.no_cache else (args.cache_dir or cache_dir()),
                              trials=args.trials, seed=cfg.seed, lr_centre=args.around_lr),
                    _progress_line(lambda record: f"{record.phase.doing}: {record.done}/{record.total}"))
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
    from ..runs.rundir import new_run_dir, run_label
    from ..training.run import train

    tuned = result.apply(cfg)
    out = new_run_dir(runs_dir(), run_label(tuned))
    print(f"run folder: {out}", flush=True)
    final = print_records(train(tuned, out, cache_dir=None if args.no_cache else (args.cache_dir or cache_dir())))
    return 0 if final is None or final.status != RunState.FAILED else EXIT_USER_ERROR


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes for an image, as JSON")
    p.add_argument("run", help="run folder, checkpoint file, or a bare state dict (then --arch and --classes)")
    p.add_argument("image", help="an image, or a folder: every image under it, one CSV row each")
    p.add_argument("--csv", help="with a folder: write the rows to this CSV file (default: the console)")
    p.add_argument("--topk", type=_number(1, MAX_CLASSES), default=5)
    p.add_argument("--arch", help="for a bare state dict (like the tutorial's model_resnet18.pth): "
                                   + ", ".join(ARCHITECTURES))
    p.add_argument("--classes", help="for a bare state dict: names a,b,… in label order, or a file with one per line")
    variants = sorted({v.name for s in ARCHITECTURES.values() for v in s.variants})
    p.add_argument("--head-variant", help="for a bare state dict whose head was adapted otherwise: "
                                           + ", ".join(variants))
    p.add_argument("--cam", metavar="OUT.png", help="with one image: write its Grad-CAM overlay (where the evidence "
                                                     "for the class lies) over the image as the model saw it")
    p.add_argument("--cam-class", help="with --cam: explain this class instead of the predicted one")
    p.add_argument("--raw", action="store_true", help="the raw softmax instead of the probabilities calibrated by "
                                                      "the run's temperature (runs from before calibration: raw)")
    p.add_argument("--tta", choices=list(TTA_MODES), help="test-time augmentation: average the probabilities over "
                   + "; ".join(f"{k}: {v}" for k, v in TTA_MODES.items()))
    p.set_defaults(func=cmd_predict)


def _add_archs(sub) -> None:
    p = sub.add_parser("archs", help="the architectures to choose from: size, input, ImageNet top-1, speed, "
                                     "whether their weights are on this machine")
    p.add_argument("--markdown", action="store_true", help="the docs' table (reference speeds, no local state)")
    p.set_defaults(func=cmd_archs)


def cmd_archs(args) -> int:
    from ..models.arch_choice import architecture_choices, markdown_table, text_table

    print(markdown_table() if args.markdown else text_table(architecture_choices()))
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="after training: confusion, precision/recall/F1, top losses, calibration")
    p.add_argument("run", help="a run folder")
    p.add_argument("--json", metavar="OUT.json", help="write the whole report as JSON for scripts")
    p.add_argument("--tta", choices=list(TTA_MODES), help="also measure test-time augmentation (runs the model "
                                                          "on the test images): " + "; ".join(
                                                              f"{k}: {v}" for k, v in TTA_MODES.items()))
    p.add_argument("--device", default="auto", help="for --tta: auto (the GPU when there is one), cpu, cuda")
    p.set_defaults(func=cmd_report)


def _add_export_import_demo(sub) -> None:
    p = sub.add_parser("export", help="export a run's best model (TorchScript or ONNX) with a JSON sidecar")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    p.add_argument("--out", help="the model file (default: model_<arch>.pt / .onnx in the run folder)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="turn a known dataset into class folders and list files (CIFAR-10)")
    p.add_argument("dataset", choices=["cifar10"])
    p.add_argument("--archive", help="the local cifar-10-python.tar.gz (default: download it, with its MD5 checked)")
    p.add_argument("--out", required=True, help="a new folder for the class folders and list files")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("demo", help="generate the synthetic-shapes demo dataset")
    p.add_argument("out")
    p.add_argument("--seed", type=_field_type("seed"), default=field_default("seed"))
    p.set_defaults(func=cmd_demo)


def _add_runs(sub) -> None:
    p = sub.add_parser("runs", help="the workspace's runs: list them, or clean up what killed writes left behind")
    actions = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
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
    from ..runs.rundir import list_runs

    for info in list_runs(_runs_folder(args)):
        print(f"{info.name}\t{info.status}\t{info.reason}")
    return 0


def cmd_runs_clean(args) -> int:
    from ..runs.rundir import RunDir, clean_leftovers

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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description="Transfer-learning dashboard engine")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_split, _add_inspect, _add_archs, _add_surgery, _add_train, _add_lr_find, _add_tune,
                _add_predict, _add_report, _add_export_import_demo, _add_runs):
        add(sub)
    for name, command in sub.choices.items():
        if name in OUTPUT_FILES:
            flags = ", ".join(f"--{flag}" for flag in OUTPUT_FILES[name])
            command.add_argument("--force", action="store_true", help=f"replace the file {flags} names if it exists")
    return parser


# The files a command writes where the user says (as opposed to run folders and caches it names itself): each
# is refused when it exists already, unless --force, so nothing the user made is overwritten silently.
OUTPUT_FILES = {"inspect": ("json",), "lr-find": ("json",), "tune": ("json",), "report": ("json",),
                "predict": ("csv", "cam"), "export": ("out",)}


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
