"""A run's state: ``status.json``, written only by the training process (state, pid and its start time, phase,
a heartbeat every ``HEARTBEAT_S``), and what a reader concludes from it (not responding, failed once the process
is gone, a run from before status.json existed).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..platform.io import atomic_write_json, read_json_file, read_tail_text
from ..platform.process import process_gone, process_start_id
from ..spec.states import ENDED, WRITTEN, RunState
from .rundir import DamagedRun, RunDir

HEARTBEAT_S = 2.0  # how often the training process rewrites status.json


STALE_AFTER_S = 30.0  # a 'running' run whose heartbeat is older than this is 'not responding'


@dataclass(frozen=True)
class WorkerState:
    state: RunState  # one of WRITTEN: the process's own word on the run
    pid: int | None
    phase: str = ""
    reason: str = ""
    heartbeat: float = field(default_factory=time.time)
    host: str = field(default_factory=socket.gethostname)
    pid_start: int | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def write_status(run: RunDir, state: WorkerState) -> None:
    atomic_write_json(run.status_file, state.to_json())


def this_process_state(state: RunState, phase: str = "", reason: str = "") -> WorkerState:
    pid = os.getpid()
    return WorkerState(state, pid=pid, phase=phase, reason=reason, pid_start=process_start_id(pid))


class Heartbeat:
    """Keeps status.json fresh from a background thread while the training process works.

    The main loop only sets ``phase``; the thread rewrites the file every HEARTBEAT_S, so
    the heartbeat stays fresh even inside a long batch or a slow first DataLoader start.
    """

    def __init__(self, run: RunDir, interval: float = HEARTBEAT_S):
        self.run, self.interval, self.phase = run, interval, "setting up"  # free text, for people
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._write(RunState.RUNNING)
        self._thread.start()
        return self

    def set_phase(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self._write(RunState.RUNNING)

    def finish(self, state: RunState, reason: str) -> None:
        self._stop.set()
        self._thread.join()
        self._write(state, reason)

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._write(RunState.RUNNING)
            except OSError:  # a full disk must not kill the run from this thread; the next beat retries
                pass

    def _write(self, state: RunState, reason: str = "") -> None:
        with self._lock:
            write_status(self.run, this_process_state(state, self.phase, reason))


def read_run_json(path: Path, what: str):
    try:
        return read_json_file(path)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedRun(path.name, f"{what} cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from None


def read_worker_state(run: RunDir) -> WorkerState | None:
    data = read_run_json(run.status_file, "the worker's status")
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("state") not in WRITTEN:
        raise DamagedRun(run.status_file.name, "it is not a status written by this tool")
    try:
        fields = {k: v for k, v in data.items() if k in WorkerState.__dataclass_fields__}
        return WorkerState(**{**fields, "state": RunState(data["state"])})
    except TypeError as exc:
        raise DamagedRun(run.status_file.name, str(exc)) from None


def writer_gone(state: WorkerState) -> bool | None:
    """True when the worker's process no longer exists; None when this machine cannot tell."""
    return process_gone(state.pid, state.pid_start, state.host)


def _last_log_line(run: RunDir) -> str:
    try:
        lines = [line for line in read_tail_text(run.log).splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def read_status(run: RunDir, now: float | None = None) -> tuple[RunState, str]:
    """(status, reason), from status.json alone: starting, running, not responding,
    completed, stopped, failed, or damaged when the file cannot be read."""
    try:
        state = read_worker_state(run)
    except DamagedRun as exc:
        return RunState.DAMAGED, str(exc)
    if state is None:
        return _legacy_status(run)
    if state.state in ENDED:
        return state.state, state.reason
    if state.state is RunState.QUEUED:
        return RunState.QUEUED, state.phase
    if writer_gone(state):
        last = _last_log_line(run)
        return RunState.FAILED, ("the training process ended without finishing the run (killed or crashed)"
                          + (f": {last}" if last else ""))
    age = (now or time.time()) - state.heartbeat
    if age > STALE_AFTER_S:
        return RunState.NOT_RESPONDING, f"no heartbeat for {age:.0f}s (phase: {state.phase or 'unknown'})"
    return state.state, state.phase


def _legacy_status(run: RunDir) -> tuple[RunState, str]:
    """Run folders written before status.json existed: their summary says how they ended."""
    try:
        summary = read_run_json(run.summary, "the summary")
    except DamagedRun as exc:
        return RunState.DAMAGED, str(exc)
    if isinstance(summary, dict) and summary.get("status") in ENDED:
        return RunState(summary["status"]), str(summary.get("reason", ""))
    try:
        if time.time() - run.config.stat().st_mtime < STALE_AFTER_S:
            return RunState.STARTING, "being created"  # written into a user's non-empty folder, status next
    except OSError:
        pass
    return RunState.FAILED, "no training process ever reported on this run"
