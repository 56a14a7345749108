"""Command line over the same functions the pages use: ``python -m core {split,surgery,train,predict,demo}``."""
from __future__ import annotations

import argparse
import json
import sys

from .archs import ARCHITECTURES
from .config import TrainConfig
from .errors import UserError
from .surgery import FREEZE_MODES


def cmd_split(args) -> int:
    from .data import split_dataset, write_split
    from .workspace import lists_dir_for

    split = split_dataset(args.root, args.train_ratio, args.seed)
    out = write_split(split, args.out or lists_dir_for(args.root), overwrite=args.force)
    for c in split.counts():
        print(f"{c.label:3d} {c.name:<24} train {c.train:6d}  test {c.test:6d}")
    print(f"total: {len(split.train)} train, {len(split.test)} test; lists written to {out}")
    for s in split.skipped:
        print(f"skipped: {s.path}: {s.reason}")
    for w in split.warnings:
        print(f"warning: {w}")
    return 0


def cmd_surgery(args) -> int:
    from .surgery import adapt_model

    _, report = adapt_model(args.arch, args.num_classes, weights=args.weights, variant=args.vgg_variant,
                            freeze=args.freeze)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format(architectures=not args.brief))
    return 0


def _progress_line(record: dict) -> str | None:
    kind = record["type"]
    if kind == "start":
        return (f"training {record['arch']} on {record['device_name']} ({record['path']}): "
                f"{record['train_size']} train / {record['test_size']} test images, {len(record['classes'])} classes")
    if kind == "features":
        origin = "read from cache" if record["from_disk"] else "computed"
        return f"features for {record['split']}: {record['images']} images {origin} ({record['seconds']:.1f}s)"
    if kind == "batch":
        return f"epoch {record['epoch']}  loss: {record['loss']:>7f}  [{record['seen']:>5d}/{record['total']:>5d}]"
    if kind == "epoch":
        return (f"epoch {record['epoch']} done: train loss {record['train_loss']:.4f}, test loss "
                f"{record['test_loss']:.4f}, test accuracy {100 * record['test_acc']:.1f}% ({record['seconds']:.1f}s)"
                if record["test_acc"] is not None else f"epoch {record['epoch']} done: no test images")
    return None


def cmd_train(args) -> int:
    from .train import train

    if args.config:
        cfg = TrainConfig.load(args.config)
    else:
        cfg = TrainConfig(arch=args.arch, head_variant=args.vgg_variant, freeze=args.freeze, weights=args.weights,
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                          weight_decay=args.weight_decay, train_ratio=args.train_ratio, seed=args.seed,
                          num_workers=args.num_workers, device=args.device, flip=args.flip,
                          letterbox=args.letterbox, feature_cache=not args.no_feature_cache,
                          log_every=args.log_every, data_root=args.data, lists_dir=args.lists)
    cfg.validate()
    final = None
    for record in train(cfg, args.out, cache_dir=args.cache_dir):
        line = _progress_line(record)
        if line:
            print(line, flush=True)
        final = record
    print(json.dumps({k: final[k] for k in ("status", "reason", "best_acc", "best_epoch", "final_acc",
                                            "seconds", "device_name", "path")}, indent=2))
    return 0 if final["status"] == "completed" else 1


def cmd_predict(args) -> int:
    from .predict import Predictor

    predictor = Predictor.load(args.run)
    top = predictor.predict(args.image, topk=args.topk)
    print(json.dumps({"image": str(args.image), "run": str(args.run),
                      "predictions": [{"class": c, "probability": p} for c, p in top]}, indent=2))
    return 0


def cmd_demo(args) -> int:
    from .demo import generate_demo

    print(generate_demo(args.out, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Transfer-learning dashboard engine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("split", help="split a class-folder root into train.txt/test.txt/classes.json")
    p.add_argument("root")
    p.add_argument("--train-ratio", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for the list files (default: in the workspace)")
    p.add_argument("--force", action="store_true", help="replace list files already in --out")
    p.set_defaults(func=cmd_split)

    arch_help = f"one of {', '.join(ARCHITECTURES)}"
    p = sub.add_parser("surgery", help="adapt a model to N classes and print the surgery report")
    p.add_argument("--arch", required=True, help=arch_help)
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--weights", help="pretrained state-dict file")
    p.add_argument("--vgg-variant", "--head-variant", dest="vgg_variant", help="replace, add_outside or add_inside")
    p.add_argument("--freeze", default="head", choices=list(FREEZE_MODES))
    p.add_argument("--brief", action="store_true", help="leave out the printed architectures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_surgery)

    d = TrainConfig()
    p = sub.add_parser("train", help="train and write a run folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="class-folder root (split at start)")
    src.add_argument("--lists", help="folder with train.txt, test.txt, classes.json")
    src.add_argument("--config", help="a config.json (as the app's worker uses)")
    p.add_argument("--arch", default=d.arch, help=arch_help)
    p.add_argument("--weights")
    p.add_argument("--vgg-variant", "--head-variant", dest="vgg_variant")
    p.add_argument("--freeze", default=d.freeze, choices=list(FREEZE_MODES))
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--train-ratio", type=float, default=d.train_ratio)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--device", default=d.device)
    p.add_argument("--flip", action="store_true", help="random horizontal flip augmentation")
    p.add_argument("--letterbox", action="store_true", help="the tutorial's letterbox preprocessing")
    p.add_argument("--no-feature-cache", action="store_true")
    p.add_argument("--log-every", type=int, default=d.log_every, help="batches between loss lines")
    p.add_argument("--cache-dir", help="where cached backbone features are kept")
    p.add_argument("--out", required=True, help="run folder (must not hold a run already)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="top-k classes for an image, as JSON")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("image")
    p.add_argument("--topk", type=int, default=5)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="generate the synthetic-shapes demo dataset")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train" and not (args.data or args.lists or args.config):
        print("error: train needs --data ROOT, --lists DIR or --config FILE", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
