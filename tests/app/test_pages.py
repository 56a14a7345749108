"""The dashboard's pages, driven headlessly with Streamlit's AppTest."""
import json
import time

import pytest
from streamlit.testing.v1 import AppTest

from core.data.demo import generate_demo
from core.jobs.queue import kill_worker
from core.platform.workspace import lists_dir_for, runs_dir
from core.runs.files import read_records
from core.runs.listing import read_run
from core.spec.archs import ARCHITECTURES
from tests.conftest import ROOT, wait_until

APP = str(ROOT / "dashboard.py")
PAGES = ["app_pages/home.py", "app_pages/dataset.py", "app_pages/check.py", "app_pages/surgery.py",
         "app_pages/training.py", "app_pages/prediction.py"]


@pytest.fixture
def small_demo(tmp_path, monkeypatch):
    """A smaller demo dataset, the workspace's default data root, so page tests stay fast."""
    root = generate_demo(tmp_path / "workspace" / "datasets" / "shapes", per_class=(10, 10), seed=2)
    monkeypatch.setenv("TLD_DATA_ROOT", str(root))
    return root


def app(**choices) -> AppTest:
    """A new browser session; ``choices`` are the visitor's choices as they would come in the URL."""
    at = AppTest.from_file(APP, default_timeout=120)
    for name, value in choices.items():
        at.query_params[name] = str(value)
    at.run()
    assert not at.exception, at.exception
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(page, small_demo):
    at = open_page(app(), page)
    assert not at.error, [e.value for e in at.error]


def test_first_launch_generates_the_demo_dataset():
    at = app()  # no data root chosen: the demo is generated in the workspace
    text = " ".join(m.value for m in at.markdown)
    assert "demo-shapes" in text and "5 classes" in text


def test_dataset_page_writes_the_split(small_demo):
    at = open_page(app(), "app_pages/dataset.py")
    assert "5 classes · 25 train / 5 validation / 20 test" in [s.value for s in at.subheader]
    at.button(key="ds_write").click().run()
    assert not at.exception
    lists = lists_dir_for(small_demo)
    assert len((lists / "train.txt").read_text().splitlines()) == 25
    assert len((lists / "val.txt").read_text().splitlines()) == 5
    assert len((lists / "test.txt").read_text().splitlines()) == 20
    assert any("Wrote 25 train, 5 validation and 20 test lines" in s.value for s in at.success)
    assert any(str(small_demo) in c.value for c in at.code)  # first lines are shown


def test_dataset_page_ratio_slider_changes_the_split(small_demo):
    at = open_page(app(), "app_pages/dataset.py")
    at.slider(key="ds_ratio").set_value(0.5).run()
    assert "5 classes · 20 train / 5 validation / 25 test" in [s.value for s in at.subheader]


def test_surgery_page_shows_popped_head_keys_for_resnet18(small_demo, resnet18_file):
    at = open_page(app(arch="resnet18", weights_file=resnet18_file), "app_pages/surgery.py")
    assert not at.error, [e.value for e in at.error]
    assert "fc.weight\nfc.bias" in [c.value for c in at.code]  # popped (and missing) keys
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Head"] == "fc" and metrics["Trainable parameters"] == "2,565"
    per_mode = next(d.value for d in at.dataframe if "trains when last stage + head" in d.value.columns)
    counts = per_mode.iloc[0]
    assert (counts["trains when head only"] == 2565 < counts["trains when last stage + head"]
            < counts["trains when every layer"])


def test_surgery_page_offers_efficientnet_when_no_resnet_weights(small_demo):
    from core.models.weights import hub_checkpoint_dir

    at = open_page(app(arch="resnet18"), "app_pages/surgery.py")
    warning = next(w.value for w in at.warning if "No resnet18 weights are on this machine" in w.value)
    assert str(hub_checkpoint_dir() / "resnet18-f37072fd.pth") in warning  # where it looked
    assert at.selectbox(key="sg_offline_pick").options == ["efficientnet_lite0", "efficientnet_lite1",
                                                            "efficientnet_lite2"]
    at.button(key="sg_use_lite").click().run()
    assert at.selectbox(key="sg_arch").value == "efficientnet_lite0"
    for mode in ("last_block", "all", "head"):  # every later change of another control keeps it
        at.radio(key="sg_freeze").set_value(mode).run()
        assert at.selectbox(key="sg_arch").value == "efficientnet_lite0" and not at.exception
    open_page(at, "app_pages/training.py")
    assert not any("from scratch" in w.value for w in at.warning)
    open_page(at, "app_pages/surgery.py")  # and coming back
    assert at.selectbox(key="sg_arch").value == "efficientnet_lite0"
    table = next(t.value for t in at.table if "ImageNet top-1 (%)" in t.value.columns)  # the chooser
    assert list(table["architecture"]) == list(ARCHITECTURES)
    assert table.set_index("architecture").loc["resnet18", "weights here"] == "no"
    assert table.set_index("architecture").loc["efficientnet_lite2", "weights here"] == "yes (in the app)"
    assert table["s / 100 images"].notna().all()  # the shipped reference figures


