"""The same trainer under torchrun (DDP, gloo on the CPU): 2 processes on the generated shapes dataset."""
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.data.demo import generate_demo
from core.inference.predict import Predictor
from core.platform.workspace import runs_dir
from core.runs.files import read_records
from core.runs.listing import read_run
from core.runs.rundir import RunDir
from core.runs.status import read_status
from core.spec.config import TrainConfig
from core.training.run import train
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def shapes(tmp_path):
    return generate_demo(tmp_path / "shapes", per_class=(8, 8), seed=4)


def torchrun(*args, nproc: int = 2, wait: bool = True):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "core", "train", *map(str, args)]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def failure(result) -> str:
    """What went wrong in each rank: the lines that say so (a C++ abort prints before the Python tail), then
    the tail."""
    telling = [line for line in result.stderr.splitlines()
               if any(word in line for word in ("terminate", "what()", "Abort", "Error", "error"))]
    return "\n".join(telling[:40]) + "\n...\n" + result.stderr[-3000:]


@pytest.mark.slow
def test_cached_features_under_two_processes_match_one(shapes, lite0_file, tmp_path):
    common = ["--data", shapes, "--arch", "efficientnet_lite0", "--epochs", "3", "--lr", "0.01", "--seed", "5",
              "--cache-dir", tmp_path / "cache"]
    result = torchrun(*common, "--out", tmp_path / "ddp")
    assert result.returncode == 0, failure(result)
    single = list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(shapes),
                                    epochs=3, lr=0.01, seed=5), tmp_path / "single"))
    records = read_records(tmp_path / "ddp")
    kinds = [r.type for r in records.items]
    assert kinds.count("start") == 1 and kinds.count("final") == 1 and records.final.status == "completed"
    assert records.start.world_size == 2 and records.start.device_name == "2 × CPU (gloo)"
    test_size = len((tmp_path / "ddp" / "lists" / "test.txt").read_text().splitlines())
    val_size = len((tmp_path / "ddp" / "lists" / "val.txt").read_text().splitlines())
    assert all(e.tested == val_size for e in records.epochs) and records.test.tested == test_size
    assert [e.val_acc for e in records.epochs] == [e.val_acc for e in single if e.type == "epoch"]
    assert records.test.acc == next(r for r in single if r.type == "test").acc
    assert not list((tmp_path / "ddp").glob("error-rank*.txt"))
    predictor = Predictor.load(tmp_path / "ddp")
    assert predictor.classes == ["circle", "cross", "square", "star", "triangle"]
    again = torchrun(*common, "--out", tmp_path / "again")  # a warm cache: no rank recomputes
    assert again.returncode == 0, failure(again)
    from core.spec.records import Features

    assert [r.from_disk for r in read_records(tmp_path / "again").of(Features)] == [True, True, True]


@pytest.mark.slow
def test_all_layers_under_two_processes_count_every_test_image_once(shapes, tmp_path):
    result = torchrun("--data", shapes, "--arch", "efficientnet_lite0", "--epochs", "1", "--freeze", "all",
                      "--out", tmp_path / "all")
    assert result.returncode == 0, failure(result)
    records = read_records(tmp_path / "all")
    test_size = len((tmp_path / "all" / "lists" / "test.txt").read_text().splitlines())
    assert records.final.status == "completed"
    assert records.test.tested == test_size and sum(n for _, _, n in records.test.confusion['cells']) == test_size
    predictions = json.loads((tmp_path / "all" / "predictions.json").read_text())
    assert sorted(p["index"] for p in predictions) == list(range(test_size))
    assert Predictor.load(tmp_path / "all").predict(next((shapes / "star").iterdir()), topk=1)


