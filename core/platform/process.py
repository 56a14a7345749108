"""Process identity: which process wrote a file, and whether that process still exists (psutil).

A pid alone is not an identity (pids are reused); a pid with the start time of that process is. Run files
(status.json, resume claims) and the temporary files of atomic writes record both, so a reader can tell a live
writer from one that is provably gone without guessing from ages or logs.
"""
from __future__ import annotations

import os
import socket
from functools import lru_cache

import psutil


def process_start_id(pid: int) -> int | None:
    """When ``pid`` started, in hundredths of a second since the epoch: with the pid it names one process."""
    try:
        return round(psutil.Process(pid).create_time() * 100)
    except (psutil.Error, OSError, ValueError):
        return None


@lru_cache(maxsize=1)
def _own_identity(pid: int) -> str:
    return f"{pid}-{process_start_id(pid) or 0}"


def own_identity() -> str:
    """This process as ``PID-START``: the tag a temporary file's name carries (a fork gets its own)."""
    return _own_identity(os.getpid())


def parse_identity(tag: str) -> tuple[int, int | None] | None:
    """(pid, start or None) from an ``own_identity`` tag; None when ``tag`` is not one."""
    pid, sep, start = tag.partition("-")
    if not sep or not pid.isdigit() or not start.isdigit():
        return None
    return int(pid), (int(start) or None)


def process_gone(pid: int | None, pid_start: int | None, host: str | None = None) -> bool | None:
    """True when the process ``pid`` (started at ``pid_start``) provably no longer exists on this machine;
    False when it runs; None when this machine cannot tell (no pid, another host, not allowed to look)."""
    if pid is None or (host is not None and host != socket.gethostname()):
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True  # exited, only its exit status is left
        start = round(process.create_time() * 100)
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, OSError):
        return None
    return pid_start is not None and start != pid_start