def _wait_for_run(name: str, timeout: float = 180) -> None:
    assert wait_until(lambda: read_run(runs_dir() / name).finished, timeout), "the run did not finish in time"


@pytest.mark.slow
def test_training_page_runs_a_tiny_training_and_shows_metrics(small_demo):
    at = open_page(app(), "app_pages/training.py")
    at.slider(key="tr_epochs").set_value(2).run()
    at.button(key="tr_start").click().run()
    assert not at.exception
    name = at.query_params["run"]
    _wait_for_run(name)
    at.run()
    assert not at.exception
    assert f"Run {name}" in [s.value for s in at.subheader]
    run = read_records(runs_dir() / name)
    assert [e.stage for e in run.epochs] == [1, 1, 2, 2, 2]  # the default: the staged recipe, 2 + 3 epochs
    assert f"Results on the test split (epoch {run.test.epoch})" in [s.value for s in at.subheader]
    assert any("**completed**" in (p.proto.text or "") for p in at.get("progress"))
    assert any("Device: **CPU**" in c.value for c in at.caption)
    runs_table = at.dataframe[-1].value
    assert list(runs_table["status"]) == ["completed"] and runs_table["test acc"][0].startswith(
        f"{read_run(runs_dir() / name).test.text()}")  # with its interval and its count of images


def test_prediction_page_shows_probabilities_for_an_upload(small_demo, tmp_path, lite0_file):
    from core.spec.config import TrainConfig
    from core.training.run import train

    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(small_demo),
                           epochs=5, num_workers=0, lr=0.01), runs_dir() / "run1"))
    at = open_page(app(), "app_pages/prediction.py")
    image = next((small_demo / "star").iterdir()).read_bytes()
    at.file_uploader(key="pr_upload").upload("star.jpg", image, "image/jpeg").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert sorted(table["class"]) == ["circle", "cross", "square", "star", "triangle"]  # top 5 of 5
    shown = "probability (calibrated, %)"
    assert list(table[shown]) == sorted(table[shown], reverse=True)
    assert [m.label for m in at.metric] == ["Prediction"]
    assert at.metric[0].value == "star" and table["class"][0] == "star"
    # one probability, one way: the metric and the table show the same figure, to one decimal
    assert at.metric[0].delta == f"{table[shown][0]:.1f}% probability (calibrated)"
    # calibrated by the run's temperature unless the visitor asks for the raw softmax
    assert at.toggle(key="pr_calibrated").value is True
    assert any(c.value.startswith("Calibrated probabilities, temperature ") for c in at.caption)
    calibrated = table[shown][0]
    at.toggle(key="pr_calibrated").set_value(False).run()
    assert any(c.value == "Raw probabilities." for c in at.caption)
    assert at.dataframe[0].value["probability (raw, %)"][0] != pytest.approx(calibrated)
    assert at.metric[0].delta.endswith("probability (raw)")
    at.selectbox(key="pr_tta").set_value("flip").run()
    assert not at.exception and any(c.value == "Raw probabilities, averaged over flip views." for c in at.caption)
    at.toggle(key="pr_calibrated").set_value(True).run()
    # beside the upload: its Grad-CAM overlay, for the predicted class first, then for any other on request
    assert any(c.startswith("Grad-CAM for star (") for image in at.get("image") for c in image.captions)
    explain_box = next(box for box in at.selectbox if box.label == "Explain the class")
    assert explain_box.value == "star" and sorted(explain_box.options) == sorted(table["class"])
    explain_box.set_value("circle").run()
    assert not at.exception
    captions = [c for image in at.get("image") for c in image.captions]
    assert any(c.startswith("Grad-CAM for circle (") for c in captions), captions


