"""``python -m core surgery``: adapt a model to N classes and print what was done."""

from __future__ import annotations

import json

from ..data.split import MAX_CLASSES
from ..spec.archs import ARCHITECTURES
from ..spec.config import FREEZE_MODES, field_default
from .args import WEIGHTS_HELP, number


def cmd_surgery(args) -> int:
    from ..models.surgery import adapt_model
    from ..models.weights import resolve_weights
    from ..spec.archs import get_arch

    weights = resolve_weights(get_arch(args.arch), args.weights)
    _, report = adapt_model(args.arch, args.num_classes, weights=weights, head_variant=args.head_variant,
                            freeze=args.freeze)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format(architectures=not args.brief))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("surgery", help="adapt a model to N classes and print the surgery report")
    p.add_argument("--arch", required=True, help=", ".join(ARCHITECTURES))
    p.add_argument("--num-classes", type=number(1, MAX_CLASSES), required=True)
    p.add_argument("--weights", default="pretrained", help=WEIGHTS_HELP)
    p.add_argument("--head-variant", "--vgg-variant", dest="head_variant",
                   help=", ".join(sorted({v.name for spec in ARCHITECTURES.values() for v in spec.variants})))
    p.add_argument("--freeze", default=field_default("freeze"), choices=list(FREEZE_MODES))
    p.add_argument("--brief", action="store_true", help="leave out the printed architectures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_surgery)
