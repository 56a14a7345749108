"""The run folder: the one module that knows its file names, creates runs, reads them and
says what state they are in.

A run folder holds ``config.json`` (written once, by whoever creates the run),
``status.json`` (written only by the training process: state, pid, phase, heartbeat),
``metrics.jsonl`` (one record per line, see ``core.spec.records``), ``surgery.json``,
``checkpoint_last.pt``/``checkpoint_best.pt``, ``model_<arch>.pth``, ``predictions.json``,
``summary.json``, the copied ``lists/``, and, when asked, ``STOP``. Every reader here treats
every file as possibly damaged or half written by another process at this moment: a damaged
run is reported as ``damaged``, with the file and the reason, and never raises.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
import threading
import time
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from filelock import FileLock

from ..platform.errors import ConfigError, RunError
from ..platform.figures import accuracy_of
from ..platform.io import (
    atomic_write_json,
    atomic_write_text,
    open_regular,
    parse_json,
    read_json_file,
    read_regular_bytes,
    read_tail_text,
    temp_file_owner,
)
from ..platform.process import process_gone, process_start_id
from ..spec.config import TRAINS, TrainConfig
from ..spec.records import Epoch, Final, Prediction, RecordError, Records, Test, cells_of, parse_record
from ..spec.states import ENDED, WRITTEN, RunState
from .checkpoint import checkpoint_damage

HEARTBEAT_S = 2.0  # how often the training process rewrites status.json
STALE_AFTER_S = 30.0  # a 'running' run whose heartbeat is older than this is 'not responding'
RESUME_LOCK = ".resume.lock"  # in a run folder: held while a resume looks at and writes its claim
DISPATCH_LOCK = ".dispatch.lock"  # in a runs folder: held while one process counts slots and starts runs


class DamagedRun(RunError):
    """A file of a run folder cannot be read; the message names the file and the reason."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