def test_training_page_explains_a_misclassified_image_for_both_classes(small_demo):
    from core.spec.config import TrainConfig
    from core.training.run import train

    # A random body with a frozen front: many test images end up misclassified.
    list(train(TrainConfig(arch="efficientnet_lite0", data_root=str(small_demo), epochs=1, num_workers=0),
               runs_dir() / "scratch"))
    wrong = [p for p in json.loads((runs_dir() / "scratch" / "predictions.json").read_text())
             if p["label"] != p["pred"]]
    assert wrong
    at = app()
    at.query_params["run"] = "scratch"
    at = open_page(at, "app_pages/training.py")
    why = [b for b in at.button if b.label == "Why?" and b.key.startswith("tr_why_wrong_")]
    assert len(why) == min(24, len(wrong))
    why[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    captions = [c for image in at.get("image") for c in image.captions if c.startswith("Grad-CAM for ")]
    names = sorted(p.name for p in small_demo.iterdir() if p.is_dir())
    first = wrong[0]
    assert [c.split(" (")[0] for c in captions] == [f"Grad-CAM for {names[first['label']]}",
                                                    f"Grad-CAM for {names[first['pred']]}"], captions
    # a checkpoint replaced meanwhile by a zip that looks like one to the listing's cheap check (it has a
    # data.pkl) but cannot be loaded: a message where the maps were, and the rest of the page still there
    import zipfile
    for checkpoint in (runs_dir() / "scratch").glob("checkpoint_*.pt"):
        with zipfile.ZipFile(checkpoint, "w") as archive:
            archive.writestr("archive/data.pkl", "not a pickle")
    at.run()
    [b for b in at.button if b.key.startswith("tr_why_wrong_")][0].click().run()  # a dialog, on each click
    assert not at.exception
    assert any("cannot be loaded to explain the image" in e.value for e in at.error)
    assert "All runs" in [s.value for s in at.subheader]


def test_prediction_page_without_runs_explains_what_to_do(small_demo):
    at = open_page(app(), "app_pages/prediction.py")
    assert any("No trained model yet" in i.value for i in at.info)


@pytest.mark.slow
def test_one_click_from_scratch_twin_for_comparison(small_demo, lite0_file):
    from core.spec.config import TrainConfig
    from core.training.run import train

    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(small_demo),
                           epochs=1, num_workers=0), runs_dir() / "pretrained"))
    at = app()
    at.query_params["run"] = "pretrained"
    at = open_page(at, "app_pages/training.py")
    at.button(key="tr_twin").click().run()
    twin = at.query_params["run"]
    assert twin != "pretrained"
    config = (runs_dir() / twin / "config.json").read_text()
    assert '"weights": null' in config and '"freeze": "all"' in config
    kill_worker(runs_dir() / twin)
    assert wait_until(lambda: read_run(runs_dir() / twin).finished, 30)
    at = app()
    at.query_params["run"] = "pretrained"
    at = open_page(at, "app_pages/training.py")
    assert "Pretrained vs from scratch" in [s.value for s in at.subheader]  # the ended twin's partial curves
    status = read_run(runs_dir() / twin).status
    assert at.button(key="tr_twin").label == f"Train the from-scratch twin again (the last one {status})"

    # Once a twin has finished, either run's page shows the pair instead of the button (the newest
    # completed twin: the one killed above is not it), whichever tab or command started it.
    from core.jobs.queue import comparison_twin
    from core.runs.rundir import RunDir, load_config
    pretrained = load_config(RunDir(runs_dir() / "pretrained"))
    list(train(comparison_twin(pretrained, None), runs_dir() / "scratch"))
    for shown in ("pretrained", "scratch"):
        at = app()
        at.query_params["run"] = shown
        at = open_page(at, "app_pages/training.py")
        assert not at.exception, at.exception
        assert "Pretrained vs from scratch" in [s.value for s in at.subheader]
        line = next(m.value for m in at.markdown if m.value.startswith("Same data, split, seed and settings."))
        tested = {name: read_run(runs_dir() / name).test for name in ("pretrained", "scratch")}
        assert (f"pretrained (head only, then last stage + head) **{tested['pretrained'].text()}** (completed)"
                in line), line  # the default: staged
        assert f"from scratch (every layer) **{tested['scratch'].text()}** (completed)" in line, line
        gain = next(m.value for m in at.markdown if m.value.startswith("Pretraining's gain"))
        points = 100 * (tested["pretrained"].value - tested["scratch"].value)
        assert f"{'+' if points > 0 else ''}{points:.1f} points (95% CI" in gain and "paired images" in gain, gain
        assert not any(b.key == "tr_twin" for b in at.button)


def _start_long_run() -> AppTest:
    """Start, from the Training page, a from-scratch run long enough to still be running when checked."""
    at = open_page(app(), "app_pages/training.py")
    at.toggle(key="tr_pretrained").set_value(False)
    at.radio(key="tr_recipe").set_value("single").run()  # one stage: every layer, from scratch
    at.radio(key="tr_freeze").set_value("all")
    at.slider(key="tr_epochs").set_value(50)
    at.button(key="tr_start").click().run()
    return at


