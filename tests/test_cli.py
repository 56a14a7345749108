import json
import os
import subprocess
import sys


from tests.conftest import ROOT


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=300)


def test_split_command(colour_data, tmp_path):
    result = run_cli("split", colour_data, "--out", tmp_path / "lists", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert "total: 12 train, 8 test" in result.stdout
    assert len((tmp_path / "lists" / "test.txt").read_text().splitlines()) == 8


def test_surgery_command(resnet18_file):
    result = run_cli("surgery", "--arch", "resnet18", "--num-classes", "3", "--weights", resnet18_file, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["popped_keys"] == ["fc.weight", "fc.bias"] and report["head_out_features"] == 3
    text = run_cli("surgery", "--arch", "vgg16", "--num-classes", "3", "--vgg-variant", "add_inside", "--brief")
    assert text.returncode == 0 and "classifier.add_Linear" in text.stdout


def test_train_then_predict_commands(colour_data, resnet18_file, tmp_path):
    result = run_cli("train", "--data", colour_data, "--arch", "resnet18", "--weights", resnet18_file,
                     "--epochs", "2", "--batch-size", "4", "--num-workers", "0", "--log-every", "1",
                     "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "epoch 1  loss:" in result.stdout and "test accuracy" in result.stdout
    assert json.loads(result.stdout[result.stdout.index("{"):])["status"] == "completed"
    predicted = run_cli("predict", tmp_path / "run", colour_data / "blue" / "blue_00.png", "--topk", "2")
    assert predicted.returncode == 0, predicted.stderr
    out = json.loads(predicted.stdout)
    assert len(out["predictions"]) == 2
    assert abs(sum(p["probability"] for p in out["predictions"]) - 1) < 1e-5


def test_train_from_lists_folder(colour_data, resnet18_file, tmp_path):
    assert run_cli("split", colour_data, "--out", tmp_path / "lists").returncode == 0
    result = run_cli("train", "--lists", tmp_path / "lists", "--weights", resnet18_file, "--epochs", "1",
                     "--num-workers", "0", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr


def test_bad_input_gives_one_line_and_non_zero_exit(tmp_path, colour_data):
    cases = [
        ("split", tmp_path / "missing"),
        ("surgery", "--arch", "alexnet", "--num-classes", "2"),
        ("surgery", "--arch", "resnet18", "--num-classes", "2", "--weights", tmp_path / "none.pth"),
        ("predict", tmp_path / "norun", colour_data / "red" / "red_00.png"),
        ("train", "--data", colour_data, "--lr", "-1", "--out", tmp_path / "r"),
    ]
    for args in cases:
        result = run_cli(*args)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        assert "Traceback" not in result.stderr
