"""Runs you can trust: typed records, the run folder, the worker's own status, damaged files."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.jobs.queue import kill_worker, launch, request_stop, run_progress, start_worker
from core.platform.workspace import runs_dir
from core.runs.files import read_records
from core.runs.listing import best_completed, list_runs, read_run
from core.runs.rundir import RunDir
from core.runs.status import STALE_AFTER_S, WorkerState, read_status, write_status
from core.spec.config import TrainConfig
from core.spec.records import Batch, Epoch, Features, Final, Progress, RecordError, Start, parse_record
from core.training.run import train
from tests.conftest import ROOT, make_colour_dataset, wait_until

APP = str(ROOT / "dashboard.py")


# ----------------------------------------------------------------------------- records
def test_every_record_kind_round_trips_through_json():
    records = [
        Start(arch="resnet18", classes=["a", "b"], train_size=3, test_size=2, epochs=1, batches_per_epoch=1,
              device="cpu", device_name="CPU", feature_path="cached features", trainable_params=10,
              frozen_params=20, weights=None, time=1.0),
        Progress(phase="features", split="train", done=1, total=3, images_per_s=2.5),
        Features(split="train", images=3, skipped=0, from_disk=False, seconds=0.5),
        Batch(epoch=1, batch=1, loss=0.5, seen=3, total=3),
        Epoch(epoch=1, train_loss=0.5, test_loss=0.4, test_acc=1.0, per_class_acc=[1.0, 1.0],
              confusion=[[1, 0], [0, 1]], tested=2, skipped_images=0, seconds=0.1, best=True),
        Final(status="completed", reason="", epochs_completed=1, final_acc=1.0, best_acc=1.0, best_epoch=1,
              seconds=1.0),
    ]
    for record in records:
        line = json.dumps(record.to_json())
        assert json.loads(line)["type"] == record.type
        assert parse_record(json.loads(line)) == record


def test_old_run_folders_keep_opening():
    """Records written before the typed protocol named the feature path 'path'."""
    old = {"type": "start", "device": "cpu", "device_name": "CPU", "path": "full forward", "arch": "resnet18",
           "classes": ["a"], "train_size": 1, "test_size": 1, "epochs": 1, "batches_per_epoch": 1,
           "trainable_params": 1, "frozen_params": 1, "weights": None, "time": 0}
    assert parse_record(old).feature_path == "full forward"
    assert parse_record({"type": "a kind from a newer version"}) is None


@pytest.mark.parametrize("data, message", [(123, "expected a JSON object"), ({}, "no 'type'"),
                                           ({"type": "batch", "epoch": 1}, "lacks batch, loss, seen, total")])
def test_what_is_not_a_record_is_named(data, message):
    with pytest.raises(RecordError, match=message):
        parse_record(data)


# ----------------------------------------------------------------------------- the worker
def _slow_features_config(tmp_path, lite0_file) -> TrainConfig:
    """A frozen-body run whose feature pass lasts several seconds on a 2-core CPU."""
    root = make_colour_dataset(tmp_path / "workspace" / "datasets" / "many", per_class=150, size=96)
    return TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(root), epochs=2,
                       num_workers=0)


@pytest.mark.slow
def test_worker_reports_feature_progress_and_stops_within_2s_during_the_feature_pass(tmp_path, lite0_file):
    run = RunDir(start_worker(_slow_features_config(tmp_path, lite0_file), runs_dir() / "run"))

    def feature_progress():
        return [r for r in read_records(run).items if isinstance(r, Progress) and r.phase == "features" and r.done]

    assert wait_until(lambda: len(feature_progress()) >= 2, 120), run.log.read_text()
    assert read_status(run) == ("running", "features (train)")
    assert feature_progress()[-1].images_per_s > 0
    request_stop(run.path)
    assert wait_until(lambda: read_status(run)[0] != "running", 30)
    records = read_records(run)
    assert read_status(run)[0] == "stopped" and records.final.status == "stopped"
    # Events, not a stopwatch: the Stop landed inside the train split's feature pass, which had images left.
    kinds = [r.type for r in records.items]
    assert "epoch" not in kinds and "features" not in kinds
    last = feature_progress()[-1]
    assert last.split == "train" and last.done < last.total
    assert not run.stop_flag.exists()


@pytest.mark.slow
def test_progress_records_come_before_the_first_epoch(tmp_path, lite0_file):
    cfg = _slow_features_config(tmp_path, lite0_file)
    cfg.epochs = 1
    records = list(train(cfg, tmp_path / "run"))
    kinds = [r.type for r in records]
    first_epoch = kinds.index("epoch")
    features = [r for r in records[:first_epoch] if isinstance(r, Progress) and r.phase == "features"]
    assert {p.split for p in features} == {"train", "val", "test"}
    train_progress = [p for p in features if p.split == "train"]
    assert train_progress[0].done == 0 and train_progress[-1].done == train_progress[-1].total == 144  # 180 less 20%
    assert any(isinstance(r, Progress) and r.phase == "test" and r.epoch == 1 for r in records)
    split_seconds = [r.seconds for r in records if isinstance(r, Features)]
    total_pass = records[-1].time - records[0].time
    assert sum(split_seconds) <= total_pass  # each split's own seconds, not a running total
    fraction, text = run_progress(type(read_records(tmp_path / "run"))(tuple(records[:3])))
    assert "computing backbone features (train)" in text and "images/s" in text


def test_status_json_is_the_one_source_of_state(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    me = os.getpid()
    write_status(run, WorkerState("running", pid=me, phase="epoch 2"))
    assert read_status(run) == ("running", "epoch 2")
    write_status(run, WorkerState("running", pid=me, phase="epoch 2", heartbeat=time.time() - STALE_AFTER_S - 5))
    status, reason = read_status(run)
    assert status == "not responding" and "no heartbeat for" in reason and "epoch 2" in reason
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_status(run, WorkerState("running", pid=int(gone.stdout), phase="epoch 2"))
    assert read_status(run)[0] == "failed"
    write_status(run, WorkerState("completed", pid=me, reason=""))
    assert read_status(run) == ("completed", "")


@pytest.mark.slow
def test_a_cli_run_into_the_workspace_is_listed_as_running_while_it_runs(tmp_path, lite0_file):
    cfg = _slow_features_config(tmp_path, lite0_file)
    proc = subprocess.Popen([sys.executable, "-m", "core", "train", "--data", cfg.data_root, "--arch",
                             "efficientnet_lite0", "--num-workers", "0", "--epochs", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_until(lambda: [r.status for r in list_runs(runs_dir())] == ["running"], 120)
        assert proc.poll() is None
        assert wait_until(lambda: proc.poll() is not None, 180)
        assert [r.status for r in list_runs(runs_dir())] == ["completed"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()


def _zombie_children() -> list[int]:
    zombies = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(stat.parent.name))
    return zombies


@pytest.mark.slow
def test_the_app_leaves_no_defunct_workers(tmp_path, colour_data, resnet18_file):
    cfg = TrainConfig(arch="resnet18", weights=str(resnet18_file), data_root=str(colour_data), epochs=1,
                      num_workers=0)
    started = [launch(cfg) for _ in range(3)]
    assert wait_until(lambda: all(read_run(p).finished for p in started), 180)
    assert [read_run(p).status for p in started] == ["completed"] * 3
    assert wait_until(lambda: not _zombie_children(), 10), _zombie_children()


def test_random_bodies_are_never_cached(colour_data, tmp_path):
    """Seed 0 then seed 1, random weights, one cache: the second run must not get the first's features."""
    common = dict(arch="resnet18", data_root=str(colour_data), epochs=1, num_workers=0, weights=None)
    for seed in (0, 1):
        records = list(train(TrainConfig(seed=seed, **common), tmp_path / f"run{seed}", cache_dir=tmp_path / "cache"))
        assert [r.from_disk for r in records if isinstance(r, Features)] == [False, False, False]  # train, val, test
    assert not list((tmp_path / "cache").rglob("*.pt"))