@pytest.mark.slow
def test_stop_button_ends_a_running_worker(small_demo):
    at = _start_long_run()
    run = runs_dir() / at.query_params["run"]
    assert wait_until(lambda: read_run(run).epochs_done >= 1, 120)
    at.run()
    at.button(key="tr_stop").click().run()
    assert wait_until(lambda: read_run(run).finished, 60)
    assert read_run(run).status == "stopped"
    at.run()
    assert any("stopped on request" in w.value for w in at.warning)
    assert not [b for b in at.button if b.key == "tr_stop"]  # a stopped run offers no Stop


def test_dataset_page_zip_upload_becomes_the_data_root(small_demo, colour_data):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in colour_data.rglob("*.png"):
            z.write(p, p.relative_to(colour_data))
    at = open_page(app(), "app_pages/dataset.py")
    at.radio(key="ds_source").set_value("Upload a zip").run()
    at.file_uploader(key="ds_zip").upload("my colours.zip", buf.getvalue(), "application/zip").run()
    at.button(key="ds_extract").click().run()
    assert not at.exception and not at.error
    assert "2 classes · 10 train / 2 validation / 8 test" in [s.value for s in at.subheader]
    assert any("my-colours" in m.value for m in at.markdown)


def test_surgery_page_weights_upload_is_checked_and_used(small_demo, resnet18_file):
    at = open_page(app(arch="resnet18"), "app_pages/surgery.py")
    at.file_uploader(key="sg_upload").upload("resnet18_pretrain.pth", resnet18_file.read_bytes(),
                                             "application/octet-stream").run()
    at.button(key="sg_store").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    sources = next(d.value for d in at.dataframe if "status" in d.value.columns)  # after the architectures' table
    used = sources[sources["status"] == "in use"]
    assert list(used["source"]) == ["upload"]
    assert "fc.weight\nfc.bias" in [c.value for c in at.code]
    assert not any("No resnet18 weights" in w.value for w in at.warning)


def test_a_reload_reattaches_to_the_running_run(small_demo):
    name = _start_long_run().query_params["run"]
    reloaded = AppTest.from_file(APP, default_timeout=120)  # a new browser session with the same URL
    reloaded.query_params["run"] = name
    reloaded.run()
    open_page(reloaded, "app_pages/training.py")
    assert f"Run {name}" in [s.value for s in reloaded.subheader]
    assert read_run(runs_dir() / name).active  # the first session going away did not stop it
    assert [b.label for b in reloaded.button if b.key == "tr_stop"] == ["Stop"]
    kill_worker(runs_dir() / name)


