"""Where the app keeps what it makes: datasets, list files, runs, caches.

The workspace is ``$TLD_WORKSPACE`` or ``./workspace``. Data roots the app may read are
limited to ``$TLD_ALLOWED_ROOTS`` (paths separated by ``os.pathsep``), by default the
workspace and the current folder, so a browser user cannot point the server at any folder.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import DatasetError


def workspace_dir() -> Path:
    path = Path(os.environ.get("TLD_WORKSPACE", "workspace")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sub(name: str) -> Path:
    path = workspace_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    return _sub("runs")


def datasets_dir() -> Path:
    return _sub("datasets")


def lists_dir() -> Path:
    return _sub("lists")


def cache_dir() -> Path:
    return _sub("cache")


def allowed_roots() -> list[Path]:
    configured = os.environ.get("TLD_ALLOWED_ROOTS")
    if configured:
        return [Path(p).expanduser().resolve() for p in configured.split(os.pathsep) if p.strip()]
    return [workspace_dir(), Path.cwd().resolve()]


def check_allowed(path: str | os.PathLike) -> Path:
    """Resolve ``path`` (symlinks included) and refuse it unless it lies under an allowed root."""
    resolved = Path(path).expanduser().resolve()
    for root in allowed_roots():
        if resolved == root or root in resolved.parents:
            return resolved
    allowed = ", ".join(str(r) for r in allowed_roots())
    raise DatasetError(f"'{path}' is outside the folders this app may read ({allowed}); "
                       "set TLD_ALLOWED_ROOTS to allow more")


def lists_dir_for(root: str | os.PathLike) -> Path:
    """The workspace folder that holds the list files of a data root."""
    resolved = Path(root).expanduser().resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    return lists_dir() / f"{resolved.name or 'root'}-{tag}"


def default_data_root() -> str | None:
    """The workspace's default data root (``TLD_DATA_ROOT``); None: the demo dataset."""
    return os.environ.get("TLD_DATA_ROOT") or None