@dataclass(frozen=True, init=False)
class RunDir:
    """A run's folder and the name of every file in it."""

    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    config = property(lambda self: self.path / "config.json")
    status_file = property(lambda self: self.path / "status.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    surgery = property(lambda self: self.path / "surgery.json")
    predictions = property(lambda self: self.path / "predictions.json")
    test_outputs = property(lambda self: self.path / "test_outputs.npz")  # the last epoch's test logits
    last = property(lambda self: self.path / "checkpoint_last.pt")
    best = property(lambda self: self.path / "checkpoint_best.pt")
    lists = property(lambda self: self.path / "lists")
    stop_flag = property(lambda self: self.path / "STOP")
    claim_file = property(lambda self: self.path / "claimed")  # made once, by whoever starts a queued run
    log = property(lambda self: self.path / "worker.log")
    error = property(lambda self: self.path / "error.txt")

    def resume_claim(self, attempt: int) -> Path:
        """Made by the resume numbered ``attempt`` (the run's count of final records when it began)."""
        return self.path / f"resume-{attempt}.claim"

    def rank_error(self, rank: int) -> Path:
        return self.path / f"error-rank{rank}.txt"  # a failure of another process than rank 0

    def rank_errors(self) -> list[Path]:
        return sorted(self.path.glob("error-rank*.txt"))

    def export_file(self, arch: str, suffix: str) -> Path:
        return self.path / f"model_{arch}{suffix}"  # an exported model (TorchScript .pt, ONNX .onnx)
    name = property(lambda self: self.path.name)

    def plain_state_dict(self, arch: str) -> Path:
        return self.path / f"model_{arch}.pth"  # the tutorial's file: a bare state dict

    def checkpoint(self) -> Path | None:
        """The checkpoint predictions use: the best epoch's, else the last one's."""
        return next((p for p in (self.best, self.last) if p.is_file()), None)

    def stop_requested(self) -> bool:
        return self.stop_flag.exists()

    def request_stop(self) -> None:
        self.stop_flag.touch()

    def holds_run(self) -> bool:
        return any(p.exists() for p in (self.config, self.status_file, self.metrics, self.summary))


# ----------------------------------------------------------------------------- creating runs
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
    return _process_gone(state) is True


def load_config(run: RunDir) -> TrainConfig:
    try:
        return TrainConfig.load(run.config)
    except ConfigError as exc:
        raise DamagedRun(run.config.name, str(exc)) from None


# ----------------------------------------------------------------------------- status.json
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


def _read_json(path: Path, what: str):
    try:
        return read_json_file(path)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedRun(path.name, f"{what} cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from None


def read_worker_state(run: RunDir) -> WorkerState | None:
    data = _read_json(run.status_file, "the worker's status")
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("state") not in WRITTEN:
        raise DamagedRun(run.status_file.name, "it is not a status written by this tool")
    try:
        fields = {k: v for k, v in data.items() if k in WorkerState.__dataclass_fields__}
        return WorkerState(**{**fields, "state": RunState(data["state"])})
    except TypeError as exc:
        raise DamagedRun(run.status_file.name, str(exc)) from None


def _process_gone(state: WorkerState) -> bool | None:
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
    if _process_gone(state):
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
        summary = _read_json(run.summary, "the summary")
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


# ----------------------------------------------------------------------------- records
def read_records(run: RunDir | str | os.PathLike) -> Records:
    """Every complete record of ``metrics.jsonl``; raises DamagedRun naming the line and the reason.

    A last line without its newline is being written right now and is left for the next read.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    try:
        data = read_regular_bytes(run.metrics, MAX_METRICS_BYTES)
    except FileNotFoundError:
        return Records(())
    except OSError as exc:
        raise DamagedRun(run.metrics.name, f"cannot be read ({exc.strerror})") from None
    items = []
    for number, raw in enumerate(data.split(b"\n")[:-1], 1):
        if not raw.strip():
            continue
        try:
            record = parse_record(parse_json(raw.decode("utf-8")))
        except UnicodeDecodeError:
            raise DamagedRun(run.metrics.name, f"line {number} is not valid UTF-8") from None
        except RecordError as exc:
            raise DamagedRun(run.metrics.name, f"line {number}: {exc}") from None
        except ValueError:
            raise DamagedRun(run.metrics.name, f"line {number} is not JSON") from None
        if record is not None:
            items.append(record)
    if items and items[0].type != "start":
        raise DamagedRun(run.metrics.name, f"the first record is '{items[0].type}', not 'start'")
    if items:
        _check_shapes(run, items)
    return Records(tuple(items))


def _check_shapes(run: RunDir, items: list) -> None:
    """Per-class lists and the confusion matrix index the class list: each must fit the classes."""
    classes = items[0].classes
    if not isinstance(classes, list) or not 0 < len(classes) <= 100_000:
        raise DamagedRun(run.metrics.name, "the start record's class list is not 1 to 100,000 names")
    n = len(classes)
    for item in items:
        if isinstance(item, (Epoch, Test)) and not (
                isinstance(item.per_class_acc, list) and len(item.per_class_acc) == n and _fits(item.confusion, n)):
            what = f"epoch {item.epoch}'s" if isinstance(item, Epoch) else "the test record's"
            raise DamagedRun(run.metrics.name, f"{what} per-class figures are not for {n} classes")


def _fits(confusion, num_classes: int) -> bool:
    try:
        cells_of(confusion, num_classes)
    except ValueError:
        return False
    return True


def _is_prediction(p, num_classes: int | None) -> bool:
    def label(v) -> bool:  # an index into the class list
        return type(v) is int and 0 <= v < (num_classes if num_classes is not None else 10**6)

    return (isinstance(p, dict) and isinstance(p.get("path"), str) and label(p.get("label")) and label(p.get("pred"))
            and type(p.get("index", 0)) is int and p.get("index", 0) >= 0
            and isinstance(p.get("prob"), (int, float)) and 0 <= p["prob"] <= 1)


def read_predictions(run: RunDir, num_classes: int | None = None) -> list[Prediction]:
    """The last epoch's test predictions (path, label, pred, prob, index), each checked: labels are class
    indices (below ``num_classes`` when given), the probability lies in [0, 1]."""
    data = _read_json(run.predictions, "the test predictions")
    if data is None:
        return []
    if not isinstance(data, list) or not all(_is_prediction(p, num_classes) for p in data):
        raise DamagedRun(run.predictions.name, "it is not a list of this run's test predictions")
    return [Prediction(p.get("index", 0), p["label"], p["pred"], float(p["prob"]), p["path"]) for p in data]


@dataclass(frozen=True)
class TestOutputs:
    """The last finished epoch's test pass as ``test_outputs.npz`` keeps it: for each tested image its index in
    the test list, its true class and the logits (float32, one per class)."""
    epoch: int
    index: "np.ndarray"
    label: "np.ndarray"
    logits: "np.ndarray"


TEST_OUTPUT_KEYS = ("epoch", "index", "label", "logits")


def read_test_outputs(run: RunDir, num_classes: int, test_images: int) -> TestOutputs | None:
    """The stored test logits, each array checked (shapes agree, labels and indices in range, logits finite);
    None when the run has none (a run from before they were kept, or one too large to keep them)."""

    name = run.test_outputs.name
    try:
        _check_array_headers(run.test_outputs, num_classes, test_images)  # before anything is decompressed
        with open_regular(run.test_outputs) as f, np.load(f, allow_pickle=False) as data:
            arrays = {key: data[key] for key in TEST_OUTPUT_KEYS}
    except FileNotFoundError:
        return None
    except DamagedRun:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise DamagedRun(name, f"it cannot be read as this run's test outputs ({type(exc).__name__})") from None
    epoch, index, label, logits = (arrays[key] for key in TEST_OUTPUT_KEYS)
    n = len(index) if index.ndim == 1 else -1
    problem = (
        "the epoch is not one whole number" if epoch.shape != () or epoch.dtype.kind not in "iu" else
        "the indices are not one list of whole numbers" if n < 0 or index.dtype.kind not in "iu" else
        f"the logits are not {n} rows of {num_classes} classes" if logits.shape != (n, num_classes)
        or logits.dtype.kind != "f" else
        "the labels do not match the indices" if label.shape != (n,) or label.dtype.kind not in "iu" else
        f"a label is not one of the {num_classes} classes" if n and (label.min() < 0 or label.max() >= num_classes) else
        f"an index lies outside the {test_images} test images" if n and (index.min() < 0 or index.max() >= test_images)
        else "an index appears twice" if len(np.unique(index)) != n else
        "a logit is not a finite number" if not np.isfinite(logits).all() else "")
    if problem:
        raise DamagedRun(name, problem)
    return TestOutputs(int(epoch), index, label, logits.astype(np.float32, copy=False))


MAX_METRICS_BYTES = 1024**3  # a run of 10,000 epochs writes a small fraction of this


def _check_array_headers(path: Path, num_classes: int, test_images: int) -> None:
    """Every array's shape and type from its .npy header, and every member's declared size, checked against what
    this run can hold (at most ``test_images`` rows of ``num_classes`` logits) before any array is loaded, so a
    crafted file (a zip bomb, a header promising 10^12 rows) costs nothing to refuse."""

    limits = {"epoch": 1, "index": test_images, "label": test_images, "logits": test_images * num_classes}
    with open_regular(path) as f, zipfile.ZipFile(f) as archive:
        for key, most in limits.items():
            info = archive.getinfo(f"{key}.npy")
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, _, dtype = reader(f)
            cells = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if dtype.hasobject or dtype.itemsize > 8 or cells > most or info.file_size > most * 8 + 4096:
                raise DamagedRun(path.name, f"its {key} array ({shape}, {dtype}, {info.file_size:,} bytes) is larger "
                                            f"than this run's {test_images:,} test images × {num_classes:,} classes")


def _check_test_outputs(run: RunDir) -> None:
    # a glance, as for the checkpoints: a zip holding the arrays; the report checks them in full
    if not run.test_outputs.is_file():
        return
    try:
        with zipfile.ZipFile(run.test_outputs) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        raise DamagedRun(run.test_outputs.name, "it is not this run's test outputs (damaged or cut short)") from None
    missing = [key for key in TEST_OUTPUT_KEYS if f"{key}.npy" not in names]
    if missing:
        raise DamagedRun(run.test_outputs.name, f"it lacks {', '.join(missing)}")


def _check_checkpoints(run: RunDir) -> None:
    for path in (run.best, run.last):
        if path.is_file():
            damage = checkpoint_damage(path)
            if damage:
                raise DamagedRun(path.name, damage)


# ----------------------------------------------------------------------------- listing
@dataclass(frozen=True)
class RunInfo:
    path: Path
    status: RunState
    reason: str
    config: TrainConfig | None
    val_acc: float | None = None  # the chosen epoch's validation accuracy (what chose)
    test_acc: float | None = None  # the kept model's test accuracy, measured once (older runs: chosen on test)
    test_n: int = 0
    chosen_on: str = ""  # "validation", "last epoch", or records.CHOSEN_ON_TEST
    epochs_done: int = 0
    started: float = 0.0
    has_checkpoint: bool = False
    sizes: tuple[int, int, int] | None = None  # train, validation and test images (None before the run started)
    excluded: int = 0  # training images the config left out

    name = property(lambda self: self.path.name)

    @property
    def test(self):
        """The test accuracy with its 95% interval (``core.platform.figures.Accuracy``); None before it was measured."""

        return accuracy_of(self.test_acc, self.test_n)

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def active(self) -> bool:
        """Not over yet: queued, starting, running or not responding."""
        return not self.finished

    @property
    def busy(self) -> bool:
        """Holds one of the TLD_MAX_RUNNING slots."""
        return self.status.busy

    @property
    def label(self) -> str:
        c = self.config
        if c is None:
            return f"damaged · {self.name}"
        return f"{'pretrained' if c.pretrained else 'scratch'} · trains {TRAINS[c.freeze]} · {c.arch} · {self.name}"


@dataclass(frozen=True)
class _Contents:
    config: TrainConfig | None
    records: Records | None
    damage: str


@lru_cache(maxsize=512)
def _read_contents(path: Path, stamp: tuple) -> _Contents:
    run = RunDir(path)
    try:
        config = load_config(run)
    except DamagedRun as exc:
        return _Contents(None, None, str(exc))
    try:
        records = read_records(run)
        _read_json(run.summary, "the summary")
        read_predictions(run, len(records.start.classes) if records.start else None)
        _check_checkpoints(run)
        _check_test_outputs(run)
    except DamagedRun as exc:
        return _Contents(config, None, str(exc))
    return _Contents(config, records, "")


def _stamp(run: RunDir) -> tuple:
    """Sizes and modification times of the run's files: a change in any of them rereads the run."""
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                            for e in os.scandir(run.path) if e.name != run.status_file.name))
    except OSError:
        return ()