def test_dataset_page_keeps_a_zips_own_train_val_split(small_demo, tmp_path):
    import io
    import zipfile

    from tests.conftest import make_colour_dataset

    make_colour_dataset(tmp_path / "hym" / "train", per_class=5)
    make_colour_dataset(tmp_path / "hym" / "val", per_class=2, seed=1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in (tmp_path / "hym").rglob("*.png"):
            z.write(p, p.relative_to(tmp_path))
    at = open_page(app(), "app_pages/dataset.py")
    at.radio(key="ds_source").set_value("Upload a zip").run()
    at.file_uploader(key="ds_zip").upload("hymenoptera.zip", buf.getvalue(), "application/zip").run()
    at.button(key="ds_extract").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "2 classes · 8 train / 2 validation / 4 test" in [s.value for s in at.subheader]
    assert any("Split given by the dataset" in i.value for i in at.info)


@pytest.mark.slow
def test_training_page_passes_schedule_and_patience_to_the_run(small_demo):
    at = open_page(app(), "app_pages/training.py")
    at.radio(key="tr_recipe").set_value("single").run()  # one stage: the schedule covers every epoch
    at.slider(key="tr_epochs").set_value(3).run()
    at.selectbox(key="tr_schedule").set_value("cosine").run()
    at.number_input(key="tr_patience").set_value(2).run()
    at.button(key="tr_start").click().run()
    name = at.query_params["run"]
    _wait_for_run(name)
    config = json.loads((runs_dir() / name / "config.json").read_text())
    assert (config["schedule"], config["patience"]) == ("cosine", 2)
    at.run()
    assert not at.exception
    lrs = [e.lr for e in read_records(runs_dir() / name).epochs]
    assert lrs[0] == 3e-3 and lrs[1] < lrs[0]  # the cosine schedule from the default rate, recorded per epoch


def test_training_page_runs_the_staged_recipe_and_shows_both_stages(small_demo):
    at = open_page(app(), "app_pages/training.py")
    assert at.radio(key="tr_recipe").value == "fine_tune"  # the default
    assert not any(r.key == "tr_freeze" for r in at.radio)  # the recipe decides what trains in each stage
    at.radio(key="tr_recipe").set_value("single").run()
    assert at.radio(key="tr_freeze").value == "head" and at.slider(key="tr_epochs").label == "Epochs"
    at.radio(key="tr_recipe").set_value("fine_tune").run()
    assert not at.exception and not any(r.key == "tr_freeze" for r in at.radio)
    assert any(c.value.startswith("Stage 1: the head, on cached features. Stage 2: the last stage") for c in at.caption)
    assert at.slider(key="tr_epochs").label == "Stage 1 epochs (head)"
    at.slider(key="tr_epochs").set_value(2).run()
    at.slider(key="tr_stage2_epochs").set_value(2).run()
    at.selectbox(key="tr_optimizer").set_value("adamw").run()
    at.button(key="tr_start").click().run()
    assert not at.exception, at.exception
    name = at.query_params["run"]
    _wait_for_run(name)
    config = json.loads((runs_dir() / name / "config.json").read_text())
    assert (config["recipe"], config["freeze"], config["epochs"], config["stage2_epochs"], config["optimizer"]) == (
        "fine_tune", "head", 2, 2, "adamw")
    at.run()
    assert not at.exception
    run = read_records(runs_dir() / name)
    assert [e.stage for e in run.epochs] == [1, 1, 2, 2]
    assert any(c.value.startswith("stage 1: head only, epochs 1–2; stage 2: last stage + head, epochs 3–4.")
               for c in at.caption)
    chosen = run.test.epoch
    stage = "stage 1: head only" if chosen <= 2 else "stage 2: last stage + head"
    assert any(f"· epoch {chosen} ({stage}), chosen on validation" in m.value for m in at.markdown)
    open_page(at, "app_pages/surgery.py")
    stages = next(t.value for t in at.dataframe if "trained on" in t.value.columns)
    assert list(stages["trains"]) == ["head only", "last stage + head"]
    assert stages["trainable parameters"][0] < stages["trainable parameters"][1]


def test_prediction_page_predicts_many_images_into_a_table_and_csv(small_demo, lite0_file, colour_data):
    import io
    import zipfile

    from core.spec.config import TrainConfig
    from core.training.run import train

    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(small_demo),
                           epochs=5, num_workers=0, lr=0.01), runs_dir() / "run1"))
    stars = sorted((small_demo / "star").iterdir())[:3]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted((small_demo / "circle").iterdir())[:2]:
            z.write(p, f"circles/{p.name}")
    at = open_page(app(), "app_pages/prediction.py")
    uploads = [(p.name, p.read_bytes(), "image/jpeg") for p in stars] + [("c.zip", buf.getvalue(), "application/zip")]
    at.file_uploader(key="pr_batch").upload(*uploads[0])
    for upload in uploads[1:]:
        at.file_uploader(key="pr_batch").upload(*upload)
    at.run()
    at.button(key="pr_batch_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert len(table) == 5 and list(table.columns) == ["path", "top_class", "probability", "topk", "error"]
    assert sum(table["top_class"] == "star") >= 2 and sum(table["top_class"] == "circle") >= 1
    circles = sorted((small_demo / "circle").iterdir())[:2]
    # The visitor's own names (not renamed copies); a zip's members by their path inside it (its one top folder,
    # "circles/", is the data root the zip unpacks to, so they show under the zip's name).
    assert sorted(table["path"]) == sorted([p.name for p in stars] + [f"c/{p.name}" for p in circles])
    assert "pr_batch_run_stop" not in [b.key for b in at.button]  # the Stop button goes with the work
    at.session_state["pr_batch_run"] = True  # what a Stop click leaves behind when it cuts the work short
    at.run()
    assert "The prediction of many images was stopped." in [i.value for i in at.info]


def test_prediction_page_scores_a_zip_of_class_folders(small_demo, lite0_file):
    import io
    import zipfile

    from core.spec.config import TrainConfig
    from core.training.run import train

    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(small_demo),
                           epochs=5, num_workers=0, lr=0.01), runs_dir() / "run1"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for shape in ("circle", "star", "square"):
            for p in sorted((small_demo / shape).iterdir())[:3]:
                z.write(p, f"new photos/{shape}/{p.name}")
        z.write(sorted((small_demo / "star").iterdir())[5], "new photos/unsorted/x.jpg")
    at = open_page(app(), "app_pages/prediction.py")
    at.file_uploader(key="pr_batch").upload("labelled.zip", buf.getvalue(), "application/zip").run()
    at.button(key="pr_batch_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    metric = next(m for m in at.metric if m.label == "Accuracy on these images")
    summary = next(c.value for c in at.caption if c.value.startswith("Accuracy on these labelled images"))
    assert metric.value in summary and "9 images)" in summary and "1 under no folder named as a class" in summary
    scores = at.dataframe[0].value
    assert list(scores["class"][:5]) == ["circle", "cross", "square", "star", "triangle"]
    assert list(scores["support"][:5]) == [3, 0, 3, 3, 0]


def test_prediction_page_offers_torchscript_and_onnx_downloads(small_demo, lite0_file):
    from core.spec.config import TrainConfig
    from core.training.run import train

    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(small_demo),
                           epochs=1, num_workers=0), runs_dir() / "run1"))
    at = open_page(app(), "app_pages/prediction.py")
    at.button(key="pr_prepare_onnx").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download model.onnx", "Download model.onnx.json"]


