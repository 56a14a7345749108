"""Starting, stopping and following training processes.

The app starts a run as ``python -m core.jobs.worker RUN_DIR`` in its own session, so reruns,
page switches, reloads and closed tabs do not touch it, and a crash in it cannot take the
app down. The run folder (``core.runs.rundir``) holds all state; the worker reports its own.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from ..platform.errors import ConfigError, RunError
from ..platform.process import process_start_id
from ..platform.settings import settings
from ..platform.workspace import cache_dir, runs_dir, workspace_writes
from ..runs.create import claim, create_run, new_run_dir, run_label
from ..runs.listing import RunInfo, list_runs
from ..runs.rundir import DISPATCH_LOCK, DamagedRun, RunDir, load_config
from ..runs.status import WorkerState, read_worker_state, write_status
from ..spec.choices import Freeze, Recipe
from ..spec.config import TrainConfig
from ..spec.records import Features, Records
from ..spec.states import Phase, RunState

# Workers this process started: each has a thread waiting on it, so a finished one is reaped
# at once and never lingers as a zombie.
_children: dict[str, subprocess.Popen] = {}


def _reap_when_done(proc: subprocess.Popen) -> None:
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()


def start_worker(cfg: TrainConfig, run_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Create a run of ``cfg`` in ``run_dir`` and train it in a separate process now; return at once."""
    run = create_run(run_dir, cfg)
    _spawn(run, cache_dir)
    return run.path


def _spawn(run: RunDir, cache_dir: str | os.PathLike | None, resume: bool = False) -> None:
    command = [sys.executable, "-m", "core.jobs.worker", str(run.path), "--confined"] + (["--resume"] if resume else [])
    processes = 1 if resume else load_config(run).processes  # a resume goes on as one process
    if processes > 1:  # PyTorch's own launcher: torchrun, one machine
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "core.jobs.worker", str(run.path), "--confined"]
    if cache_dir:
        command += ["--cache-dir", str(cache_dir)]
    with open(run.log, "ab") as log:
        # The caller's working folder and environment (OMP_WAIT_POLICY included, see core/__init__.py), so
        # relative paths in the config mean what they meant to the caller.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    _children[str(run.path)] = proc
    _reap_when_done(proc)
    # The worker needs a few seconds to import torch before it reports; until then its pid lets
    # readers tell a starting worker from one that died at once.
    write_status(run, WorkerState(RunState.STARTING, pid=proc.pid, phase="starting the training process",
                                  pid_start=process_start_id(proc.pid)))


# ----------------------------------------------------------------------------- the queue
def max_running() -> int:
    """How many runs may train at once: TLD_MAX_RUNNING, else 1 on a CPU and one per GPU on CUDA."""

    configured = settings().max_running
    if configured:
        return configured
    # deferred: this module is used without torch (the split, listing runs, --help); importing it costs seconds
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def _queued_at(info: RunInfo) -> float:
    try:
        state = read_worker_state(RunDir(info.path))
        return state.heartbeat if state else 0.0
    except DamagedRun:
        return 0.0


def queue(runs: list[RunInfo]) -> list[RunInfo]:
    """The queued runs in the order they start: the order they were queued in."""
    return sorted((r for r in runs if r.status is RunState.QUEUED), key=lambda r: (_queued_at(r), r.name))


