"""``python -m core archs``: the architecture chooser as text."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("archs", help="the architectures to choose from: size, input, ImageNet top-1, speed, "
                                     "whether their weights are on this machine")
    p.add_argument("--markdown", action="store_true", help="the docs' table (reference speeds, no local state)")
    p.set_defaults(func=cmd_archs)


def cmd_archs(args) -> int:
    from ..models.arch_choice import architecture_choices, markdown_table, text_table

    print(markdown_table() if args.markdown else text_table(architecture_choices()))
    return 0
