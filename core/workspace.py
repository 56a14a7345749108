"""Where the app keeps what it makes (datasets, list files, runs, caches), and which folders
a visitor may make it read.

The workspace is ``$TLD_WORKSPACE`` or ``./workspace``. These functions only name paths; the
code that writes into a folder creates it. Data roots, class folders, image files and weights
files that a browser visitor names must resolve (symbolic links followed) inside
``$TLD_ALLOWED_ROOTS``, by default the workspace and the current folder. The CLI is the
user's own shell and is not confined.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import DatasetError
from .settings import settings


def workspace_dir() -> Path:
    return settings().workspace


def runs_dir() -> Path:
    return workspace_dir() / "runs"


def datasets_dir() -> Path:
    return workspace_dir() / "datasets"


def lists_dir() -> Path:
    return workspace_dir() / "lists"


def cache_dir() -> Path:
    return workspace_dir() / "cache"


def default_data_root() -> str | None:
    """The workspace's default data root (``TLD_DATA_ROOT``); None: the demo dataset."""
    return settings().data_root


def allowed_roots() -> tuple[Path, ...]:
    return settings().allowed_roots


def is_allowed(path: str | os.PathLike, roots: tuple[Path, ...] | None = None) -> bool:
    """Whether ``path``, every symbolic link resolved, lies under one of the allowed roots."""
    resolved = Path(os.path.realpath(path))
    return any(resolved == root or root in resolved.parents for root in (roots or allowed_roots()))


def check_allowed(path: str | os.PathLike) -> Path:
    """Resolve ``path`` (symlinks included) and refuse it unless it lies under an allowed root.

    The refusal is the same whether or not the path exists, so it reveals nothing about the server.
    """
    if is_allowed(path):
        return Path(os.path.realpath(path))
    allowed = ", ".join(str(r) for r in allowed_roots())
    raise DatasetError(f"'{path}' is outside the folders this app may read ({allowed}); "
                       "set TLD_ALLOWED_ROOTS to allow more")


def lists_dir_for(root: str | os.PathLike) -> Path:
    """The workspace folder that holds the list files of a data root."""
    resolved = Path(root).expanduser().resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    return lists_dir() / f"{resolved.name or 'root'}-{tag}"
