"""Resume: a stopped or failed run goes on from checkpoint_last.pt exactly as if it had never stopped, and is
refused, untouched, when it cannot."""
import subprocess
import sys

import pytest
import torch

from core.platform.errors import RunError
from core.runs.files import read_records
from core.runs.listing import read_run
from core.runs.rundir import RunDir
from core.spec.config import TrainConfig
from core.spec.records import Epoch, follow
from core.training.run import resume_training, train
from tests.conftest import ROOT, make_colour_dataset


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_colour_dataset(tmp_path_factory.mktemp("resume") / "c", per_class=8, classes=("blue", "green", "red"))


def _stopped_after(cfg: TrainConfig, run, epoch: int, cache) -> None:
    """Train ``cfg`` and stop once epoch ``epoch`` is recorded (as Stop or Ctrl+C would, between epochs)."""
    stream = train(cfg, run, cache_dir=cache)
    for record in stream:
        if isinstance(record, Epoch) and record.epoch == epoch:
            break
    stream.close()
    assert read_run(run).status == "stopped"


def _weights(run) -> dict:
    return torch.load(RunDir(run).last, weights_only=False)["model"]


def _config(colours, lite0_file, **extra) -> TrainConfig:
    """One stage of 4 epochs with SGD and a step schedule (the staged recipe's resumes have their own test)."""
    settings = dict(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(colours), num_workers=0,
                    epochs=4, lr=0.05, schedule="step", step_size=1, gamma=0.5, optimizer="sgd", recipe="single")
    return TrainConfig(**{**settings, **extra})


def test_a_run_stopped_after_2_of_4_epochs_and_resumed_equals_one_that_ran_straight(colours, lite0_file, tmp_path):
    cfg = _config(colours, lite0_file)
    list(train(cfg, tmp_path / "straight", cache_dir=tmp_path / "cache"))
    _stopped_after(cfg, tmp_path / "resumed", 2, tmp_path / "cache")
    records = list(resume_training(tmp_path / "resumed", cache_dir=tmp_path / "cache"))
    assert records[0].type == "resumed" and records[0].after_epoch == 2 and records[-1].status == "completed"
    straight, resumed = read_records(tmp_path / "straight"), read_records(tmp_path / "resumed")
    assert [e.epoch for e in resumed.epochs] == [1, 2, 3, 4]  # one stream, in the same folder
    assert [e.val_acc for e in resumed.epochs] == [e.val_acc for e in straight.epochs]
    assert [e.val_loss for e in resumed.epochs] == [e.val_loss for e in straight.epochs]
    assert [e.train_loss for e in resumed.epochs] == [e.train_loss for e in straight.epochs]
    assert [e.lr for e in resumed.epochs] == [e.lr for e in straight.epochs]  # the schedule went on
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the head's weights, bit for bit
    assert resumed.final.status == "completed" and resumed.final.test_acc == straight.final.test_acc
    assert resumed.test.epoch == straight.test.epoch  # the same epoch chosen on validation, tested once
    assert read_run(tmp_path / "resumed").status == "completed"


@pytest.mark.slow
def test_the_full_forward_path_resumes_within_float_tolerance(colours, tmp_path):
    cfg = TrainConfig(arch="efficientnet_lite0", data_root=str(colours), num_workers=0, epochs=2, lr=0.01,
                      freeze="all")
    list(train(cfg, tmp_path / "straight"))
    _stopped_after(cfg, tmp_path / "resumed", 1, None)
    list(resume_training(tmp_path / "resumed"))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-4
    straight, resumed = read_records(tmp_path / "straight"), read_records(tmp_path / "resumed")
    assert [e.val_acc for e in resumed.epochs] == pytest.approx([e.val_acc for e in straight.epochs], abs=0.1)


