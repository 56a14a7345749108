"""Every state a run can be shown in, and every phase a progress record reports: the one place they are named.

Both are ``str`` enums: they are written to status.json, metrics.jsonl and summary.json as their plain
values ("completed", "features"), compare equal to those strings, and format as them in messages, so
files written before these types existed read the same.
"""
from __future__ import annotations

from enum import Enum


class _Named(str, Enum):
    def __str__(self) -> str:  # "completed", not "RunState.COMPLETED", in f-strings and messages
        return self.value

    __format__ = str.__format__


class RunState(_Named):
    QUEUED = "queued"  # waiting for a free slot (TLD_MAX_RUNNING); no process yet
    STARTING = "starting"  # a process was started, or is setting up
    RUNNING = "running"
    NOT_RESPONDING = "not responding"  # running, but no heartbeat for STALE_AFTER_S (a reader's conclusion)
    COMPLETED = "completed"
    STOPPED = "stopped"  # on request, cancelled while queued, or interrupted
    FAILED = "failed"
    DAMAGED = "damaged"  # a file of the run cannot be read (a reader's conclusion)

    @property
    def ended(self) -> bool:
        """No process works on the run any more (damaged runs are not counted: nobody knows)."""
        return self in ENDED

    @property
    def busy(self) -> bool:
        """Holds one of the TLD_MAX_RUNNING slots."""
        return self in (RunState.STARTING, RunState.RUNNING, RunState.NOT_RESPONDING)

    @property
    def finished(self) -> bool:
        """Nothing more will happen to it: ended, or damaged."""
        return self in ENDED or self is RunState.DAMAGED


ENDED = (RunState.COMPLETED, RunState.STOPPED, RunState.FAILED)
WRITTEN = (RunState.QUEUED, RunState.STARTING, RunState.RUNNING, *ENDED)  # the states status.json may hold


class Phase(_Named):
    """What a progress record counts."""
    FEATURES = "features"  # the frozen part's pass over the images, computed once
    TEST = "test"  # a test pass after an epoch
