"""``python -m core export``, ``import cifar10`` and ``demo``: a run exported, and datasets made."""

from __future__ import annotations

from pathlib import Path

from ..spec.config import field_default
from .args import download_line, field_type


def cmd_import(args) -> int:
    from ..data.cifar import download_cifar10, import_cifar10

    archive = args.archive or download_cifar10(Path(args.out).parent, progress=download_line)
    root = import_cifar10(archive, args.out, progress=lambda done, total: print(f"batch {done}/{total} written",
                                                                               flush=True))
    print(f"CIFAR-10 as class folders: {root}/train and {root}/test; list files in {root / 'lists'}")
    return 0


def cmd_demo(args) -> int:
    from ..data.demo import generate_demo

    print(generate_demo(args.out, seed=args.seed))
    return 0


def cmd_export(args) -> int:
    from ..inference.export import export

    path, side = export(args.run, args.format, args.out)
    print(f"exported {args.format}: {path}\nsidecar (classes, input size, preprocessing): {side}")
    return 0


def add_parser(sub) -> None:
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
    p.add_argument("--seed", type=field_type("seed"), default=field_default("seed"))
    p.set_defaults(func=cmd_demo)
