"""Where the app keeps what it makes (datasets, list files, runs, caches), and which folders
a visitor may make it read.

The workspace is ``$TLD_WORKSPACE`` or ``./workspace``. These functions only name paths; the
code that writes into a folder creates it. Data roots, class folders, image files and weights
files that a browser visitor names must resolve (symbolic links followed) inside
``$TLD_ALLOWED_ROOTS``, by default the workspace and the current folder. The CLI is the
user's own shell and is not confined.
"""
from __future__ import annotations

import errno
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

from .errors import DatasetError, UserError
from .io import atomic_write_json, read_json_file
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


def checks_dir() -> Path:
    """Stored data checks (``core.analysis.datacheck``), one JSON file per split, architecture and weights."""
    return workspace_dir() / "checks"


def _remembered_file(visitor: str) -> Path:
    return workspace_dir() / "state" / f"data-root-{hashlib.sha256(visitor.encode()).hexdigest()[:16]}.json"


def remember_data_root(path: str | os.PathLike, visitor: str) -> None:
    """Keep ``visitor``'s chosen data root in the workspace, so the bare address opens it next time.
    Best effort: a workspace that cannot be written only forgets it."""

    try:
        _remembered_file(visitor).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(_remembered_file(visitor), {"data_root": str(path)})
    except (OSError, UserError):
        pass


def remembered_data_root(visitor: str) -> str | None:
    """The data root ``visitor`` chose last, or None (never chosen, or the file is damaged)."""

    try:
        value = read_json_file(_remembered_file(visitor), limit=1024**2).get("data_root")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def default_data_root() -> str | None:
    """The workspace's default data root (``TLD_DATA_ROOT``); None: the demo dataset."""
    return settings().data_root


def allowed_roots() -> tuple[Path, ...]:
    return settings().allowed_roots


PATH_MAX, NAME_MAX = 4096, 255  # Linux's limits: longer paths and names cannot exist, so refuse them up front


def path_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot name a file at all (a NUL byte, too long), or None when it can."""
    text = os.fspath(path)
    if isinstance(text, bytes) or "\x00" in text:
        return "it contains a NUL byte"
    if len(text.encode("utf-8", "surrogateescape")) > PATH_MAX:
        return f"it is longer than {PATH_MAX} bytes"
    if any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX for part in text.split(os.sep)):
        return f"one of its names is longer than {NAME_MAX} bytes"
    return None


def shown(path: str | os.PathLike, limit: int = 120) -> str:
    """A path as a message quotes it: NULs visible, a long one cut in the middle."""
    text = os.fspath(path).replace("\x00", "\\0")
    return text if len(text) <= limit else f"{text[:limit // 2]}…{text[-limit // 2:]}"


def is_allowed(path: str | os.PathLike, roots: tuple[Path, ...] | None = None) -> bool:
    """Whether ``path``, every symbolic link resolved, lies under one of the allowed roots (False for a
    path that cannot exist: a NUL byte, too long, a link loop)."""
    if path_problem(path):
        return False
    try:
        resolved = Path(os.path.realpath(path))
    except (OSError, ValueError):
        return False
    return any(resolved == root or root in resolved.parents for root in (roots or allowed_roots()))


def check_allowed(path: str | os.PathLike) -> Path:
    """Resolve ``path`` (symlinks included) and refuse it unless it lies under an allowed root.

    The refusal is the same whether or not the path exists, so it reveals nothing about the server.
    """
    problem = path_problem(path)
    if problem:
        raise DatasetError(f"'{shown(path)}' is not a usable path: {problem}")
    if is_allowed(path):
        return Path(os.path.realpath(path))
    allowed = ", ".join(str(r) for r in allowed_roots())
    raise DatasetError(f"'{shown(path)}' is outside the folders this app may read ({allowed}); "
                       "set TLD_ALLOWED_ROOTS to allow more")


def lists_dir_for(root: str | os.PathLike) -> Path:
    """The workspace folder that holds the list files of a data root."""
    resolved = Path(root).expanduser().resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    return lists_dir() / f"{resolved.name or 'root'}-{tag}"


NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class WorkspaceNotWritable(UserError):
    """The workspace cannot be written; the message says where and what still works."""


@contextmanager
def workspace_writes(what: str):
    """Turn a failed write into the workspace (read-only, no permission) into a message saying where, and
    that what reads only (following runs, prediction) still works. ``what``: e.g. "start a run"."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NOT_WRITABLE:
            raise
        raise WorkspaceNotWritable(
            f"could not {what}: the workspace '{workspace_dir()}' is not writable ({exc.strerror or exc}). "
            "Existing runs can still be followed, and prediction still works; to train or save datasets, "
            "whoever runs the app must make it writable or set TLD_WORKSPACE to a writable folder") from None