def test_resume_refusals_leave_the_run_as_it_was(colours, lite0_file, tmp_path):
    cfg = _config(colours, lite0_file)
    done = tmp_path / "done"
    list(train(TrainConfig.from_dict({**cfg.to_dict(), "epochs": 1}), done, cache_dir=tmp_path / "cache"))
    with pytest.raises(RunError, match="nothing to resume"):
        follow(resume_training(done))

    run = tmp_path / "stopped"
    _stopped_after(cfg, run, 2, tmp_path / "cache")
    metrics = RunDir(run).metrics.read_bytes()

    config = RunDir(run).config.read_text()
    RunDir(run).config.write_text(config.replace('"lr": 0.05', '"lr": 0.5'))
    with pytest.raises(RunError, match="config.json changed since its last checkpoint"):
        follow(resume_training(run))
    RunDir(run).config.write_text(config)

    train_list = (RunDir(run).lists / "train.txt").read_text()
    (RunDir(run).lists / "train.txt").write_text(train_list.splitlines()[0] + "\n")
    with pytest.raises(RunError, match="lists/train.txt changed"):
        follow(resume_training(run))
    (RunDir(run).lists / "train.txt").write_text(train_list)

    checkpoint = RunDir(run).last.read_bytes()
    RunDir(run).last.write_bytes(checkpoint[: len(checkpoint) // 2])
    with pytest.raises(RunError, match="cannot be resumed: checkpoint_last.pt"):
        follow(resume_training(run))
    RunDir(run).last.write_bytes(checkpoint)

    (RunDir(run).path / "resume-1.claim").touch()  # another resume got there first
    with pytest.raises(RunError, match="another resume of this run has started"):
        follow(resume_training(run))
    assert RunDir(run).metrics.read_bytes() == metrics and read_run(run).status == "stopped"  # untouched
    (RunDir(run).path / "resume-1.claim").unlink()
    assert read_records(run).epochs[-1].epoch == 2
    list(resume_training(run, cache_dir=tmp_path / "cache"))  # and once all is back, it resumes
    assert read_records(run).final.status == "completed" and len(read_records(run).epochs) == 4


@pytest.mark.slow
def test_train_resume_command(colours, lite0_file, tmp_path):
    _stopped_after(_config(colours, lite0_file), tmp_path / "run", 2, tmp_path / "cache")
    out = subprocess.run([sys.executable, "-m", "core", "train", "--resume", str(tmp_path / "run"), "--cache-dir",
                          str(tmp_path / "cache")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "resumed after epoch 2, from its checkpoint" in out.stdout
    again = subprocess.run([sys.executable, "-m", "core", "train", "--resume", str(tmp_path / "run")],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 2 and again.stderr.strip() == "error: nothing to resume: the run completed"


def test_a_resume_that_fails_does_not_block_the_next(colours, lite0_file, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(colours, data)
    run = tmp_path / "run"
    _stopped_after(_config(data, lite0_file), run, 2, tmp_path / "cache")
    shutil.rmtree(data)  # the images are gone: this resume fails
    assert list(resume_training(run, cache_dir=None))[-1].status == "failed"
    shutil.copytree(colours, data)  # back again: the next resume is not blocked by the failed one's claim
    list(resume_training(run, cache_dir=tmp_path / "cache"))
    assert read_records(run).final.status == "completed" and [e.epoch for e in read_records(run).epochs] == [1, 2, 3, 4]


def _claim_of(pid: int, pid_start=None) -> str:
    import json
    import socket

    return json.dumps({"pid": pid, "pid_start": pid_start, "host": socket.gethostname()})


def test_a_resume_killed_before_its_final_does_not_block_the_next(tmp_path):
    """kill -9 leaves the claim behind; its process is gone, so the next attempt takes it over."""
    import os

    from core.platform.process import process_start_id
    from core.runs.create import claim_resume

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run.resume_claim(1).write_text(_claim_of(dead.pid, 12345))
    assert claim_resume(run, 1)
    assert f'"pid": {os.getpid()}' in run.resume_claim(1).read_text()  # now ours
    assert not claim_resume(run, 1)  # and we are alive: a second caller is refused
    run.resume_claim(2).write_text(_claim_of(os.getpid(), process_start_id(os.getpid())))
    assert not claim_resume(run, 2)
    run.resume_claim(3).write_text("")  # unreadable and fresh (written a moment ago by someone): trusted
    assert not claim_resume(run, 3)
    os.utime(run.resume_claim(3), (1, 1))  # unreadable and old: not a live claim
    assert claim_resume(run, 3)
    assert sorted(p.name for p in run.path.iterdir() if not p.name.startswith(".")) == [
        "resume-1.claim", "resume-2.claim", "resume-3.claim"]


def _claim_in_a_process(folder: str, start, results, finish) -> None:
    from core.runs.create import claim_resume
    from core.runs.rundir import RunDir

    start.wait()
    results.put(claim_resume(RunDir(folder), 1))
    finish.wait(120)  # alive until every process has tried: a claim naming an ended process is stale, rightly


def test_two_resumes_taking_over_a_stale_claim_at_once_never_both_win(tmp_path):
    import multiprocessing

    from core.runs.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    context = multiprocessing.get_context("spawn")
    for _ in range(3):
        run.resume_claim(1).write_text(_claim_of(dead.pid, 12345))
        start, results, finish = context.Event(), context.Queue(), context.Event()
        procs = [context.Process(target=_claim_in_a_process, args=(str(run.path), start, results, finish))
                 for _ in range(6)]
        for p in procs:
            p.start()
        start.set()
        # Every claimer stays alive until all have tried: the winner's claim names a live process throughout (once it
        # ends, its claim is stale and may rightly be taken over, which is what made this test flaky under load).
        won = [results.get(timeout=60) for _ in procs]
        finish.set()
        for p in procs:
            p.join(timeout=60)
        assert won.count(True) == 1, won  # their claims name processes that have ended by now: reset for the next round


@pytest.mark.parametrize("forge", ["epoch", "head", "optimizer", "rng", "classes"])
def test_a_forged_checkpoint_is_refused_in_one_sentence_and_the_run_stays_stopped(colours, lite0_file, tmp_path, forge):
    run = tmp_path / "run"
    _stopped_after(_config(colours, lite0_file), run, 2, tmp_path / "cache")
    checkpoint = torch.load(RunDir(run).last, weights_only=False)
    if forge == "epoch":
        checkpoint["epoch"] = -10**9
    elif forge == "head":
        head = next(k for k in checkpoint["model"] if k.endswith("weight") and checkpoint["model"][k].shape[0] == 3)
        checkpoint["model"][head] = torch.zeros(7, checkpoint["model"][head].shape[1])
    elif forge == "optimizer":
        del checkpoint["optimizer"]
    elif forge == "rng":
        checkpoint["rng"] = torch.zeros(3, dtype=torch.uint8)
    else:
        checkpoint["classes"] = ["a", "b", "c"]
    torch.save(checkpoint, RunDir(run).last)
    before = RunDir(run).metrics.read_bytes()
    refusal = "checkpoint_last.pt cannot be resumed: .*; the run is left as it was"
    with pytest.raises(RunError, match=refusal) as refused:
        follow(resume_training(run))
    assert "\n" not in str(refused.value)
    assert read_run(run).status == "stopped" and RunDir(run).metrics.read_bytes() == before


@pytest.mark.parametrize("stopped_after", [2, 3, 4])  # in stage 1; at the boundary (stage 2 begins afresh); in 2
def test_the_fine_tune_recipe_stopped_and_resumed_equals_one_that_ran_straight(colours, lite0_file, tmp_path,
                                                                              stopped_after):
    cfg = _config(colours, lite0_file, recipe="fine_tune", epochs=3, stage2_epochs=2, optimizer="adamw", lr=0.003)
    list(train(cfg, tmp_path / "straight", cache_dir=tmp_path / "cache"))
    _stopped_after(cfg, tmp_path / "resumed", stopped_after, tmp_path / "cache")
    list(resume_training(tmp_path / "resumed", cache_dir=tmp_path / "cache"))
    straight, resumed = read_records(tmp_path / "straight"), read_records(tmp_path / "resumed")
    assert [(e.epoch, e.stage) for e in resumed.epochs] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]
    for figure in ("train_loss", "val_loss", "val_acc", "lr"):
        assert [getattr(e, figure) for e in resumed.epochs] == [getattr(e, figure) for e in straight.epochs], figure
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the last stage's weights too, bit for bit
    assert resumed.test.epoch == straight.test.epoch and resumed.final.test_acc == straight.final.test_acc