def _rank_pid(run: Path, rank: int) -> int | None:
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = environ.read_bytes().split(b"\0")
            cmdline = (environ.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and str(run).encode() in cmdline and b"core" in cmdline:
            return int(environ.parent.name)
    return None


@contextmanager
def long_run(shapes, run: Path):
    """A 2-process, all-layers run long enough to act on after its first epoch; killed on the way out."""
    proc = torchrun("--data", shapes, "--arch", "efficientnet_lite0", "--epochs", "50", "--freeze", "all",
                    "--out", run, wait=False)
    try:
        assert wait_until(lambda: (run / "metrics.jsonl").exists() and read_records(run).epochs, 180)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_with_a_reason(shapes, tmp_path):
    run = tmp_path / "killed"
    with long_run(shapes, run):
        pid = _rank_pid(run, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: read_status(RunDir(run))[0] == "failed", 120), read_status(RunDir(run))
        status, reason = read_status(RunDir(run))
        assert reason, "a failed run must say why"


@pytest.mark.slow
def test_the_training_page_starts_a_two_process_run_and_follows_it(tmp_path, monkeypatch, lite0_file):
    root = generate_demo(tmp_path / "workspace" / "datasets" / "shapes", per_class=(6, 6), seed=2)
    monkeypatch.setenv("TLD_DATA_ROOT", str(root))
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120).run()
    at.switch_page("app_pages/training.py").run()
    at.number_input(key="tr_processes").set_value(2).run()
    at.slider(key="tr_epochs").set_value(2).run()
    at.button(key="tr_start").click().run()
    name = at.query_params["run"]
    assert wait_until(lambda: read_run(runs_dir() / name).finished, 300), read_run(runs_dir() / name)
    at.run()
    assert not at.exception
    assert read_run(runs_dir() / name).status == "completed"
    assert any("Device: **2 × CPU (gloo)**" in c.value for c in at.caption)
    run = read_records(runs_dir() / name)
    assert [e.stage for e in run.epochs] == [1, 1, 2, 2, 2]  # the staged recipe, in two processes
    assert f"Results on the test split (epoch {run.test.epoch})" in [s.value for s in at.subheader]


@pytest.mark.slow
def test_stop_reaches_every_rank_at_the_same_batch(shapes, tmp_path):
    run = tmp_path / "stopped"
    with long_run(shapes, run) as proc:
        RunDir(run).request_stop()
        assert wait_until(lambda: proc.poll() is not None, 120)  # every rank ended: none waits in a collective
        records = read_records(run)
        assert records.final.status == "stopped" and read_status(RunDir(run))[0] == "stopped"
        assert 1 <= records.final.epochs_completed < 50
        assert not list(run.glob("error-rank*.txt"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_with_c10d_rendezvous_train_one_run_folder(shapes, lite0_file, tmp_path):
    """The README's two-node command, simulated on this machine: two torchrun launchers (one process each)
    meet through a c10d rendezvous on 127.0.0.1 and train one run folder."""
    port = _free_port()
    common = ["--data", shapes, "--arch", "efficientnet_lite0", "--epochs", "2", "--lr", "0.01", "--seed", "5",
              "--cache-dir", tmp_path / "cache", "--out", tmp_path / "nodes"]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(rank), "--rdzv_backend", "c10d", "--rdzv_id", "tld-two-nodes",
                               "--rdzv_endpoint", f"127.0.0.1:{port}", "-m", "core", "train", *map(str, common)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=600)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    assert [node.returncode for node in nodes] == [0, 0], "\n---\n".join(o[-3000:] for o in outputs)
    records = read_records(tmp_path / "nodes")
    kinds = [r.type for r in records.items]
    assert kinds.count("start") == 1 and kinds.count("final") == 1 and records.final.status == "completed"
    assert records.start.world_size == 2
    test_size = len((tmp_path / "nodes" / "lists" / "test.txt").read_text().splitlines())
    assert records.test.tested == test_size
    predictions = json.loads((tmp_path / "nodes" / "predictions.json").read_text())
    assert sorted(p["index"] for p in predictions) == list(range(test_size))  # every test image counted once
    single = list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(shapes),
                                    epochs=2, lr=0.01, seed=5), tmp_path / "single"))
    assert [e.val_acc for e in records.epochs] == [e.val_acc for e in single if e.type == "epoch"]
    assert records.test.acc == next(r for r in single if r.type == "test").acc