def test_dataset_page_previews_augmented_samples(small_demo):
    at = open_page(app(), "app_pages/dataset.py")
    at.selectbox(key="ds_aug").set_value("crop+flip").run()
    assert not at.exception and not at.error
    # a row of thumbnails per class, then the six augmented draws, each in its own column with its label
    assert len(at.get("image")) == 5 + 6
    draws = list(at.get("image"))[5:]
    assert [f"draw {i} of 6" in str(img.proto) for i, img in enumerate(draws, 1)] == [True] * 6


# ----------------------------------------------------------------------------- 2 · Check the data
def _plant_copies(root):
    """Five copies of one circle (they straddle any 60% split) and a star filed under square."""
    import shutil

    for i in range(5):
        shutil.copy(root / "circle" / "circle_000.jpg", root / "circle" / f"zz_copy{i}.jpg")
    shutil.copy(root / "star" / "star_001.jpg", root / "square" / "zz_star.jpg")


def test_check_page_finds_leaks_resplits_and_starts_a_run_without_the_suspects(small_demo):
    import json

    from core.platform.workspace import checks_dir

    _plant_copies(small_demo)
    at = open_page(app(), "app_pages/check.py")
    assert any("Press **Check the data**" in i.value for i in at.info)  # the untouched page: nothing stored yet
    at.button(key="ck_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    labels = [t.label for t in at.tabs]
    assert labels[0] == "Health" and labels[1] == "Duplicates (2)" and labels[3].startswith("Label issues (")
    assert any("Leakage" in w.value for w in at.warning)
    stored = list(checks_dir().glob("*.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text())["leaks"]

    at.button(key="ck_resplit").click().run()
    assert any("0 groups cross the split now" in s.value for s in at.success), [s.value for s in at.success]
    lists = lists_dir_for(small_demo)
    sides = {line.split("\t")[0]: name for name in ("train", "val", "test")
             for line in (lists / f"{name}.txt").read_text().splitlines()}
    assert len({sides[str(small_demo / "circle" / f"zz_copy{i}.jpg")] for i in range(5)}) == 1

    training = open_page(app(), "app_pages/training.py")  # a new session: the re-split flag is this session's
    assert training.checkbox(key="tr_keep_groups").value is False
    assert training.checkbox(key="tr_exclude_suspects").label.startswith("Leave the ")

    at = open_page(at, "app_pages/check.py")
    at.button(key="ck_train_without").click().run()
    assert not at.exception, [e.message for e in at.exception]
    cfg = json.loads((runs_dir() / at.query_params["run"] / "config.json").read_text())
    assert any(p.endswith(("zz_star.jpg", "star_001.jpg")) for p in cfg["exclude"])  # one of the two is wrong
    assert cfg["keep_together"]  # this session re-split: the run keeps the groups together


def test_relabel_and_keep_one_on_the_check_page_make_a_version_the_dataset_page_and_runs_use(small_demo):
    from app_pages.versions import key_of
    from core.data.versions import load_version
    from core.runs.listing import list_runs
    from tests.data.test_versions import folder_digest

    _plant_copies(small_demo)
    before = folder_digest(small_demo)
    at = open_page(app(), "app_pages/check.py")
    at.button(key="ck_run").click().run()
    star = str(small_demo / "square" / "zz_star.jpg")
    target = f"ck_relabel_{key_of(star)}"  # the suspect's own card
    assert at.button(key=target).label == "Relabel as star"
    at.button(key=target).click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("v1: relabel zz_star.jpg as star" in s.value for s in at.success), [s.value for s in at.success]
    assert load_version(small_demo).edits().relabel == {star: "star"}
    assert any("relabelled as star (v1)" in c.value for c in at.caption)
    keep = next(b for b in at.button if b.key and b.key.startswith("ck_keep_one_"))
    keep.click().run()
    assert load_version(small_demo).name == "v2" and len(load_version(small_demo).edits().drop) >= 1

    dataset = open_page(app(), "app_pages/dataset.py")
    assert "Dataset version" in [s.value for s in dataset.subheader]
    assert any("**v2**" in m.value for m in dataset.markdown)
    dataset.button(key="ver_undo").click().run()
    assert load_version(small_demo).name == "v3" and load_version(small_demo).edits().relabel == {star: "star"}

    training = open_page(app(), "app_pages/training.py")
    training.button(key="tr_start").click().run()
    cfg = json.loads((runs_dir() / training.query_params["run"] / "config.json").read_text())
    assert cfg["dataset_version"] == "v3" and cfg["relabel"] == [[star, "star"]]
    assert [r.config.dataset_version for r in list_runs(runs_dir())] == ["v3"]
    assert folder_digest(small_demo) == before


def test_check_page_with_a_damaged_stored_report_says_so_and_checks_again(small_demo):
    from core.platform.workspace import checks_dir

    at = open_page(app(), "app_pages/check.py")
    at.button(key="ck_run").click().run()
    stored = next(checks_dir().glob("*.json"))
    stored.write_text('{"version": 1, "heal')  # half-written
    at = open_page(app(), "app_pages/check.py")
    assert any("damaged" in w.value for w in at.warning)
    at.button(key="ck_run").click().run()
    assert not at.exception and [t.label for t in at.tabs][0] == "Health"


def test_training_results_report_scores_calibration_and_tta(small_demo, lite0_file):
    from core.spec.config import TrainConfig
    from core.training.run import train

    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(small_demo),
                           epochs=2, num_workers=0, lr=0.01, recipe="single"), runs_dir() / "r"))
    at = app()
    at.query_params["run"] = "r"
    at = open_page(at, "app_pages/training.py")
    assert not at.error, [e.value for e in at.error]
    assert "Results on the test split (epoch 2)" in [s.value for s in at.subheader]
    misclassified = "Misclassified (" + at.tabs[1].label.split("(")[1]
    assert [t.label for t in at.tabs][:6] == ["Precision, recall, F1", misclassified, "Top losses", "Least certain",
                                              "Calibration", "Test-time augmentation"]
    scores = next(d.value for d in at.dataframe if "precision" in d.value.columns)
    assert list(scores["class"]) == ["circle", "cross", "square", "star", "triangle", "macro", "weighted"]
    assert scores["support"][:5].sum() == scores["support"][5] == scores["support"][6]
    labels = [m.label for m in at.metric]
    assert {"ECE, raw", "ECE, temperature-scaled", "Temperature"} <= set(labels)
    # top losses and least certain are galleries with "Why?", as the misclassified ones
    assert any(b.key.startswith("tr_why_loss_") for b in at.button)
    assert any(b.key.startswith("tr_why_margin_") for b in at.button)
    at.button(key="tr_tta_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert {"Test accuracy with TTA", "ECE with TTA (calibrated)"} <= {m.label for m in at.metric}
    # one ECE for the run on the page: the TTA tab's "without" is the Calibration tab's figure
    scaled = next(m for m in at.metric if m.label == "ECE, temperature-scaled").value
    assert f"(without: {scaled}, as on the Calibration tab)" in next(
        m for m in at.metric if m.label == "ECE with TTA (calibrated)").delta
    at.run()  # the measurement stays for this visitor
    assert "Test accuracy with TTA" in {m.label for m in at.metric}


def test_training_page_finds_a_learning_rate_and_uses_it(small_demo):
    at = open_page(app(), "app_pages/training.py")
    at.button(key="tr_lr_find").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    use = at.button(key="tr_lr_use")
    suggested = float(use.label.removeprefix("Use "))
    assert 1e-7 < suggested < 10
    assert any(c.value.startswith("100 steps on cached features") or "diverged" in c.value for c in at.caption)
    use.click().run()
    assert not at.exception
    assert at.select_slider(key="tr_lr").value == pytest.approx(suggested)


def test_training_page_searches_the_head_and_starts_a_run_with_the_best(small_demo):
    at = open_page(app(), "app_pages/training.py")
    at.button(key="tr_tune").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    best = next(d.value for d in at.dataframe if "label_smoothing" in d.value.columns)
    assert list(best.columns) == ["lr", "weight_decay", "momentum", "epochs", "label_smoothing"]
    assert any(c.value.startswith("Best cross-validated accuracy") for c in at.caption)
    at.button(key="tr_tune_start").click().run()
    assert not at.exception
    name = at.query_params["run"]
    _wait_for_run(name)
    config = read_run(runs_dir() / name).config
    assert config.tuned_by.startswith("head search: Optuna TPE, 50 trials") and config.epochs == int(best["epochs"][0])
    at.run()
    assert any(c.value.startswith("Settings from a head search") for c in at.caption)


def test_a_stopped_run_resumes_from_its_page(small_demo, lite0_file):
    from core.spec.config import TrainConfig
    from core.spec.records import Epoch
    from core.training.run import train

    stream = train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(small_demo),
                               epochs=2, stage2_epochs=1, num_workers=0), runs_dir() / "halfway")  # the default: staged
    for record in stream:
        if isinstance(record, Epoch) and record.epoch == 1:
            break
    stream.close()
    at = app()
    at.query_params["run"] = "halfway"
    at = open_page(at, "app_pages/training.py")
    at.button(key="tr_resume").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    _wait_for_run("halfway")
    records = read_records(runs_dir() / "halfway")
    assert [(e.epoch, e.stage) for e in records.epochs] == [(1, 1), (2, 1), (3, 2)]
    assert records.final.status == "completed"
    assert [r.type for r in records.items].count("resumed") == 1
    at.run()
    assert not [b for b in at.button if b.key == "tr_resume"]  # completed: nothing to resume