@contextmanager
def _dispatching(parent: str | os.PathLike):
    """Hold the runs folder's dispatch lock (one dispatcher at a time, across processes); yields False when
    the lock file cannot be made (a read-only workspace: nothing could be started there anyway)."""
    lock = FileLock(Path(parent) / DISPATCH_LOCK, mode=0o644)  # an OS lock: released if this process dies
    try:
        lock.acquire()
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def dispatch(parent: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Start queued runs, oldest first, while fewer than ``max_running()`` runs hold a slot.

    Called after every launch, by the Training page as it refreshes, and by every run as it ends
    (app or command line), so the queue moves on with or without a browser open. Counting the busy
    runs and starting new ones happen under one lock, so two Start clicks that arrive together, in
    any processes, never start more runs than the cap; ``claim`` makes sure no run starts twice.
    """
    with _dispatching(parent) as locked:
        if not locked:
            return []
        runs = list_runs(parent)
        free = max_running() - sum(r.busy for r in runs)
        started = []
        for info in queue(runs):
            if free <= 0:
                break
            run = RunDir(info.path)
            if claim(run):
                _spawn(run, cache_dir)  # writes 'starting' before returning: the next dispatcher counts it
                started.append(run.path)
                free -= 1
        return started


def resume(run_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Resume a stopped or failed run in a worker, when a training slot is free (checked, and the run claimed,
    under the dispatch lock, so two clicks never resume it twice nor exceed the cap). RunError saying why not."""
    # deferred: the trainer imports torch; the pages list and start runs without it
    from ..training.run import resume_point

    run = RunDir(run_dir)
    with _dispatching(run.path.parent) as locked:
        if not locked:
            raise RunError("the runs folder cannot be written, so no run can be resumed here")
        busy = sum(r.busy for r in list_runs(run.path.parent))
        if busy >= max_running():
            raise RunError(f"all {max_running()} training slot(s) are busy (TLD_MAX_RUNNING); resume it when a run "
                           "has ended")
        resume_point(run)  # refuses with the reason, or claims the run
        _spawn(run, cache_dir, resume=True)
    return run.path


def start_next_queued(parent: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> None:
    """A run in ``parent`` has ended (however it was started): its slot is free, so start what waits."""
    try:
        dispatch(parent, cache_dir)
    except Exception as exc:  # the run itself is over and recorded; the Training page dispatches later
        print(f"warning: could not start the next queued run: {exc}", file=sys.stderr, flush=True)


def launch(cfg: TrainConfig) -> Path:
    """Queue ``cfg`` in a new, uniquely named run folder of the workspace and start it as soon as a
    slot is free (at once, usually), with the workspace's feature cache."""

    with workspace_writes("start a run"):
        run = create_run(new_run_dir(runs_dir(), run_label(cfg)), cfg, queued=True)
        dispatch(runs_dir(), cache_dir())
    return run.path


def cancel(run_dir: str | os.PathLike) -> bool:
    """Cancel a queued run before it starts; False when it has started already (then use Stop)."""
    run = RunDir(run_dir)
    if not claim(run):
        return False
    write_status(run, WorkerState(RunState.STOPPED, pid=None, phase="cancelled", reason="cancelled before it started"))
    return True


def children() -> dict[str, subprocess.Popen]:
    return dict(_children)


def request_stop(run_dir: str | os.PathLike) -> None:
    """Ask a running worker to stop; it checks between batches in every phase and keeps the last epoch's checkpoint."""
    RunDir(run_dir).request_stop()


def kill_worker(run_dir: str | os.PathLike) -> None:
    """Kill a worker and its own children (DataLoader workers) at once: for tests and emergencies."""
    run = RunDir(run_dir)
    proc = _children.get(str(run.path))
    pid = proc.pid if proc is not None else None
    if pid is None:
        try:
            state = read_worker_state(run)
            pid = state.pid if state else None
        except DamagedRun:
            return
    if pid:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)  # the worker's whole session: torchrun, its ranks, loaders
        except (ProcessLookupError, PermissionError):
            pass


def run_progress(records: Records, now: float | None = None, setup_phase: str = "") -> tuple[float, str]:
    """Fraction done (0..1) and a line with the phase and the elapsed time (``seconds_left`` estimates the rest).

    Before the first record the line names the set-up step the training process reports (``setup_phase``,
    from its status). The feature pass counts as the first epoch's share of the work: it is most of a cached
    run's time.
    """
    start = records.start
    if start is None:
        return 0.0, f"starting: {setup_phase or 'launching the training process'}…"
    epochs_done = len(records.epochs)
    current = epochs_done + 1
    fraction = min((epochs_done + _epoch_share(records, current)) / start.epochs, 1.0)
    progress = records.latest_progress
    elapsed = (now or time.time()) - start.time
    if progress is not None and progress.phase == Phase.FEATURES:
        # images per second of the feature pass predicts the rest of the run best
        total = start.train_size + start.val_size + start.test_size
        before = {"train": 0, "val": start.train_size, "test": start.train_size + start.val_size}  # the pass's order
        done = progress.done + before.get(progress.split, 0)
        left = (total - done) / progress.images_per_s if progress.images_per_s else None
        text = (f"computing backbone features ({progress.split}): {progress.done}/{progress.total} images · "
                f"{progress.images_per_s:.1f} images/s · {elapsed:.0f}s elapsed"
                + (f", about {left:.0f}s left for features" if left is not None else ""))
        return min(done / max(total, 1), 1.0) * 0.999, text
    if progress is not None and progress.phase == Phase.CACHED:
        return fraction, f"reading cached features ({progress.split}) · {elapsed:.0f}s elapsed"
    if progress is not None and progress.phase == Phase.TEST:
        what = "validating" if progress.split == "val" else "the one test pass:"
        phase = f"epoch {min(current, start.epochs)}/{start.epochs} · {what} {progress.done}/{progress.total} images"
    else:
        phase = f"epoch {min(current, start.epochs)}/{start.epochs}"
    return fraction, f"{phase} · {elapsed:.0f}s elapsed"


def _epoch_share(records: Records, epoch: int) -> float:
    batches = [b for b in records.batches if b.epoch == epoch]
    return batches[-1].seen / batches[-1].total if batches else 0.0


def seconds_left(records: Records, now: float | None = None) -> float | None:
    """The training time still to go, from the epochs' own durations (set-up and the feature pass left out, so
    the estimate does not shrink by itself when they end); None until there is something to go by."""
    start = records.start
    if start is None or not records.epochs and not records.batches:
        return None
    done = len(records.epochs)
    if done >= start.epochs:
        return 0.0
    share = _epoch_share(records, done + 1)
    if done:
        per_epoch = sum(e.seconds for e in records.epochs) / done
    else:
        features = records.of(Features)
        began = max([start.time] + [f.time for f in features])  # the first epoch began after the feature pass
        if share < 0.05:
            return None
        per_epoch = ((now or time.time()) - began) / share
    return max(0.0, per_epoch * (start.epochs - done - share))


def smooth_eta(previous: tuple[float, float] | None, raw: float | None, now: float) -> float | None:
    """Time left, smoothed: the last estimate counted down to ``now`` and moved a third of the way to ``raw``.
    ``previous`` is (estimate, when); jumps of a noisy estimate (301 → 356 → 204 s) become small steps."""
    if raw is None:
        return None
    if previous is None:
        return raw
    estimate, when = previous
    counted_down = max(0.0, estimate - (now - when))
    return counted_down + (raw - counted_down) / 3


def comparison_twin(cfg: TrainConfig, pretrained_weights: str | None) -> TrainConfig | None:
    """The other side of "pretrained vs from scratch" for ``cfg``, all else equal.

    A pretrained run's twin trains every layer from random initialisation for as many epochs as the run trained
    over all its stages (in one stage: there is no head to fit first); a from-scratch run's twin fine-tunes the
    head on ``pretrained_weights`` (None when there are none), in one stage as the run did.
    """
    if cfg.pretrained:
        return cfg.changed(weights=None, freeze=Freeze.ALL, recipe=Recipe.SINGLE, epochs=cfg.total_epochs)
    if pretrained_weights is None:
        return None
    return cfg.changed(weights=pretrained_weights, freeze=Freeze.HEAD, recipe=Recipe.SINGLE)


def _twin_or_none(cfg: TrainConfig, pretrained_weights: str | None) -> TrainConfig | None:
    try:
        return comparison_twin(cfg, pretrained_weights)
    except ConfigError:  # a saved config whose twin would not be one (a setting outside a range since)
        return None


def find_twin(cfg: TrainConfig, runs: list[RunInfo], pretrained_weights: str | None) -> RunInfo | None:
    """The run among ``runs`` that is ``cfg``'s comparison twin, all settings equal: the newest completed
    one, else the newest. Matched on the saved settings, so a twin started from another tab or from the
    command line counts, and a page reload keeps the pair."""
    target = comparison_twin(cfg, pretrained_weights)
    if target is None:
        return None
    # either way round: a from-scratch run is the twin of the staged run it was made for, whose own twin (the
    # head in one stage) it cannot name
    matches = [r for r in runs if r.config is not None and (
        r.config == target or (r.config.weights == target.weights
                               and _twin_or_none(r.config, pretrained_weights) == cfg))]
    return next((r for r in matches if r.status is RunState.COMPLETED), matches[0] if matches else None)
