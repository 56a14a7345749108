"""Readers never write: creating, resuming and ending runs beside processes that list them all the time.

A reader that deleted the temporary files of runs that merely *looked* ended (a run being created, a stopped
run being resumed) made 15% of run creations crash; these tests run the writers' real code beside a busy
listing loop and count crashes and orphans.
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.platform.io import atomic_write_json, temp_file_owner
from core.platform.process import own_identity
from core.runs.create import claim_resume, create_run, new_run_dir
from core.runs.listing import clean_leftovers, list_runs, read_run
from core.runs.rundir import RunDir
from core.runs.status import WorkerState, this_process_state, write_status
from core.spec.config import TrainConfig
from core.spec.states import RunState

ROOT = Path(__file__).resolve().parents[2]


def _list_forever(folder: str, stop, errors) -> None:
    """A busy reader: lists every run and reads each one, as the Training page and Home do, until told."""
    while not stop.is_set():
        try:
            for info in list_runs(folder):
                read_run(info.path)
        except Exception as exc:  # noqa: BLE001 - every crash of a reader is a finding
            errors.put(f"{type(exc).__name__}: {exc}")


def _life_of_a_run(parent: Path, cfg: TrainConfig, number: int) -> RunDir:
    """What the app and a worker write over a run's life, with the writers' own functions: created (queued),
    started, running, stopped, resumed (claimed), running again, completed."""
    run = create_run(new_run_dir(parent, f"race{number}"), cfg, queued=True)
    write_status(run, WorkerState(RunState.STARTING, pid=os.getpid(), phase="starting the training process"))
    write_status(run, this_process_state(RunState.RUNNING, "epoch 1"))
    write_status(run, this_process_state(RunState.STOPPED, reason="stopped on request"))
    assert claim_resume(run, attempt=1)
    write_status(run, this_process_state(RunState.RUNNING, "epoch 2"))
    atomic_write_json(run.summary, {"status": "completed"})
    write_status(run, this_process_state(RunState.COMPLETED))
    return run


def test_creations_and_resumes_beside_a_busy_listing_loop_never_crash_nor_orphan(tmp_path):
    parent = tmp_path / "runs"
    parent.mkdir()
    cfg = TrainConfig(data_root=str(tmp_path))
    context = multiprocessing.get_context("fork")
    stop, errors = context.Event(), context.Queue()
    readers = [context.Process(target=_list_forever, args=(str(parent), stop, errors)) for _ in range(2)]
    for reader in readers:
        reader.start()
    crashes = []
    try:
        for number in range(200):
            try:
                _life_of_a_run(parent, cfg, number)
            except Exception as exc:  # noqa: BLE001 - counted, then asserted
                crashes.append(f"{type(exc).__name__}: {exc}")
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=30)
    reader_errors = []
    while not errors.empty():
        reader_errors.append(errors.get())
    assert crashes == []
    assert reader_errors == []
    states = [info.status for info in list_runs(parent)]
    assert len(states) == 200 and set(states) == {RunState.COMPLETED}  # no orphan: every run ended as it did
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")]  # no creation left half made
    assert not list(parent.glob("*/.*.tmp"))


def test_a_reader_never_sees_a_run_without_its_status(tmp_path):
    """A run appears whole: its folder is renamed into place with config.json and status.json in it."""
    run = create_run(tmp_path / "run", TrainConfig(data_root=str(tmp_path)), queued=True)
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json", "status.json"]
    assert read_run(run.path).status is RunState.QUEUED
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the staging folder is gone


def test_a_run_is_created_in_a_users_non_empty_folder_without_touching_their_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    run = create_run(folder, TrainConfig(data_root=str(tmp_path)))
    assert (folder / "notes.txt").read_text() == "keep me"
    assert read_run(run.path).status is RunState.STARTING
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- leftovers: only their owner
def _dead_process_identity() -> str:
    script = "from core.platform.process import own_identity; print(own_identity())"
    proc = subprocess.run([sys.executable, "-c", script],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    return proc.stdout.strip()


def _ended_run(tmp_path: Path) -> RunDir:
    run = create_run(tmp_path / "run", TrainConfig(data_root=str(tmp_path)))
    write_status(run, WorkerState(RunState.FAILED, pid=None, reason="killed"))
    return run


def test_temporary_files_name_their_writer():
    assert temp_file_owner(f".checkpoint_last.pt.{own_identity()}.k3j2h1.tmp") == tuple(
        int(part) for part in own_identity().split("-"))
    assert temp_file_owner(".checkpoint_last.pt.k3j2h1.tmp") is None  # an older version's: no owner in the name
    assert temp_file_owner("checkpoint_last.pt") is None


def test_reading_an_ended_run_deletes_nothing(tmp_path):
    run = _ended_run(tmp_path)
    leftover = run.path / f".checkpoint_last.pt.{_dead_process_identity()}.abc.tmp"
    leftover.write_bytes(b"half")
    assert read_run(run.path).status is RunState.FAILED
    list_runs(tmp_path)
    assert leftover.exists()


def test_clean_removes_only_files_whose_writer_is_provably_gone(tmp_path):
    run = _ended_run(tmp_path)
    dead = run.path / f".checkpoint_last.pt.{_dead_process_identity()}.abc.tmp"
    alive = run.path / f".status.json.{own_identity()}.def.tmp"  # this process is writing it
    unknown = run.path / ".checkpoint_best.pt.xyz.tmp"  # names no writer
    for path in (dead, alive, unknown):
        path.write_bytes(b"half")
    assert [(i.path.name, i.removed) for i in clean_leftovers(run, dry_run=True) if i.writer_gone] == [
        (dead.name, False)]
    assert dead.exists()
    report = {i.path.name: i for i in clean_leftovers(run)}
    assert report[dead.name].removed and not dead.exists()
    assert not report[alive.name].removed and alive.exists()
    assert not report[unknown.name].removed and unknown.exists() and "cannot be told" in report[unknown.name].why


def test_runs_clean_on_the_command_line(tmp_path):
    run = _ended_run(tmp_path / "runs")
    dead = run.path / f".checkpoint_last.pt.{_dead_process_identity()}.abc.tmp"
    dead.write_bytes(b"x" * 1000)
    proc = subprocess.run([sys.executable, "-m", "core", "runs", "clean", "--runs", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert f"removed {dead}" in proc.stdout and "removed 1 leftover file(s); left 0" in proc.stdout
    assert not dead.exists() and RunDir(run.path).config.exists()


def test_a_forced_rerun_moves_the_old_run_aside_whole(tmp_path):
    cfg = TrainConfig(data_root=str(tmp_path))
    run = _ended_run(tmp_path)
    leftover = run.path / ".checkpoint_last.pt.x.tmp"
    leftover.write_bytes(b"half")
    create_run(tmp_path / "run", cfg, force=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.failed-")]
    assert len(aside) == 1 and (aside[0] / leftover.name).read_bytes() == b"half"  # moved, never deleted
    assert read_run(tmp_path / "run").status is RunState.STARTING


def test_a_write_that_fails_removes_its_own_temporary_file(tmp_path):
    from core.platform.io import atomic_file

    with pytest.raises(RuntimeError), atomic_file(tmp_path / "x.bin") as f:
        f.write(b"partial")
        raise RuntimeError("the writer failed")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- every file is hostile
def test_a_run_file_nested_too_deeply_marks_that_run_damaged_and_the_listing_goes_on(tmp_path):
    """json.loads raises RecursionError (not a ValueError) on deep nesting: it must never reach a page."""
    cfg = TrainConfig(data_root=str(tmp_path))
    create_run(tmp_path / "runs" / "good", cfg)
    deep = "[" * 100_000 + "]" * 100_000
    for name in ("config.json", "status.json", "summary.json", "predictions.json"):
        bad = create_run(tmp_path / "runs" / f"bad-{name}", cfg)
        (bad.path / name).write_text(deep)
    bad_line = create_run(tmp_path / "runs" / "bad-metrics", cfg)
    bad_line.metrics.write_text(deep + "\n")
    runs = {info.name: info for info in list_runs(tmp_path / "runs")}
    assert runs["good"].status is RunState.STARTING
    for name, info in runs.items():
        if name != "good":
            assert info.status is RunState.DAMAGED, (name, info.reason)
            assert "nested too deeply" in info.reason or "not JSON" in info.reason, (name, info.reason)


def test_an_npz_bomb_is_refused_from_its_headers_before_anything_is_loaded(tmp_path):
    """A test_outputs.npz whose logits member inflates to 512 MiB and claims 2 GB: refused by its header."""
    import resource
    import zipfile

    import numpy as np

    from core.runs.files import read_test_outputs
    from core.runs.rundir import DamagedRun

    run = create_run(tmp_path / "run", TrainConfig(data_root=str(tmp_path)))
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    header["shape"] = (500_000_000, 1)
    with zipfile.ZipFile(run.test_outputs, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in (("epoch", np.array(1)), ("index", np.arange(3)), ("label", np.zeros(3, np.int64))):
            with archive.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array(f, array)
        with archive.open("logits.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            chunk = bytes(64 * 1024**2)
            for _ in range(8):  # 512 MiB of zeros (the header promises 2 GB), a few hundred KB on disk
                f.write(chunk)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DamagedRun, match="larger than this run's 3 test images × 2 classes"):
        read_test_outputs(run, num_classes=2, test_images=3)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: nothing was inflated
