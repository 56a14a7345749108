"""``python -m core report RUN_DIR``: a finished run's report."""

from __future__ import annotations

import json
from pathlib import Path

from ..platform.errors import ConfigError
from ..spec.config import TTA_MODES
from ..spec.records import follow
from .args import print_class_scores, progress_line


def cmd_report(args) -> int:
    from ..analysis.report import evaluate_tta, run_report

    if not Path(args.run).is_dir():
        raise ConfigError(f"'{args.run}' is not a run folder")
    report = run_report(args.run)
    print_run_report(report)
    data = report.to_json()
    if args.tta:
        tta = follow(evaluate_tta(args.run, args.tta, device=args.device),
                     progress_line(lambda step: f"test-time augmentation: {step.done}/{step.total} images"))
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
    print_class_scores(report.per_class, (report.macro, report.weighted), report.most_confused)
    for image in report.top_losses[:5]:
        print(f"top loss {image.loss:.2f}: {image.path} ({report.classes[image.label]} → "
              f"{report.classes[image.pred]}, {pct(image.prob)}{'' if report.temperature else ' raw'})")
    c = report.calibration
    if c:
        after = f"{c.ece_calibrated:.3f}" if c.ece_calibrated is not None else "n/a (one test image)"
        print(f"calibration: ECE {c.ece:.3f} raw, {after} after temperature scaling (T = {c.temperature:.2f}: "
              f"{c.method})")


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="after training: confusion, precision/recall/F1, top losses, calibration")
    p.add_argument("run", help="a run folder")
    p.add_argument("--json", metavar="OUT.json", help="write the whole report as JSON for scripts")
    p.add_argument("--tta", choices=list(TTA_MODES), help="also measure test-time augmentation (runs the model "
                                                          "on the test images): " + "; ".join(
                                                              f"{k}: {v}" for k, v in TTA_MODES.items()))
    p.add_argument("--device", default="auto", help="for --tta: auto (the GPU when there is one), cpu, cuda")
    p.set_defaults(func=cmd_report)
