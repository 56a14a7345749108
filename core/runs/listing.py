"""Runs as the pages and ``runs list`` show them: one ``RunInfo`` per folder (state, figures, damage), cached by the
folder's file stamps; finding a run by name; the best completed one; the summary; and ``runs clean``, the one
place that removes what killed writes left behind (readers never delete).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..platform.figures import accuracy_of
from ..platform.io import atomic_write_json, temp_file_owner
from ..platform.process import process_gone
from ..spec.config import TrainConfig
from ..spec.records import Epoch, Final, Records
from ..spec.states import RunState
from .files import check_checkpoints, check_test_outputs, read_predictions, read_records
from .rundir import DamagedRun, RunDir, load_config
from .status import read_run_json, read_status


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
        return f"{'pretrained' if c.pretrained else 'scratch'} · trains {c.what_trains} · {c.arch} · {self.name}"


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
        read_run_json(run.summary, "the summary")
        read_predictions(run, len(records.start.classes) if records.start else None)
        check_checkpoints(run)
        check_test_outputs(run)
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