@dataclass(frozen=True)
class Leftover:
    """A temporary file of an atomic write in a run folder, and what ``clean_leftovers`` did with it."""
    path: Path
    size: int
    writer_gone: bool  # the process that was writing it provably no longer exists
    removed: bool
    why: str  # why it was (or would be) removed, or why it was left


def clean_leftovers(run: RunDir, *, dry_run: bool = False) -> list[Leftover]:
    """Remove the temporary files of writes whose process is provably gone (killed while it saved, say, a
    checkpoint: a ``.checkpoint_last.pt.PID-START.*.tmp`` of the model's size).

    Only ``python -m core runs clean`` calls this: readers never delete. A file is removed only when its name
    records its writer (pid and start time, as status.json does) and that process no longer exists; a file
    whose writer lives, or whose writer cannot be told (written by an older version), is left and listed."""
    found: list[Leftover] = []
    try:
        entries = [e for e in os.scandir(run.path) if e.name.startswith(".") and e.name.endswith(".tmp")
                   and e.is_file(follow_symlinks=False)]
    except OSError:
        return found
    for entry in entries:
        owner = temp_file_owner(entry.name)
        try:
            size = entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue  # finished (renamed into place) a moment ago
        gone = process_gone(*owner) if owner else None
        if gone is not True:
            why = ("its writer cannot be told (no process recorded in its name); remove it by hand once nothing "
                   "writes to this run" if owner is None else
                   f"process {owner[0]} may still be writing it" if gone is False else
                   f"whether process {owner[0]} still runs cannot be told here")
            found.append(Leftover(Path(entry.path), size, False, False, why))
            continue
        assert owner is not None  # a gone writer is one whose name recorded it
        why = f"process {owner[0]}, which was writing it, has ended"
        if not dry_run:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                found.append(Leftover(Path(entry.path), size, True, False, f"cannot be removed ({exc.strerror})"))
                continue
        found.append(Leftover(Path(entry.path), size, True, not dry_run, why))
    return found


