"""What a first-time user tripped over, page by page (Training, Model surgery, Dataset, Prediction, the command
line, jargon everywhere): each case says what the page now shows instead."""
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from core.jobs.queue import run_progress, seconds_left, smooth_eta, start_worker
from core.platform.workspace import runs_dir
from core.runs.create import create_run
from core.runs.files import read_records
from core.runs.listing import list_runs, read_run
from core.runs.rundir import RunDir
from core.runs.status import WorkerState, write_status
from core.spec.config import TrainConfig
from tests.conftest import app_test, make_colour_dataset, wait_until


def _train(small_root, lite0_file, name: str, **settings) -> Path:
    from core.training.run import train

    path = runs_dir() / name
    settings = {"recipe": "single", **settings}  # one stage: these tests count its epochs
    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(small_root),
                           num_workers=0, **settings), path))
    return path


# ============================================================================= Training
@pytest.mark.slow
def test_early_stopping_is_said_where_the_run_is_shown_and_in_the_table(small_root, lite0_file):
    run = _train(small_root, lite0_file, "early", epochs=8, lr=0.05, patience=1)
    final = read_records(run).final
    assert final.epochs_completed < 8
    at = app_test("app_pages/training.py", run="early")
    said = (f"Stopped early at epoch {final.epochs_completed} of 8: no better validation accuracy for 1 epoch; "
            f"predictions use epoch {final.best_epoch}.")
    assert said in [i.value for i in at.info]
    table = next(d.value for d in at.dataframe if "note" in d.value.columns)  # the runs table
    assert said[1:-1] in " ".join(table["note"]).replace("stopped", "Stopped")[1:]


def test_every_place_names_what_trains_never_freeze_all(small_root):
    create_run(runs_dir() / "scratch-run", TrainConfig(arch="resnet18", data_root=str(small_root), freeze="all"))
    write_status(RunDir(runs_dir() / "scratch-run"), WorkerState("failed", pid=None, reason="killed"))
    at = app_test("app_pages/training.py")
    table = next(d.value for d in at.dataframe if "trains" in d.value.columns)
    assert "freeze" not in table.columns and list(table["trains"]) == ["every layer"]
    assert list_runs(runs_dir())[0].label.startswith("scratch · trains every layer · resnet18")
    home = app_test()
    assert any("trains every layer" in m.value for m in home.markdown)
    assert not any("freeze all" in m.value for m in home.markdown)


def _chart_specs(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]


def test_epochs_are_whole_numbers_and_the_learning_rate_has_its_own_log_axis(small_root, lite0_file):
    _train(small_root, lite0_file, "stepped", epochs=2, lr=0.01, schedule="step", step_size=1)
    at = app_test("app_pages/training.py", run="stepped")
    specs = _chart_specs(at)
    epoch_axes = [s["encoding"]["x"] for s in specs if s.get("encoding", {}).get("x", {}).get("field") == "epoch"]
    assert epoch_axes and all(x["type"] == "ordinal" for x in epoch_axes)  # "1", "2": never "1.000000"
    rate = next(s for s in specs if s.get("encoding", {}).get("y", {}).get("field") == "learning rate")
    assert rate["encoding"]["y"]["scale"]["type"] == "log" and rate["encoding"]["y"]["axis"]["format"] == ".0e"
    assert rate["height"] >= 200
    assert "Learning rate per epoch" in [m.value.strip("*") for m in at.markdown]


def test_the_set_up_steps_are_named_before_the_first_record(small_root, lite0_file, tmp_path):
    seen = []
    run = start_worker(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(small_root),
                                   epochs=1, num_workers=0), tmp_path / "run")

    def started() -> bool:
        info = read_run(run)
        seen.append(run_progress(read_records(run), setup_phase=info.reason)[1])
        return read_records(run).start is not None or info.finished

    assert wait_until(started, 180, interval=0.05)
    assert wait_until(lambda: read_run(run).finished, 180)
    assert "starting: importing PyTorch and the model code…" in seen, seen
    assert any(text.startswith("starting: scanning the images") or text.startswith("starting: building")
               for text in seen), seen


def test_the_time_left_is_smoothed():
    raw = [301, 356, 204, 147, 150, 140]
    previous, shown = None, []
    for i, value in enumerate(raw):
        now = 100.0 + 2 * i
        left = smooth_eta(previous, value, now)
        previous = (left, now)
        shown.append(left)
    raw_jumps = max(abs(a - b) for a, b in zip(raw, raw[1:]))
    shown_jumps = max(abs(a - b) for a, b in zip(shown, shown[1:]))
    assert shown_jumps < raw_jumps / 2
    assert smooth_eta(None, 120.0, 0.0) == 120.0 and smooth_eta((10.0, 0.0), None, 1.0) is None