# ----------------------------------------------------------------------------- damaged run folders
def _damage(run: Path, how: str) -> str:
    """Damage one file of a finished run the way it was seen in the field; return what the page should name."""
    metrics = run / "metrics.jsonl"
    lines = metrics.read_bytes().split(b"\n")
    if how == "cut inside a multibyte character":
        metrics.write_bytes(b"\n".join(lines[:2] + ['{"type": "batch", "note": "é'.encode()[:-1]] + lines[2:]))
    elif how == "a line that is not an object":
        metrics.write_bytes(b"\n".join(lines[:1] + [b"123"] + lines[1:]))
    elif how == "{} first":
        metrics.write_bytes(b"{}\n" + metrics.read_bytes())
    elif how == "predictions cut short":
        (run / "predictions.json").write_text((run / "predictions.json").read_text()[:40])
        return "predictions.json"
    elif how == "checkpoint of random bytes":
        (run / "checkpoint_best.pt").write_bytes(os.urandom(2048))
        return "checkpoint_best.pt"
    elif how == "summary not JSON":
        (run / "summary.json").write_text("{'status':")
        return "summary.json"
    elif how == "config not JSON":
        (run / "config.json").write_bytes(b"\xff\xfe")
        return "config.json"
    elif how == "status not a status":
        (run / "status.json").write_text("[1, 2]")
        return "status.json"
    return "metrics.jsonl"