def read_run(run_dir: str | os.PathLike) -> RunInfo:
    run = RunDir(run_dir)
    stamp = _stamp(run)
    contents = _read_contents(run.path, stamp)
    try:
        started = run.path.stat().st_mtime
    except OSError:
        started = 0.0
    if contents.damage:
        return RunInfo(run.path, RunState.DAMAGED, contents.damage, contents.config, started=started)
    status, reason = read_status(run)
    records = contents.records
    assert records is not None  # undamaged contents hold the records
    start = records.start
    return RunInfo(run.path, status, reason, contents.config, records.val_acc, records.test_acc, records.test_n,
                   records.chosen_on, len(records.epochs), start.time if start else started,
                   run.checkpoint() is not None,
                   (start.train_size, start.val_size, start.test_size) if start else None,
                   start.excluded if start else 0)


def list_runs(parent: str | os.PathLike) -> list[RunInfo]:
    """Every run under ``parent``, newest first; damaged ones included, marked as such."""
    parent = Path(parent)
    try:
        folders = [Path(e.path) for e in os.scandir(parent)
                   if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]  # hidden: being created
    except OSError:
        return []
    runs = [read_run(p) for p in folders if RunDir(p).holds_run()]
    return sorted(runs, key=lambda r: r.started, reverse=True)