@pytest.mark.slow
def test_the_time_left_comes_from_the_epochs_own_durations(small_root, lite0_file):
    run = _train(small_root, lite0_file, "timed", epochs=3)
    records = read_records(run)
    done = type(records)(tuple(r for r in records.items if r.type != "final" and (getattr(r, "epoch", None) or 1) <= 1))
    per_epoch = records.epochs[0].seconds
    assert seconds_left(done, now=records.epochs[0].time + 1000) == pytest.approx(2 * per_epoch)  # not elapsed-based
    assert seconds_left(records) == 0.0


def test_the_misclassified_grid_lines_up():
    from core.data.images import thumbnail_jpeg

    for size in ((600, 100), (100, 600), (640, 480)):
        buf = io.BytesIO()
        Image.new("RGB", size, (10, 200, 10)).save(buf, format="PNG")
        assert Image.open(io.BytesIO(thumbnail_jpeg(buf.getvalue(), 320, square=True))).size == (320, 320)


# ============================================================================= Model surgery
def test_without_weights_every_sentence_is_true(small_root):
    at = app_test("app_pages/surgery.py")  # resnet18 chosen, no resnet18 weights in the test's torch home
    at.selectbox(key="sg_arch").set_value("resnet18").run()
    assert any("no resnet18 weights are on this machine: the result below" in w.value for w in at.warning)
    assert any(s.value.endswith("every layer starts from random weights") for s in at.subheader)
    assert [m.value for m in at.metric if m.label == "Keys loaded from the file"] == ["none: no file"]
    text = " ".join(m.value for m in at.markdown)
    assert "all start from random initialisation" in text and "expected for a new head" not in text
    at.selectbox(key="sg_arch").set_value("vgg16").run()
    at.selectbox(key="sg_variant").set_value("add_inside").run()
    at.radio(key="sg_mode").set_value("none").run()
    assert not any("keeps its pretrained weights" in i.value for i in at.info)
    assert list(at.dataframe[-1].value.columns[-3:]) == ["trains when head only", "trains when last stage + head",
                                                         "trains when every layer"]
    assert not any("choose freeze 'all'" in i.value for i in at.info)


# ============================================================================= Dataset
def test_an_offline_cifar_download_is_a_message_for_the_page_and_the_page_stays(small_root, monkeypatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing listens: refused
    at = app_test("app_pages/dataset.py")
    at.radio(key="ds_source").set_value("CIFAR-10").run()
    at.button(key="ds_cifar").click().run()
    assert not at.exception
    message = [e.value for e in at.error]
    assert len(message) == 1 and "in the box above" in message[0] and "--archive" not in message[0]
    assert not [p for p in at.get("progress") if "Connecting" in str(p.proto)]
    assert "List files" in [s.value for s in at.subheader]  # the rest of the page is still there


def test_an_offline_weights_download_keeps_the_surgery_page(small_root, monkeypatch):
    from core.platform.errors import WeightsError

    def offline(*args, **kwargs):
        raise WeightsError("could not download https://download.pytorch.org/x.pth (offline)")

    monkeypatch.setattr("core.models.weights.download_file", offline)
    at = app_test("app_pages/surgery.py")
    at.selectbox(key="sg_arch").set_value("resnet18").run()
    at.button(key="sg_download").click().run()
    assert not at.exception
    assert any("could not download" in e.value for e in at.error)
    assert not [p for p in at.get("progress") if "Connecting" in str(p.proto)]
    assert any(s.value.startswith("Result for") for s in at.subheader)


def test_a_given_split_disables_the_ratio_and_the_page_says_what_happened(tmp_path, monkeypatch):
    root = tmp_path / "given"
    make_colour_dataset(root / "train", per_class=3)
    make_colour_dataset(root / "val", per_class=2)
    (root / "train" / "red" / "notes.txt").write_text("not an image")
    monkeypatch.setenv("TLD_DATA_ROOT", str(root))
    at = app_test("app_pages/dataset.py")
    assert at.slider(key="ds_ratio").disabled
    assert any(c.value.startswith("Not written yet; the button writes them to") for c in at.caption)
    assert [e.label for e in at.expander if "skipped" in e.label] == ["1 file skipped"]
    at.button(key="ds_write").click().run()
    assert any(c.value.startswith("Written to") for c in at.caption)


def test_a_zip_upload_says_it_worked(small_root):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name in ("a/1.png", "a/2.png", "b/1.png", "b/2.png"):
            img = io.BytesIO()
            Image.new("RGB", (16, 16), (200, 0, 0) if name.startswith("a") else (0, 0, 200)).save(img, format="PNG")
            archive.writestr(name, img.getvalue())
    at = app_test("app_pages/dataset.py")
    at.radio(key="ds_source").set_value("Upload a zip").run()
    at.file_uploader(key="ds_zip").upload("two.zip", buf.getvalue(), "application/zip").run()
    at.button(key="ds_extract").click().run()
    assert not at.exception
    assert any(s.value.startswith("Extracted two.zip to") for s in at.success)


def test_the_chosen_dataset_is_remembered_for_the_bare_address(small_root, tmp_path):
    other = make_colour_dataset(tmp_path / "other", per_class=3, classes=("green", "red"))
    at = app_test("app_pages/dataset.py")
    at.radio(key="ds_source").set_value("A folder on this machine").run()
    at.text_input(key="ds_path").input(str(other)).run()
    at.button(key="ds_use_path").click().run()
    fresh = app_test()  # a new visit, no link parameters
    assert any(str(other) in m.value for m in fresh.markdown)


def test_with_a_password_each_address_has_its_own(tmp_path):
    from core.platform.workspace import remember_data_root, remembered_data_root

    remember_data_root(tmp_path / "mine", "address 10.0.0.1")
    assert remembered_data_root("address 10.0.0.1") == str(tmp_path / "mine")
    assert remembered_data_root("address 10.0.0.2") is None
    assert remembered_data_root("everyone") is None


# ============================================================================= Prediction
def _finished_run(small_root, lite0_file) -> Path:
    return _train(small_root, lite0_file, "finished", epochs=1)


@pytest.mark.slow
def test_one_upload_limit_shown_by_the_widget_in_its_unit(small_root, lite0_file, monkeypatch):
    _finished_run(small_root, lite0_file)
    monkeypatch.setenv("TLD_MAX_IMAGE_BYTES", str(3 * 1024**2))
    at = app_test("app_pages/prediction.py")
    assert at.file_uploader(key="pr_upload").proto.max_upload_size_mb == 3
    big = Image.effect_noise((1400, 1400), 100).convert("RGB")
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) > 3 * 1024**2
    at.file_uploader(key="pr_upload").upload("big.png", data, "image/png").run()
    message = [e.value for e in at.error if "more than the limit" in e.value]
    assert message == [f"'big.png' is {len(data) / 1e6:.1f} MB, more than the limit of 3 MB per image"]
    assert "TLD_" not in message[0]