def test_home_open_training_follows_the_latest_run(small_demo):
    from core.runs.create import create_run
    from core.spec.config import TrainConfig

    create_run(runs_dir() / "older", TrainConfig(data_root=str(small_demo)), queued=True)
    time.sleep(0.05)
    create_run(runs_dir() / "latest", TrainConfig(data_root=str(small_demo)), queued=True)
    at = app()
    link = next(link.proto for link in at.get("page_link") if link.proto.label == "Open Training")
    assert link.query_string == "run=latest"
    at = open_page(at, "app_pages/training.py")
    at.query_params["run"] = "latest"  # what the link's address carries
    at.run()
    assert not any("No run is being followed" in i.value for i in at.info)
    _stop_every_run()  # the page started the queued runs; this test needs none of them to train


def _stop_every_run(timeout: float = 30) -> None:
    """Kill the workers at work in this test's runs folder, also one that a killed run's worker had just started
    (a finished run starts the next queued one)."""
    from tests.conftest import _live_workers

    assert wait_until(lambda: not [kill_worker(path) for path in _live_workers(runs_dir())], timeout)


def _sixteen_suspects(folder: str) -> None:
    """A page script for AppTest: the label-issues section of a report with 16 suspects."""
    from pathlib import Path
    from types import SimpleNamespace

    from app_pages.check import render_label_issues
    from core.analysis.datacheck import LabelIssue
    from core.spec.config import Choices

    issues = [LabelIssue(str(p), "train", "blue", "red", 0.1, 0.9, 0, 1)
              for p in sorted(Path(folder).rglob("*.png"))[:16]]
    report = SimpleNamespace(too_small=[], label_issues=issues, hard_cases=[], baseline=None, notes=[],
                             classes=["blue", "red"])
    render_label_issues(report, folder, Choices())


