"""The command line, ``python -m core …`` (and ``tld``): parsing and printing over the same functions the
pages call.

May import: ``platform``, ``spec``, ``data``, ``models``, ``features``, ``runs``, ``inference``,
``training``, ``analysis``, ``jobs``.
"""
from .main import main

__all__ = ["main"]