def test_batch_prediction_says_it_finished(small_root, lite0_file):
    _finished_run(small_root, lite0_file)
    at = app_test("app_pages/prediction.py")
    files = [(f"{i}.png", next(small_root.glob("red/*.png")).read_bytes(), "image/png") for i in range(3)]
    uploader = at.file_uploader(key="pr_batch")
    for name, data, mime in files:
        uploader.upload(name, data, mime)
    at.run()
    at.button(key="pr_batch_go").click().run()
    assert not at.exception
    assert "Predicted 3 images." in [s.value for s in at.success]
    assert not [p for p in at.get("progress") if "Predicting" in str(p.proto)]


# ============================================================================= command line
def test_the_plain_train_command_falls_back_to_the_offline_backbone(small_root, capsys):
    from core.cli.main import main

    assert main(["train", "--data", str(small_root), "--epochs", "1", "--num-workers", "0",
                 "--out", str(runs_dir() / "plain")]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "no pretrained resnet18 weights on this machine" in notes[0]
    assert "using efficientnet_lite0" in notes[0]
    assert read_run(runs_dir() / "plain").config.arch == "efficientnet_lite0"
    assert read_run(runs_dir() / "plain").status == "completed"


def test_an_explicit_resnet18_keeps_the_clear_refusal(small_root, capsys):
    from core.cli.main import main

    assert main(["train", "--data", str(small_root), "--arch", "resnet18", "--epochs", "1"]) == 2
    assert "no pretrained resnet18 weights on this machine" in capsys.readouterr().err


def test_a_named_weights_file_without_arch_is_the_recipes_resnet18(small_root, resnet18_file, capsys):
    from core.cli.main import main

    assert main(["train", "--data", str(small_root), "--weights", str(resnet18_file), "--epochs", "1",
                 "--num-workers", "0", "--out", str(runs_dir() / "named")]) == 0
    assert "note:" not in capsys.readouterr().err
    assert read_run(runs_dir() / "named").config.arch == "resnet18"


# ============================================================================= everywhere
def test_no_jargon_a_newcomer_cannot_act_on(small_root):
    at = app_test("app_pages/training.py")
    shown = " ".join([m.value for m in at.markdown] + [n.help or "" for n in at.number_input])
    for jargon in ("torchrun", "DistributedDataParallel", "the benchmark shows", "ship with pip", "head variant `"):
        assert jargon not in shown, jargon
