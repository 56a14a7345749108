"""Process identity: which process wrote a file, and whether that process still exists.

A pid alone is not an identity (pids are reused); a pid with the kernel's start time of that process is.
Run files (status.json, resume claims) and the temporary files of atomic writes record both, so a reader can
tell a live writer from one that is provably gone without guessing from ages or logs.
"""
from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): with the pid it names one process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


@lru_cache(maxsize=1)
def _own_identity(pid: int) -> str:
    return f"{pid}-{process_start_ticks(pid) or 0}"


def own_identity() -> str:
    """This process as ``PID-STARTTICKS``: the tag a temporary file's name carries (a fork gets its own)."""
    return _own_identity(os.getpid())


def parse_identity(tag: str) -> tuple[int, int | None] | None:
    """(pid, start ticks or None) from an ``own_identity`` tag; None when ``tag`` is not one."""
    pid, sep, start = tag.partition("-")
    if not sep or not pid.isdigit() or not start.isdigit():
        return None
    return int(pid), (int(start) or None)


def process_gone(pid: int | None, pid_start: int | None, host: str | None = None) -> bool | None:
    """True when the process ``pid`` (started at ``pid_start``) provably no longer exists on this machine;
    False when it runs; None when this machine cannot tell (no pid, another host, /proc unreadable)."""
    if pid is None or (host is not None and host != socket.gethostname()):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True  # exited, only its exit status is left
    except (OSError, IndexError):
        return None
    start = process_start_ticks(pid)
    return pid_start is not None and start is not None and start != pid_start
