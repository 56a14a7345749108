"""After training: the report (confusion cells, precision/recall/F1, top losses, calibration), temperature
scaling kept with the run, calibrated prediction, and test-time augmentation."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from core.analysis.report import _coverage_notes, class_scores, evaluate_tta, run_report
from core.data.datasets import build_transform
from core.inference.predict import Predictor
from core.platform.errors import RunError
from core.runs.files import read_records
from core.runs.listing import read_run
from core.runs.rundir import RunDir
from core.spec.archs import get_arch
from core.spec.config import TrainConfig
from core.spec.records import Prediction, follow
from core.spec.states import RunState
from core.training.calibration import calibrate, expected_calibration_error, fit_temperature, reliability, softmax
from core.training.train import write_test_outputs
from tests.conftest import ROOT, make_colour_dataset


# ----------------------------------------------------------------------------- calibration, no model
def _overconfident(n: int = 1200, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a head that is right about 70% of the time but scaled ×8, so it claims near-certainty."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    right = rng.random(n) < 0.7
    guess = np.where(right, labels, (labels + rng.integers(1, classes, n)) % classes)
    logits[np.arange(n), guess] += 2.0
    return logits * 8, labels


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_head_on_held_apart_data():
    logits, labels = _overconfident()
    fit_half, judged = slice(0, 600), slice(600, None)
    t = fit_temperature(logits[fit_half], labels[fit_half])
    assert t > 2  # it softens an overconfident head
    before = expected_calibration_error(softmax(logits[judged]), labels[judged])
    after = expected_calibration_error(softmax(logits[judged], t), labels[judged])
    assert before > 0.2 and after < before / 3, (before, after)
    report = calibrate(logits, labels)  # the report's own cross-fitting agrees
    assert report.ece > 0.2 and report.ece_calibrated < report.ece / 3
    assert sum(b.count for b in report.bins) == sum(b.count for b in report.bins_calibrated) == len(labels)
    # the temperature never changes the predicted class
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()


def test_ece_of_a_hand_worked_example():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    labels = np.array([0, 1, 0, 1])
    # bins of 15: 0.9 → bin 13 (two images, accuracy 0.5, confidence 0.9); 0.6 → bin 8 (one, 1.0 vs 0.6);
    # 0.8 → bin 11 (one, 1.0 vs 0.8): (2 × 0.4 + 0.4 + 0.2) / 4 = 0.35
    assert expected_calibration_error(probs, labels) == pytest.approx(0.35)
    bins = reliability(probs, labels)
    assert len(bins) == 15 and [b.count for b in bins if b.count] == [1, 1, 2]


def test_one_test_image_has_no_held_apart_calibration_but_no_error():
    c = calibrate(np.array([[2.0, 0.0]]), np.array([0]))
    assert c.images == 1 and c.ece_calibrated is None and c.bins_calibrated == [] and c.temperature > 0


def test_precision_recall_f1_equal_scikit_learns_on_a_fixed_example():
    from sklearn.metrics import classification_report

    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    preds = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2, 0])
    names = ["ant", "bee", "wasp", "fly"]  # "fly" never occurs: zero support, zeros, no warning
    per_class, macro, weighted = class_scores(labels, preds, names)
    expected = classification_report(labels, preds, labels=[0, 1, 2, 3], target_names=names, output_dict=True,
                                      zero_division=0)
    for s in per_class:
        e = expected[s.name]
        assert (s.precision, s.recall, s.f1, s.support) == pytest.approx(
            (e["precision"], e["recall"], e["f1-score"], e["support"]))
    for mine, key in ((macro, "macro avg"), (weighted, "weighted avg")):
        e = expected[key]
        assert (mine.precision, mine.recall, mine.f1) == pytest.approx((e["precision"], e["recall"], e["f1-score"]))
    assert per_class[0].precision == pytest.approx(3 / 4) and per_class[0].recall == pytest.approx(3 / 4)


def test_coverage_says_which_epoch_a_running_or_stopped_run_reports():
    from types import SimpleNamespace

    older = SimpleNamespace(start=SimpleNamespace(test_size=40, validation=""), test=None, epochs=[1])
    tested = SimpleNamespace(start=SimpleNamespace(test_size=40, validation="8 images"), epochs=[1],
                             test=SimpleNamespace(epoch=2, chosen_by="validation"))
    assert "still training: this covers epoch 2" in _coverage_notes(RunState.RUNNING, 2, older, object())[0]
    assert "stopped: this covers epoch 3" in _coverage_notes(RunState.STOPPED, 3, older, object())[0]
    assert "chosen on the test split" in _coverage_notes(RunState.COMPLETED, 3, older, object())[0]
    assert _coverage_notes(RunState.STOPPED, 3, tested, object()) == [
        "the test split's one pass, on the model of epoch 2, chosen on validation"]


def test_tta_views_put_the_plain_view_first():
    pre = build_transform(get_arch("resnet18").transforms())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    flip = pre.views(image, "flip")
    ten = pre.views(image, "flip+crops")
    assert flip.shape == (2, 3, 224, 224) and ten.shape == (10, 3, 224, 224)
    assert torch.equal(flip[0], pre(image)) and torch.equal(flip[1], pre(image).flip(-1))
    assert torch.equal(ten[0], pre(image)) and torch.equal(ten[5], ten[0].flip(-1))
    assert not torch.equal(ten[1], ten[0])  # a corner is not the centre
    with pytest.raises(ValueError, match="allowed: flip, flip"):
        pre.views(image, "rotate")
    assert pre.tta_note("flip+crops") == pre.tta_note("flip") == pre.tta_note(None) == ""
    boxed = build_transform(get_arch("resnet18").transforms(), letterbox=True)
    assert boxed.views(image, "flip+crops").shape == (2, 3, 224, 224)  # no corners to crop: it says so
    assert "2 views" in boxed.tta_note("flip+crops") and boxed.tta_note("flip") == ""


# ----------------------------------------------------------------------------- a trained run
@pytest.fixture(scope="module")
def run(tmp_path_factory, lite0_file):
    from core.training.run import train

    data = make_colour_dataset(tmp_path_factory.mktemp("rep") / "c", per_class=8, classes=("blue", "green", "red"))
    folder = tmp_path_factory.mktemp("rep") / "run"
    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(data), epochs=2,
                           num_workers=0, lr=0.01), folder))
    return folder


def test_a_run_keeps_its_test_logits_and_a_temperature_fitted_on_validation(run):
    report = run_report(run)
    outputs = np.load(RunDir(run).test_outputs)
    best = torch.load(RunDir(run).best, weights_only=False)
    assert outputs["logits"].shape == (report.tested, 3) and int(outputs["epoch"]) == report.epoch == best["epoch"]
    assert "validation image" in best["temperature_fitted_on"]
    assert best["temperature"] != pytest.approx(fit_temperature(outputs["logits"], outputs["label"]), rel=1e-3)
    assert report.temperature == pytest.approx(best["temperature"]) and report.temperature_epoch == best["epoch"]
    assert report.calibration.temperature == report.temperature  # judged on test, never refitted there
    # the report's stored predictions agree with predictions.json
    stored = json.loads(RunDir(run).predictions.read_text())
    assert [(i.path, i.label, i.pred) for i in report.images] == [(p["path"], p["label"], p["pred"]) for p in stored]


def test_calibrated_probabilities_are_softmax_of_logits_over_the_stored_temperature(run):
    predictor = Predictor.load(run)
    assert predictor.temperature is not None
    image = next(p for p in sorted(run.parent.parent.rglob("*.png")) if "green" in str(p))
    logits = predictor.batch_logits(predictor.transform(Image.open(image).convert("RGB")).unsqueeze(0))
    calibrated = predictor.probabilities(image)
    torch.testing.assert_close(calibrated, (logits / predictor.temperature).softmax(1)[0])
    torch.testing.assert_close(predictor.probabilities(image, calibrated=False), logits.softmax(1)[0])
    out = subprocess.run([sys.executable, "-m", "core", "predict", str(run), str(image), "--topk", "3"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["probabilities"] == "calibrated" and result["temperature"] == pytest.approx(predictor.temperature)
    top = result["predictions"][0]
    assert top["probability"] == pytest.approx(float(calibrated.max()), abs=1e-5)
    tta = predictor.probabilities(image, tta="flip")
    assert tta.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_a_clicked_cell_lists_exactly_its_images(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    report = run_report(copy)
    n = report.tested
    # planted outcomes: image k predicted as class (k % 3), whatever its label
    labels = np.array([i.label for i in report.images])
    logits = np.full((n, 3), -2.0, dtype=np.float32)
    logits[np.arange(n), np.arange(n) % 3] = 3.0
    predictions = [Prediction(i.index, i.label, int(k % 3), 0.9) for k, i in enumerate(report.images)]
    write_test_outputs(RunDir(copy), 2, predictions, torch.from_numpy(logits))
    report = run_report(copy)
    for t in range(3):
        for p in range(3):
            expected = {i.path for k, i in enumerate(report.images) if labels[k] == t and k % 3 == p}
            cell = report.cell(t, p)
            assert {i.path for i in cell} == expected
            assert all(i.label == t and i.pred == p for i in cell)
            assert report.confusion[t][p] == len(expected)
    pairs = report.most_confused
    assert pairs and pairs[0].count == max(report.confusion[t][p] for t in range(3) for p in range(3) if t != p)
    assert report.top_losses and report.top_losses[0].loss == max(i.loss for i in report.images)


def test_report_command_writes_the_promised_keys(run, tmp_path):
    out = subprocess.run([sys.executable, "-m", "core", "report", str(run), "--json", str(tmp_path / "r.json"),
                          "--tta", "flip"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    for key in ("per_class", "macro", "weighted", "most_confused", "top_losses", "least_certain", "ece",
                "ece_calibrated", "temperature"):
        assert key in data, key
    assert set(data["per_class"][0]) == {"class", "precision", "recall", "f1", "support"}
    assert sum(c["support"] for c in data["per_class"]) == data["tested"]
    assert 0 <= data["ece"] <= 1 and data["temperature"] > 0
    assert data["tta"]["images"] == data["tested"] and data["tta"]["mode"] == "flip"
    assert "precision" in out.stdout and "calibration: ECE" in out.stdout


def test_a_run_from_before_calibration_still_predicts_and_reports(run, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run, old)
    RunDir(old).test_outputs.unlink()
    for path in (RunDir(old).best, RunDir(old).last):
        ckpt = torch.load(path, weights_only=False)
        ckpt.pop("temperature", None)
        ckpt.pop("temperature_fitted_on", None)
        torch.save(ckpt, path)
    predictor = Predictor.load(old)
    assert predictor.temperature is None and "raw" in predictor.calibration_label
    image = next(iter(sorted(run.parent.parent.rglob("*.png"))))
    torch.testing.assert_close(predictor.probabilities(image), predictor.probabilities(image, calibrated=False))
    report = run_report(old)
    assert report.calibration is None and report.top_losses == [] and report.temperature is None
    assert report.per_class and sum(s.support for s in report.per_class) == report.tested
    assert any("no test logits" in n for n in report.notes) and any("raw probabilities" in n for n in report.notes)
    out = subprocess.run([sys.executable, "-m", "core", "predict", str(old), str(image)], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and json.loads(out.stdout)["probabilities"] == "raw"


def test_damaged_test_outputs_show_the_run_as_damaged(run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    RunDir(bad).test_outputs.write_bytes(b"PK\x03\x04 cut short")
    assert read_run(bad).status is RunState.DAMAGED and "test_outputs.npz" in read_run(bad).reason
    with pytest.raises(RunError, match="damaged"):
        run_report(bad)
    # arrays that read but do not fit this run: named, not a traceback
    np.savez(RunDir(bad).test_outputs, epoch=np.array(1), index=np.array([0, 1]), label=np.array([0, 7]),
             logits=np.zeros((2, 3), np.float32))
    with pytest.raises(RunError, match="a label is not one of the 3 classes"):
        run_report(bad)


def test_tta_is_measured_with_and_without_on_the_same_checkpoint(run):
    stream = evaluate_tta(run, "flip+crops")
    steps = []
    result = follow(stream, steps.append)
    assert steps[0].done == 0 and steps[-1].done == steps[-1].total == result.images
    report = run_report(run)
    assert result.images == report.tested and result.calibrated
    tested = read_records(run).test
    assert tested.epoch == result.epoch  # the checkpoint's epoch
    assert result.accuracy == pytest.approx(tested.acc)  # the plain view is the test pass's own
    assert 0 <= result.tta_accuracy <= 1 and 0 <= result.tta_ece <= 1
    with pytest.raises(RunError, match="does not exist"):
        next(evaluate_tta(run, "rotate"))


def test_a_run_with_one_tested_image_reports_what_it_can(run, tmp_path):
    import shutil

    one = tmp_path / "one"
    shutil.copytree(run, one)
    first = run_report(one).images[0]
    write_test_outputs(RunDir(one), 2, [Prediction(first.index, first.label, first.label, 0.9)],
                       torch.tensor([[4.0 if c == first.label else 0.0 for c in range(3)]]))
    report = run_report(one)
    assert report.tested == 1 and report.accuracy == 1.0 and report.most_confused == []
    # the temperature came from validation: even one test image is judged with it
    assert report.to_json()["ece_calibrated"] == report.calibration.ece_calibrated is not None
    assert report.cell(first.label, first.label)[0].path == first.path