DAMAGE = ["cut inside a multibyte character", "a line that is not an object", "{} first", "predictions cut short",
          "checkpoint of random bytes", "summary not JSON", "config not JSON", "status not a status"]


@pytest.fixture
def good_and_damaged(colour_data, lite0_file, monkeypatch):
    monkeypatch.setenv("TLD_DATA_ROOT", str(colour_data))
    good = runs_dir() / "good"
    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(colour_data),
                           epochs=2, lr=0.05, num_workers=0), good))
    damaged = {}
    for i, how in enumerate(DAMAGE):
        copy = runs_dir() / f"damaged-{i}"
        shutil.copytree(good, copy)
        damaged[copy.name] = _damage(copy, how)
    return good, damaged


def test_damaged_runs_are_listed_as_damaged_with_the_file_and_reason(good_and_damaged):
    good, damaged = good_and_damaged
    runs = {r.name: r for r in list_runs(runs_dir())}
    assert runs["good"].status == "completed"
    for name, file in damaged.items():
        assert runs[name].status == "damaged", (name, runs[name])
        assert runs[name].reason.startswith(file), (name, runs[name].reason)
    assert best_completed(list(runs.values())).name == "good"


@pytest.mark.slow
@pytest.mark.parametrize("page", ["app_pages/home.py", "app_pages/training.py", "app_pages/prediction.py"])
def test_pages_render_with_damaged_runs_and_the_good_run_still_works(good_and_damaged, page, colour_data):
    good, damaged = good_and_damaged
    for name in [*damaged, None]:
        at = AppTest.from_file(APP, default_timeout=120)
        if name:
            at.query_params["run"] = name
        at.run()
        at.switch_page(page).run()
        assert not at.exception, (name, [e.message for e in at.exception])
        if page == "app_pages/training.py" and name:
            assert any("damaged" in e.value for e in at.error), name
            table = at.dataframe[-1].value
            assert dict(zip(table["run"], table["status"]))[name] == "damaged"
            assert dict(zip(table["run"], table["status"]))["good"] == "completed"
    if page == "app_pages/prediction.py":
        assert at.selectbox(key="pr_run").value == "good"  # the best completed run, not the newest
        at.file_uploader(key="pr_upload").upload("r.png", (colour_data / "red" / "red_00.png").read_bytes(),
                                                 "image/png").run()
        assert not at.exception and at.metric[0].value == "red"
        at.selectbox(key="pr_run").set_value(next(n for n, f in damaged.items() if f == "checkpoint_best.pt")).run()
        assert not at.exception and any("damaged" in e.value for e in at.error)
    if page == "app_pages/home.py":  # the newest run is a damaged copy: Home says so and names the file
        assert any(w.value.startswith("This run is damaged: ") for w in at.warning)


def test_the_training_page_lists_a_run_started_elsewhere_and_follows_the_box(small_runs_demo):
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("app_pages/training.py").run()
    assert any("Runs appear here" in c.value for c in at.caption)
    first = launch(small_runs_demo)  # as another tab or the CLI would
    try:
        at.run()
        table = at.dataframe[-1].value
        assert list(table["run"]) == [first.name]
        at.query_params["run"] = first.name
        at.run()
        assert at.selectbox(key=f"tr_follow_{first.name}").value == first.name
        second = launch(small_runs_demo)
        at.run()
        at.selectbox(key=f"tr_follow_{first.name}").set_value(second.name).run()
        assert at.query_params["run"] == second.name
        assert at.subheader[0].value == f"Run {second.name}"
        assert at.selectbox(key=f"tr_follow_{second.name}").value == second.name
    finally:
        kill_worker(first)
        if "second" in locals():
            kill_worker(second)


@pytest.fixture
def small_runs_demo(colour_data, lite0_file, monkeypatch):
    monkeypatch.setenv("TLD_DATA_ROOT", str(colour_data))
    return TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(colour_data), epochs=50,
                       freeze="all", num_workers=0)
