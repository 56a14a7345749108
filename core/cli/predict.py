"""``python -m core predict``: top classes for an image or a folder of images, Grad-CAM on request."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

from ..data.split import MAX_CLASSES
from ..platform.errors import ConfigError
from ..spec.archs import ARCHITECTURES
from ..spec.config import TTA_MODES
from ..spec.records import follow
from .args import number, print_class_scores


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


def _predict_folder(predictor, args) -> int:
    """Every image under a folder: one CSV row each (to --csv, or to the console)."""
    import csv

    from ..analysis.scored import score_predictions, trained_on
    from ..inference.predict import CSV_HEADER, image_files, predict_many

    paths = image_files(args.image)
    if not paths:
        raise ConfigError(f"no images under '{args.image}'")
    if args.tta:
        raise ConfigError("--tta predicts one image at a time; give an image file, not a folder")
    def said(progress: tuple[int, int]) -> None:
        if sys.stderr.isatty():
            print(f"\rpredicted {progress[0]}/{progress[1]} images", end="", file=sys.stderr, flush=True)

    rows = follow(predict_many(predictor, paths, topk=args.topk, calibrated=not args.raw), said)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    names = {p: Path(os.path.relpath(p, args.image)).as_posix() for p in paths}
    seen = trained_on(args.run) if Path(args.run).is_dir() else set()
    score = score_predictions(rows, names, predictor.classes, seen)
    if args.json and score is None:
        raise ConfigError(f"--json scores a labelled folder, and no image under '{args.image}' is in a sub-folder "
                          f"named as one of the model's classes ({', '.join(predictor.classes[:10])}…)")
    out = io.StringIO(newline="")
    if args.csv or score is None:  # a labelled folder prints its scores; its rows go to --csv
        writer = csv.writer(out if args.csv else sys.stdout)
        writer.writerow(CSV_HEADER)
        writer.writerows(row.csv_fields() for row in rows)
    if score is not None:
        _print_score(score)
        if args.json:
            from ..platform.io import atomic_write_text

            atomic_write_text(args.json, json.dumps(score.to_json(), indent=1, ensure_ascii=False))
            print(f"scored report: {args.json}")
    if args.csv:
        from ..platform.io import atomic_write_text

        atomic_write_text(args.csv, out.getvalue())  # whole or not at all, under the user's own name
        failed = sum(bool(row.error) for row in rows)
        print(f"{len(rows)} images predicted into {args.csv}" + (f"; {failed} could not be read" if failed else ""))
    return 0


def _print_score(score) -> None:
    print(score.summary())
    print_class_scores(score.per_class, (score.macro, score.weighted), score.most_confused, shown=30)
    for image in score.misclassified[:10]:
        print(f"misclassified: {image.name}: {score.classes[image.label]} taken for {score.classes[image.pred]} "
              f"({100 * image.probability:.0f}%)")


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes for an image, as JSON; a folder's images as CSV rows, scored "
                                       "when its sub-folders are named as the model's classes")
    p.add_argument("run", help="run folder, checkpoint file, or a bare state dict (then --arch and --classes)")
    p.add_argument("image", help="an image, or a folder: every image under it, one CSV row each")
    p.add_argument("--csv", help="with a folder: write the rows to this CSV file (default: the console)")
    p.add_argument("--json", metavar="OUT.json", help="with a labelled folder (sub-folders named as the model's "
                                                      "classes): write the scored report (accuracy with its interval, "
                                                      "per-class scores, confusion matrix, misclassified images)")
    p.add_argument("--topk", type=number(1, MAX_CLASSES), default=5)
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
