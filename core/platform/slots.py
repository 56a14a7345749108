"""Heavy work a page does in its own process (the data check, the learning-rate finder, the head search,
test-time augmentation, predicting many images), capped per server: at most ``limit`` at once, the rest
waiting in line, first come first served, each told its place.

Training runs have their own cap and queue (``TLD_MAX_RUNNING``, core.jobs.queue): they run in worker
processes. This is for work that runs inside the server process, in a visitor's script thread, where
ten visitors clicking at once would otherwise share the CPU ten ways and all wait ten times as long.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field


@dataclass
class WorkSlots:
    """A fair line in front of ``limit`` slots. Thread-safe; one per server process (``PAGE_WORK``)."""

    max_waiting: int = 50  # beyond this many in line a visitor is asked to come back rather than queued
    _running: set = field(default_factory=set, repr=False)
    _line: list = field(default_factory=list, repr=False)  # tickets waiting, oldest first
    _numbers: itertools.count = field(default_factory=itertools.count, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def join(self) -> int | None:
        """A ticket in the line, or None when the line is full (the caller asks the visitor to come back)."""
        with self._lock:
            if len(self._line) >= self.max_waiting:
                return None
            ticket = next(self._numbers)
            self._line.append(ticket)
            return ticket

    def start(self, ticket: int, limit: int) -> int:
        """0 when ``ticket`` holds a slot now (taken, if it was at the front of the line and a slot was free);
        else its place in the line, 1 being next."""
        with self._lock:
            if ticket in self._running:
                return 0
            place = self._line.index(ticket)
            if place == 0 and len(self._running) < limit:
                self._line.pop(0)
                self._running.add(ticket)
                return 0
            return place + 1

    def leave(self, ticket: int) -> None:
        """Give the slot back, or step out of the line (Stop, an error, a closed tab): always, in a finally."""
        with self._lock:
            self._running.discard(ticket)
            if ticket in self._line:
                self._line.remove(ticket)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._line)


PAGE_WORK = WorkSlots()
