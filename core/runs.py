"""Runs on disk: starting training in a worker process, following, stopping and listing runs.

The worker is ``python -m core train --config … --out RUN`` in its own session, so reruns,
page switches, reloads and closed tabs in the app do not touch it, and a crash in it
cannot take the app down. All state lives in the run folder.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig
from .errors import RunError
from .io import atomic_write_json, read_jsonl
from .train import RunDir

# Popen objects of workers this process started, so finished ones are reaped (no zombies).
_children: dict[str, subprocess.Popen] = {}


def new_run_dir(parent: str | os.PathLike, label: str = "") -> Path:
    """A fresh, unique folder: two runs started in the same second never share one."""
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


def start_worker(cfg: TrainConfig, run_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Launch training of ``cfg`` into ``run_dir`` as a separate process; return at once."""
    cfg.validate()
    run = RunDir(Path(run_dir))
    run.path.mkdir(parents=True, exist_ok=True)
    if run.metrics.exists() or run.pid_file.exists():
        raise RunError(f"'{run.path}' already holds a run")
    atomic_write_json(run.config, cfg.to_dict())
    command = [sys.executable, "-m", "core", "train", "--config", str(run.config), "--out", str(run.path)]
    if cache_dir:
        command += ["--cache-dir", str(cache_dir)]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    with open(run.log, "ab") as log:
        # The caller's working folder, so relative paths in the config mean what they meant to the caller.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    _children[str(run.path)] = proc
    run.pid_file.write_text(str(proc.pid))
    return run.path


def launch(cfg: TrainConfig) -> Path:
    """Start ``cfg`` in a new, uniquely named run folder of the workspace, with the workspace's feature cache."""
    from .workspace import cache_dir, runs_dir

    label = f"{cfg.arch}-{'pt' if cfg.weights else 'scratch'}"
    return start_worker(cfg, new_run_dir(runs_dir(), label), cache_dir=cache_dir())


def _pid_alive(pid: int, run: RunDir) -> bool:
    child = _children.get(str(run.path))
    if child is not None and child.pid == pid:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a recycled pid belongs to another program: check it is our worker for this run
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
        return str(run.path) in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def run_status(run_dir: str | os.PathLike) -> tuple[str, str]:
    """(status, reason): running, completed, stopped, failed."""
    run = RunDir(Path(run_dir))
    if run.summary.exists():
        try:
            summary = json.loads(run.summary.read_text())
            return summary.get("status", "failed"), summary.get("reason", "")
        except ValueError:
            pass
    try:
        pid = int(run.pid_file.read_text())
    except (OSError, ValueError):
        pid = None
    if pid is not None and _pid_alive(pid, run):
        return "running", ""
    if pid is None and not run.metrics.exists():
        return "failed", "no worker was started for this run"
    return "failed", _last_log_line(run) or "the worker process ended without finishing the run (killed or crashed)"


def _last_log_line(run: RunDir) -> str:
    try:
        lines = [line for line in run.log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f"the worker process ended without finishing the run: {lines[-1][:300]}" if lines else ""


def request_stop(run_dir: str | os.PathLike) -> None:
    """Ask a running worker to stop after the current batch; it keeps the last epoch's checkpoint."""
    RunDir(Path(run_dir)).stop_flag.touch()


def kill_worker(run_dir: str | os.PathLike) -> None:
    run = RunDir(Path(run_dir))
    try:
        pid = int(run.pid_file.read_text())
        if _pid_alive(pid, run):
            os.killpg(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


@dataclass
class RunInfo:
    path: Path
    name: str
    status: str
    reason: str
    config: dict
    best_acc: float | None
    final_acc: float | None
    epochs_done: int
    started: float

    @property
    def finished(self) -> bool:
        return self.status != "running"


def read_run(run_dir: str | os.PathLike) -> RunInfo:
    run = RunDir(Path(run_dir))
    try:
        config = json.loads(run.config.read_text())
    except (OSError, ValueError):
        config = {}
    records = read_jsonl(run.metrics)
    epochs = [r for r in records if r.get("type") == "epoch"]
    accs = [r["test_acc"] for r in epochs if r.get("test_acc") is not None]
    status, reason = run_status(run.path)
    started = records[0]["time"] if records else run.path.stat().st_mtime
    return RunInfo(run.path, run.path.name, status, reason, config, max(accs) if accs else None,
                   accs[-1] if accs else None, len(epochs), started)


def list_runs(parent: str | os.PathLike) -> list[RunInfo]:
    """Every run under ``parent``, newest first."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    runs = [read_run(p) for p in parent.iterdir() if p.is_dir() and (p / "config.json").exists()]
    return sorted(runs, key=lambda r: r.started, reverse=True)


def read_records(run_dir: str | os.PathLike) -> list[dict]:
    return read_jsonl(RunDir(Path(run_dir)).metrics)


def run_progress(records: list[dict], now: float | None = None) -> tuple[float, str]:
    """Fraction done (0..1) and a line with the epoch, elapsed time and an estimate of what is left."""
    start = next((r for r in records if r["type"] == "start"), None)
    if start is None:
        return 0.0, "starting the worker…"
    epochs_done = sum(r["type"] == "epoch" for r in records)
    batches = [r for r in records if r["type"] == "batch" and r["epoch"] == epochs_done + 1]
    partial = batches[-1]["seen"] / batches[-1]["total"] if batches else 0.0
    fraction = min((epochs_done + partial) / start["epochs"], 1.0)
    elapsed = (now or time.time()) - start["time"]
    eta = f", about {elapsed / fraction * (1 - fraction):.0f}s left" if 0.02 < fraction < 1 else ""
    return fraction, f"epoch {min(epochs_done + 1, start['epochs'])}/{start['epochs']} · {elapsed:.0f}s elapsed{eta}"


def comparison_twin(cfg: TrainConfig, pretrained_weights: str | None) -> TrainConfig | None:
    """The other side of "pretrained vs from scratch" for ``cfg``, all else equal.

    A pretrained run's twin trains every layer from random initialisation; a from-scratch
    run's twin fine-tunes the head on ``pretrained_weights`` (None when there are none).
    """
    if cfg.weights:
        return TrainConfig.from_dict({**cfg.to_dict(), "weights": None, "freeze": "all"})
    if pretrained_weights is None:
        return None
    return TrainConfig.from_dict({**cfg.to_dict(), "weights": pretrained_weights, "freeze": "head"})