def find_run(parent: str | os.PathLike, name: str) -> Path | None:
    """The run folder called ``name`` directly inside ``parent``, or None: a name from a URL is a bare folder
    name (no separator, NUL or leading dot), and the folder, links resolved, must lie inside ``parent``."""
    if not name or len(name) > 255 or any(c in name for c in ("/", "\\", "\x00")) or name.startswith("."):
        return None
    try:
        home = Path(os.path.realpath(parent))
        path = Path(os.path.realpath(Path(parent) / name))
        if path.parent != home or not RunDir(path).holds_run():
            return None
    except (OSError, ValueError):
        return None
    return Path(parent) / name


def best_completed(runs: list[RunInfo]) -> RunInfo | None:
    """The completed run to predict with by default: the best on validation (picking by test accuracy would be
    a choice made on the test split); runs without a validation split come after, newest first."""
    done = [r for r in runs if r.status is RunState.COMPLETED and r.has_checkpoint]
    return max(done, key=lambda r: (r.val_acc is not None, r.val_acc or 0.0, r.started), default=None)


def summarise(records: Records) -> dict:
    """What a finished run's summary.json says, from its records: the chosen epoch, what chose it, and the test
    figures of its checkpoint with their 95% interval (none when the test pass was skipped)."""
    epochs: list[Epoch] = records.epochs
    test = records.test
    return {"epochs_completed": len(epochs), "final_acc": None, "best_acc": None, "best_epoch": records.best_epoch,
            "skipped_images": epochs[-1].skipped_images if epochs else 0, "val_acc": records.val_acc,
            "test_acc": test.acc if test else None, "test_ci_low": test.ci_low if test else None,
            "test_ci_high": test.ci_high if test else None, "test_n": test.tested if test else 0,
            "chosen_on": records.chosen_on}


def write_summary(run: RunDir, final: Final) -> None:
    atomic_write_json(run.summary, final.to_json())
