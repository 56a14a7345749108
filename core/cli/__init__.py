"""The command line, ``python -m core …`` (and ``tld``): parsing and printing over the same functions the
pages call. One module per command (``split``, ``inspect``, ``train``, …) with its parser (``add_parser``) and
its ``cmd_*`` function; ``args`` holds what they share; ``main`` builds the parser and runs the command.

Every command module imports torch-heavy code (torch, the trainer, scikit-learn) inside its command function,
not at the top: building the parser imports every command module, and ``--help`` and ``split`` must start in
a fraction of a second.

May import: ``platform``, ``spec``, ``data``, ``models``, ``features``, ``runs``, ``inference``,
``training``, ``analysis``, ``jobs``.
"""
from .main import main

__all__ = ["main"]