def test_check_page_says_how_many_suspects_its_thumbnails_show(tmp_path):
    from tests.conftest import make_colour_dataset

    folder = make_colour_dataset(tmp_path / "d", per_class=8)
    at = AppTest.from_function(_sixteen_suspects, args=(str(folder),), default_timeout=60).run()
    assert not at.exception
    shown = "Thumbnails: 12 of 16 suspects (the first ones); the table below lists all 16."
    assert shown in [c.value for c in at.caption]
    assert len(at.dataframe[0].value) == 16


def test_a_map_selections_thumbnails_include_its_test_images_in_proportion():
    import pandas as pd

    from app_pages.check import _both_splits, shown_of

    picked = pd.DataFrame({"path": [f"p{i}" for i in range(211)], "split": ["train"] * 160 + ["test"] * 51})
    first = _both_splits(picked, 48)
    assert len(first) == 48 and (first["split"] == "test").sum() == 12  # 51/211 of 48
    assert _both_splits(picked.head(30), 48).equals(picked.head(30))
    assert shown_of(48, 211, "selected images", "train and test in proportion") == (
        "Thumbnails: 48 of 211 selected images (train and test in proportion); the table below lists all 211.")


def test_check_page_counts_every_image_once_validation_included(small_demo):
    """"Images" on the Health tab is train + validation + test, so it agrees with "Readable" + "Unreadable"."""
    at = open_page(app(), "app_pages/check.py")
    at.button(key="ck_run").click().run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Images"].replace(",", "")) == (int(metrics["Readable"].replace(",", ""))
                                                       + int(metrics["Unreadable"].replace(",", "")))
    # The health chart: axes titled in pixels and fitted to the images, classes in a categorical palette.
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    sizes = next(s for s in specs if "width (px)" in json.dumps(s))
    text = json.dumps(sizes)
    assert "height (px)" in text and "width, size" not in text and '"scheme": "tableau10"' in text
    domain = next(layer["encoding"]["x"]["scale"]["domain"] for layer in sizes["layer"] if "x" in layer["encoding"])
    assert domain[1] < 1000  # the demo's images are 96 px and the input 224 px: not an axis to 10,000
