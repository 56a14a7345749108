"""Creating runs and claiming them: a new, named run folder made atomically (staged, then renamed into place),
the one claim that starts a queued run, and the claim of each resume attempt, taken under the run's lock and
taken over when the process that held it is gone."""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

from filelock import FileLock

from ..platform.errors import ConfigError, RunError
from ..platform.io import atomic_write_json, atomic_write_text, read_json_file
from ..platform.process import process_start_id
from ..spec.config import TrainConfig
from ..spec.states import RunState
from .rundir import RunDir
from .status import WorkerState, read_status, write_status, writer_gone

RESUME_LOCK = ".resume.lock"  # in a run folder: held while a resume looks at and writes its claim


def new_run_dir(parent: str | os.PathLike, label: str = "") -> Path:
    """A fresh, uniquely named folder: two runs started in the same second never share one."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%d-%H%M%S") + (f"-{label}" if label else "")
    while True:
        path = parent / f"{stem}-{secrets.token_hex(2)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def run_label(cfg: TrainConfig) -> str:
    return f"{cfg.arch}-{'pt' if cfg.pretrained else 'scratch'}"


def create_run(path: str | os.PathLike, cfg: TrainConfig, *, force: bool = False, queued: bool = False) -> RunDir:
    """Make ``path`` a new run of ``cfg``: config.json written once, status 'starting' (or 'queued').

    The run appears whole: its files are written in a hidden folder beside ``path`` that is then renamed onto
    it, so a reader listing runs at that moment sees no run or a complete one, never a config without its
    status. A folder that already holds a run is refused. With ``force``, a failed or stopped run there is
    moved aside (renamed, never deleted); a running or completed one never is.
    """
    if not cfg.has_data:  # the one thing a config may leave out, a run needs
        raise ConfigError("a run needs exactly one of a data root (class folders) or a lists folder "
                          "(train.txt/test.txt)")
    run = RunDir(path)
    if run.holds_run():
        status, _ = read_status(run)
        movable = (RunState.FAILED, RunState.STOPPED, RunState.DAMAGED)
        if not force or status not in movable:
            hint = (" (--force moves a failed or stopped run aside)" if status in movable
                    else "")
            raise RunError(f"'{run.path}' already holds a {status} run; choose a new folder so nothing is "
                           f"overwritten{hint}")
        aside = run.path.with_name(f"{run.name}.{status}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
        os.rename(run.path, aside)
    run.path.parent.mkdir(parents=True, exist_ok=True)
    first = (WorkerState(RunState.QUEUED, pid=None, phase="waiting for a free slot") if queued
             else WorkerState(RunState.STARTING, pid=None, phase="waiting for its process"))
    staging = RunDir(run.path.with_name(f".{run.name}.creating-{secrets.token_hex(4)}"))
    staging.path.mkdir()
    try:
        atomic_write_json(staging.config, cfg.to_dict())
        write_status(staging, first)
        _move_into_place(staging.path, run.path)
    finally:
        shutil.rmtree(staging.path, ignore_errors=True)  # ours alone; gone already when the rename worked
    return run


def _move_into_place(staging: Path, path: Path) -> None:
    """Rename the finished ``staging`` folder onto ``path`` (absent, or an empty folder such as the one
    ``new_run_dir`` reserved); a folder that is not empty is written into file by file, status last."""
    try:
        os.rename(staging, path)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if RunDir(path).holds_run():  # another creation got there first
        raise RunError(f"'{path}' already holds a run; choose a new folder so nothing is overwritten")
    # The user's own folder with other files in it: config first, so no reader sees a status without one.
    # (A reader in between sees a config without a status: 'starting', see read_status.)
    for name in ("config.json", "status.json"):
        os.replace(staging / name, path / name)


def claim(run: RunDir) -> bool:
    """Take a queued run for starting (or cancelling); only one caller, in any process, ever gets True."""
    try:
        os.close(os.open(run.claim_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


STALE_UNREADABLE_CLAIM_S = 60  # a claim we cannot read (not ours, or from an older version) is trusted this long


def _claim_text() -> str:
    pid = os.getpid()
    return json.dumps({"pid": pid, "pid_start": process_start_id(pid), "host": socket.gethostname()})


def claim_resume(run: RunDir, attempt: int) -> bool:
    """Take resume ``attempt`` of ``run`` for this process; only one caller, in any process, gets True.

    The claim is a file naming its process (pid, start time, host). A claim whose process has ended (a
    resume killed before it could write its final record) is taken over. Looking and writing happen under
    the run's resume lock (filelock's OS lock, released if the holder dies), so two callers never both win.
    """
    path = run.resume_claim(attempt)
    with FileLock(run.path / RESUME_LOCK, mode=0o644):
        if path.exists() and not _claim_is_stale(path):
            return False
        atomic_write_text(path, _claim_text())
        return True


def own_resume_claim(run: RunDir, attempt: int) -> None:
    """The worker the app started for a claimed resume: the claim is now this process's (it names the app's
    process until here, which outlives the worker)."""
    atomic_write_text(run.resume_claim(attempt), _claim_text())


def _claim_is_stale(path: Path) -> bool:
    try:
        data = read_json_file(path)
        state = WorkerState(RunState.STARTING, pid=int(data["pid"]), host=str(data["host"]),
                            pid_start=data.get("pid_start") if isinstance(data.get("pid_start"), int) else None)
    except FileNotFoundError:
        return True
    except (OSError, ValueError, TypeError, KeyError):
        try:
            return time.time() - path.stat().st_mtime > STALE_UNREADABLE_CLAIM_S
        except OSError:
            return True
    return writer_gone(state) is True
