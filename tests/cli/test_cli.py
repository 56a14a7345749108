"""The command line, run as a user runs it: a subprocess, its output, its exit code, the files it writes."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.platform.workspace import runs_dir
from core.runs.files import read_records
from core.runs.listing import list_runs
from tests.conftest import ROOT


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=300)


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_split_command(colour_data, tmp_path):
    result = run_cli("split", colour_data, "--out", tmp_path / "lists", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert "total: 10 train, 2 validation, 8 test" in result.stdout
    assert len((tmp_path / "lists" / "test.txt").read_text().splitlines()) == 8


@pytest.mark.slow
def test_surgery_command(resnet18_file):
    result = run_cli("surgery", "--arch", "resnet18", "--num-classes", "3", "--weights", resnet18_file, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["popped_keys"] == ["fc.weight", "fc.bias"] and report["head_out_features"] == 3
    text = run_cli("surgery", "--arch", "vgg16", "--num-classes", "3", "--vgg-variant", "add_inside", "--brief",
                   "--weights", "none")
    assert text.returncode == 0 and "classifier.add_Linear" in text.stdout


@pytest.mark.slow
def test_train_defaults_to_pretrained_weights_a_named_run_folder_and_the_cache(colour_data, lite0_file):
    """No --weights, --out or cache flags: the packaged weights, a run under the workspace, features cached."""
    args = ("train", "--data", colour_data, "--arch", "efficientnet_lite0", "--epochs", "1", "--num-workers", "0")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert f"weights: {lite0_file}" in first.stdout
    assert "features for train: 10 images computed" in first.stdout
    runs = list_runs(runs_dir())
    assert len(runs) == 1 and runs[0].status == "completed" and runs[0].config.weights == str(lite0_file)
    assert "efficientnet_lite0-pt" in runs[0].name and runs[0].path.parent == runs_dir()
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "features for train: 10 images read from the cache" in second.stdout
    assert "features for test: 8 images read from the cache" in second.stdout
    assert len(list_runs(runs_dir())) == 2


@pytest.mark.slow
def test_train_weights_none_warns_and_trains_from_random_initialisation(colour_data, tmp_path):
    result = run_cli("train", "--data", colour_data, "--arch", "resnet18", "--weights", "none", "--epochs", "1",
                     "--num-workers", "0", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "warning: random weights with a frozen body" in result.stderr
    assert "weights: none: random initialisation" in result.stdout
    assert read_records(tmp_path / "run").start.weights is None


def test_train_pretrained_with_no_weights_on_the_machine_says_where_it_looked(colour_data, tmp_path):
    line = _one_error_line(run_cli("train", "--data", colour_data, "--arch", "resnet18", "--out", tmp_path / "run"))
    assert "no pretrained resnet18 weights on this machine" in line
    assert "resnet18-f37072fd.pth" in line and "--arch efficientnet_lite0" in line
    assert not (tmp_path / "run").exists()  # nothing made for a run that cannot start


@pytest.mark.slow
def test_train_then_predict_commands(colour_data, resnet18_file, tmp_path):
    result = run_cli("train", "--data", colour_data, "--arch", "resnet18", "--weights", resnet18_file,
                     "--epochs", "3", "--batch-size", "4", "--num-workers", "0", "--log-every", "1", "--lr", "0.05",
                     "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "epoch 1  loss:" in result.stdout and "test accuracy" in result.stdout
    assert "completed after" in result.stdout
    predicted = run_cli("predict", tmp_path / "run", colour_data / "blue" / "blue_00.png", "--topk", "2")
    assert predicted.returncode == 0, predicted.stderr
    out = json.loads(predicted.stdout)
    assert [p["class"] for p in out["predictions"]][0] == "blue"


@pytest.mark.slow
def test_predict_from_the_tutorials_bare_state_dict(colour_data, resnet18_file, tmp_path):
    assert run_cli("train", "--data", colour_data, "--weights", resnet18_file, "--epochs", "3", "--lr", "0.05",
                   "--batch-size", "4", "--num-workers", "0", "--out", tmp_path / "run").returncode == 0
    bare = tmp_path / "run" / "model_resnet18.pth"
    assert set(torch.load(bare, weights_only=True)) >= {"fc.weight", "conv1.weight"}  # no config, no classes
    out = run_cli("predict", bare, colour_data / "red" / "red_01.png", "--arch", "resnet18", "--classes", "blue,red")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["predictions"][0]["class"] == "red"
    assert "give --classes" in _one_error_line(run_cli("predict", bare, colour_data / "red" / "red_01.png",
                                                       "--arch", "resnet18"))
    wrong = _one_error_line(run_cli("predict", bare, colour_data / "red" / "red_01.png", "--arch", "resnet18",
                                    "--classes", "a,b,c"))
    assert "does not fit resnet18 with 3 classes" in wrong


@pytest.mark.slow
def test_train_from_tutorial_lists_without_classes_json(colour_data, resnet18_file, tmp_path):
    lists = tmp_path / "tutorial"
    lists.mkdir()
    for name, rows in (("train.txt", range(6)), ("test.txt", range(6, 10))):
        (lists / name).write_text("".join(f"{colour_data / c / f'{c}_{i:02d}.png'}\t{label}\n"
                                          for label, c in enumerate(("blue", "red")) for i in rows))
    result = run_cli("train", "--lists", lists, "--weights", resnet18_file, "--epochs", "1", "--num-workers", "0",
                     "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "class names from the image folders" in result.stdout
    start = read_records(tmp_path / "run").start
    assert start.classes == ["blue", "red"] and start.class_names == "from folders"
    assert start.train_size == 10 and start.val_size == 2 and start.test_size == 8  # validation carved in the run
    assert "carved from train.txt, which has no val.txt" in result.stdout


def test_tutorial_lists_whose_folders_do_not_name_the_classes_are_numbered(tmp_path):
    from core.data.split import read_split

    (tmp_path / "train.txt").write_text("imgs/a.jpg\t0\nimgs/b.jpg\t1\n")
    (tmp_path / "test.txt").write_text("imgs/c.jpg\t1\n")
    split = read_split(tmp_path)
    assert split.classes == ["class_0", "class_1"] and split.class_names == "numbered"


def _damaged_png() -> bytes:
    """A PNG whose header and end marker are intact (it passes the split's header check) but whose
    pixel data is broken, so only a full decode finds out."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.find(b"IDAT") + 8
    data[start:start + 200] = bytes(200)
    return bytes(data)


def _unreadable_data(folder: Path) -> Path:
    """Class folders whose images are all damaged inside: a run on them starts, then fails."""
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            (folder / name / f"{i}.png").write_bytes(_damaged_png())
    return folder


def test_a_folder_of_files_that_are_not_images_is_refused_at_the_split_saying_why(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "bad" / name).mkdir(parents=True)
        (tmp_path / "bad" / name / "0.png").write_bytes(b"not a picture")
    refused = _one_error_line(run_cli("split", tmp_path / "bad", "--out", tmp_path / "lists"))
    assert "found none (2 image files could not be read and were left out" in refused
    assert "0.png" in refused and "not an image" in refused
    assert not (tmp_path / "lists" / "train.txt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("freeze", ["head", "all"])
def test_a_run_on_only_unreadable_images_fails_saying_so(tmp_path, resnet18_file, freeze):
    failed = run_cli("train", "--data", _unreadable_data(tmp_path / "bad"), "--weights", resnet18_file, "--freeze",
                     freeze, "--epochs", "1", "--num-workers", "0", "--out", tmp_path / "run")
    assert failed.returncode == 2
    assert "none of the 2 training images could be read" in failed.stderr  # 4 in the training share, 2 validate
    assert read_records(tmp_path / "run").final.status == "failed"


@pytest.mark.slow
def test_out_holding_a_failed_run_is_reused_only_with_force(colour_data, resnet18_file, tmp_path):
    out = tmp_path / "run"
    failed = run_cli("train", "--data", _unreadable_data(tmp_path / "bad"), "--weights", resnet18_file,
                     "--epochs", "1", "--num-workers", "0", "--out", out)
    assert "none of the 2 training images could be read" in _one_error_line(failed)
    again = _one_error_line(run_cli("train", "--data", colour_data, "--weights", resnet18_file, "--epochs", "1",
                                    "--num-workers", "0", "--out", out))
    assert "already holds a failed run" in again and "--force" in again
    forced = run_cli("train", "--data", colour_data, "--weights", resnet18_file, "--epochs", "1",
                     "--num-workers", "0", "--out", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert read_records(out).final.status == "completed"
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.failed-")]
    assert len(aside) == 1 and read_records(aside[0]).final.status == "failed"  # moved, not deleted
    refused = _one_error_line(run_cli("train", "--data", colour_data, "--weights", resnet18_file, "--epochs", "1",
                                      "--out", out, "--force"))
    assert "already holds a completed run" in refused


@pytest.mark.slow
def test_damaged_checkpoint_is_one_error_line(colour_data, resnet18_file, tmp_path):
    assert run_cli("train", "--data", colour_data, "--weights", resnet18_file, "--epochs", "1", "--num-workers", "0",
                   "--out", tmp_path / "run").returncode == 0
    # Random bytes behind a pickle header with an unknown protocol: torch warns before it fails, and
    # that warning must not become a second line on stderr (CI once drew such bytes from os.urandom).
    (tmp_path / "run" / "checkpoint_best.pt").write_bytes(b"\x80\xbe" + os.urandom(4094))
    line = _one_error_line(run_cli("predict", tmp_path / "run", colour_data / "red" / "red_00.png"))
    assert "checkpoint_best.pt' is damaged or not a checkpoint" in line


@pytest.mark.slow
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, colour_data):
    cases = [
        ("split", tmp_path / "missing"),
        ("split", colour_data, "--train-ratio", "1.5"),
        ("surgery", "--arch", "alexnet", "--num-classes", "2", "--weights", "none"),
        ("surgery", "--arch", "resnet18", "--num-classes", "2", "--weights", tmp_path / "none.pth"),
        ("predict", tmp_path / "norun", colour_data / "red" / "red_00.png"),
        ("predict", tmp_path / "norun", colour_data / "red" / "red_00.png", "--topk", "-1"),
        ("train", "--data", colour_data, "--lr", "-1", "--out", tmp_path / "r", "--weights", "none"),
        ("train", "--data", colour_data, "--epochs", "0", "--weights", "none"),
        ("train", "--lists", tmp_path, "--weights", "none"),
        ("train", "--weights", "none"),
        ("nonsense",),
    ]
    for args in cases:
        _one_error_line(run_cli(*args))


@pytest.mark.slow
def test_predict_a_folder_into_a_csv(colour_data, lite0_file, tmp_path):
    import csv

    assert run_cli("train", "--data", colour_data, "--arch", "efficientnet_lite0", "--epochs", "8", "--lr", "0.05",
                   "--batch-size", "4", "--out", tmp_path / "run").returncode == 0
    (colour_data / "red" / "broken.png").write_bytes(b"not an image")
    result = run_cli("predict", tmp_path / "run", colour_data, "--csv", tmp_path / "out.csv", "--topk", "2",
                     "--json", tmp_path / "scored.json")
    assert result.returncode == 0, result.stderr
    assert "21 images predicted" in result.stdout and "1 could not be read" in result.stdout
    # the folder's sub-folders are the model's classes: the predictions are scored, with the interval
    assert "Accuracy on these labelled images: " in result.stdout and "95% CI" in result.stdout
    scored = json.loads((tmp_path / "scored.json").read_text())
    assert scored["scored"] == 20 and scored["unreadable"] == 1 and len(scored["confusion"]) == 2
    assert scored["accuracy_ci"][0] <= scored["accuracy"] <= scored["accuracy_ci"][1]
    assert all(not m["path"].startswith("/") for m in scored["misclassified"])  # as the user named them
    rows = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert len(rows) == 21 and set(rows[0]) == {"path", "top_class", "probability", "topk", "error"}
    readable = [r for r in rows if not r["error"]]
    right = sum(Path(r["path"]).parent.name == r["top_class"] for r in readable)
    assert right >= 18, [(r["path"], r["top_class"]) for r in readable]
    assert all(len(r["topk"].split("; ")) == 2 for r in readable)
    assert [r for r in rows if r["error"]][0]["path"].endswith("broken.png")


def test_a_failure_while_printing_ends_the_run_at_once_and_the_process_exits(colour_data, lite0_file, tmp_path):
    """The record stream is closed where the failure happens: its clean-up (final record, status, TensorBoard's
    writer thread) used to run in the interpreter's teardown, where a thread cannot start, and hung for ever."""
    script = (
        "import sys, core.jobs.console as c\n"
        "def boom(r):\n"
        "    if r.type == 'epoch': raise RuntimeError('printing failed')\n"
        "c.describe_record = boom\n"
        "from core.cli.main import main\n"
        f"sys.exit(main(['train', '--data', {str(colour_data)!r}, '--out', {str(tmp_path / 'run')!r}, '--arch', "
        f"'efficientnet_lite0', '--weights', {str(lite0_file)!r}, '--epochs', '3', '--num-workers', '0']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "printing failed" in proc.stderr
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "stopped" and "stopped early" in status["reason"]


def test_files_the_user_names_are_never_overwritten_without_force(tmp_path):
    from core.cli.main import main

    mine = tmp_path / "mine.json"
    mine.write_text("my own notes")
    for argv in (["report", str(tmp_path / "no-run"), "--json", str(mine)],
                 ["inspect", "--data", str(tmp_path), "--json", str(mine)],
                 ["predict", str(tmp_path / "no-run"), str(tmp_path), "--csv", str(mine)]):
        proc = subprocess.run([sys.executable, "-m", "core", *argv], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and f"'{mine}' exists already" in proc.stderr and "--force" in proc.stderr
    assert mine.read_text() == "my own notes"
    assert main(["report", str(tmp_path / "no-run"), "--json", str(mine), "--force"]) == 2  # past the guard: no run


def test_every_subcommands_help_prints_every_train_flag():
    """Each flag's help is the config field's text: a share written with % must print, not break argparse."""
    from core.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, command in commands.items():
        assert command.format_help(), name
    text = commands["train"].format_help()
    assert "35-100% of the" in text and "--recipe {single,fine_tune}" in text and "--optimizer {sgd,adamw}" in text
    assert all(f"--{f.replace('_', '-')}" in text for f in ("stage2_epochs", "warmup", "aug_views"))
