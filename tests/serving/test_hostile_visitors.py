"""Hostile visitors on a shared server, each case held (the gate on a fresh server: tests/e2e/test_servers.py):
the upload cap, extreme aspect ratios, the run cap under concurrent Starts, the queue after a command-line run,
crafted links, 16-bit images in the gallery, a read-only workspace, garbage settings, NaN models; then the classes
of the same problem (numbers read from files, run names from URLs, files that claim to be something else).
"""
import errno
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.platform.errors import ConfigError, DatasetError, RunError, WeightsError
from core.platform.settings import settings
from core.platform.workspace import runs_dir
from core.runs.create import create_run
from core.runs.listing import find_run, list_runs, read_run
from core.runs.rundir import RunDir
from core.runs.status import write_status
from core.spec.config import TrainConfig
from tests.conftest import ROOT, app_test, wait_until

APP = str(ROOT / "dashboard.py")


@pytest.fixture
def lite0_run(small_root, lite0_file) -> Path:
    """A finished head-only run of the shipped EfficientNet-Lite0 on the small colour dataset."""
    from core.training.run import train

    path = runs_dir() / "finished"
    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(small_root), epochs=1,
                           num_workers=0), path))
    assert read_run(path).status == "completed"
    return path


# ============================================================================= uploads
def test_uploads_the_server_cap_is_the_largest_file_a_page_takes():
    from core.platform.settings import UPLOAD_CAP_MB

    shipped = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert shipped["server"]["maxUploadSize"] == UPLOAD_CAP_MB
    assert 528 <= UPLOAD_CAP_MB < 1024  # VGG16's ImageNet weights are 528 MB, the largest file a page takes


# ============================================================================= extreme aspect ratios
@pytest.fixture
def needle_images(tmp_path) -> list[Path]:
    """PNGs of a few hundred bytes that declare extreme shapes (60000×1 is 260 bytes)."""
    paths = []
    for w, h in ((60000, 1), (1, 60000), (4000, 1), (3, 9000)):
        path = tmp_path / "needles" / f"{w}x{h}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (w, h), (200, 30, 30)).save(path)
        paths.append(path)
    assert paths[0].stat().st_size < 1000
    return paths


@pytest.fixture
def resize_budget(monkeypatch):
    """Fail any resize asked for more than twice the output's pixels (before it allocates anything)."""
    import core.data.datasets

    real = core.data.datasets._resize_like_a_uint8_image
    asked = []

    def bounded(x, size, mode):
        asked.append(size)
        assert size[0] * size[1] <= 2 * 256 * 256, f"a resize to {size} for a {tuple(x.shape)} image"
        return real(x, size, mode)

    monkeypatch.setattr(core.data.datasets, "_resize_like_a_uint8_image", bounded)
    return asked


def test_extreme_aspect_ratios_prediction_gradcam_and_batch_are_bounded_by_the_output(needle_images, resize_budget,
                                                                                      tmp_path):
    from core.inference.predict import Predictor, predict_many
    from core.models.explain import explain
    from core.models.surgery import adapt_model

    model, _ = adapt_model("resnet18", 2, weights=None)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    predictor = Predictor.from_state_dict(tmp_path / "model.pth", arch="resnet18", classes="a,b", fold=False)
    for path in needle_images:
        probs = predictor.probabilities(path)
        assert probs.shape == (2,) and abs(float(probs.sum()) - 1) < 1e-5
        assert explain(predictor, path, 0).overlay().size == (224, 224)
    generator = predict_many(predictor, [str(p) for p in needle_images])
    with pytest.raises(StopIteration) as finished:
        while True:
            next(generator)
    assert [r.error for r in finished.value.value] == [""] * len(needle_images)
    assert len(resize_budget) >= 3 * len(needle_images)


def test_extreme_aspect_ratios_thumbnails_and_the_augmentation_preview(needle_images, resize_budget):
    from core.data.datasets import training_transform
    from core.data.images import open_image, thumbnail_jpeg
    from core.spec.archs import get_arch

    for path in needle_images:
        thumb = Image.open(__import__("io").BytesIO(thumbnail_jpeg(path, 112)))
        assert max(thumb.size) <= 112
        for preset in ("flip", "crop+flip", "letterbox+flips"):
            transform = training_transform(get_arch("resnet18").transforms(), preset)
            assert transform(open_image(path)).shape == (3, 224, 224)


def test_extreme_aspect_ratios_ordinary_photos_are_resized_exactly_as_before():
    from core.data.datasets import centre_of_long_side

    for h, w in ((375, 500), (500, 375), (224, 448), (1080, 1920)):
        x = torch.zeros(3, h, w, dtype=torch.uint8)
        assert centre_of_long_side(x) is x  # untouched up to 2:1
    assert centre_of_long_side(torch.zeros(3, 1, 60000)).shape == (3, 1, 2)
    assert centre_of_long_side(torch.zeros(3, 9001, 3)).shape == (3, 7, 3)  # centred: one pixel more, not less


def test_extreme_aspect_ratios_the_cli_predicts_a_260_byte_needle(needle_images, tmp_path):
    from core.models.surgery import adapt_model

    model, _ = adapt_model("resnet18", 2, weights=None)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    out = subprocess.run([sys.executable, "-m", "core", "predict", str(tmp_path / "model.pth"), str(needle_images[0]),
                          "--arch", "resnet18", "--classes", "a,b"], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["predictions"]) == 2


# ============================================================================= the run cap, claimed atomically
def _start_together(parent: str, barrier, results) -> None:
    """One of several processes pressing Start at the same moment (the worker process is faked: it is
    slow to report, as a real one is under load)."""
    import core.jobs.queue

    def slow_spawn(run, cache_dir):
        time.sleep(0.3)
        pid = os.getppid()  # a live process: the run holds its slot
        write_status(run, core.jobs.queue.WorkerState("starting", pid=pid,
                                                      pid_start=core.jobs.queue.process_start_id(pid)))

    core.jobs.queue._spawn = slow_spawn
    barrier.wait()
    results.put(len(core.jobs.queue.dispatch(parent)))


@pytest.mark.slow
@pytest.mark.parametrize("cap", [1, 2])
def test_run_cap_concurrent_starts_never_exceed_it(tmp_path, monkeypatch, cap):
    monkeypatch.setenv("TLD_MAX_RUNNING", str(cap))
    cfg = TrainConfig(arch="resnet18", data_root=str(tmp_path), epochs=1)
    for i in range(6):
        create_run(tmp_path / "runs" / f"run-{i}", cfg, queued=True)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(5), ctx.Queue()
    procs = [ctx.Process(target=_start_together, args=(str(tmp_path / "runs"), barrier, results)) for _ in range(5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 5
    started = sum(results.get(timeout=5) for _ in procs)
    runs = list_runs(tmp_path / "runs")
    assert started == cap
    assert sorted(r.status for r in runs) == ["queued"] * (6 - cap) + ["starting"] * cap


# ============================================================================= the queue moves without a browser
@pytest.mark.slow
def test_queue_a_command_line_run_that_ends_starts_the_queued_app_run(small_root, resnet18_file, monkeypatch,
                                                                       capsys):
    from core.cli.main import main

    monkeypatch.setenv("TLD_MAX_RUNNING", "1")
    cfg = TrainConfig(arch="resnet18", weights=str(resnet18_file), data_root=str(small_root), epochs=1,
                      num_workers=0)
    queued = create_run(runs_dir() / "queued-app-run", cfg, queued=True).path
    assert main(["train", "--data", str(small_root), "--weights", str(resnet18_file), "--epochs", "1",
                 "--num-workers", "0", "--out", str(runs_dir() / "cli-run")]) == 0
    assert read_run(queued).status != "queued"  # started as the command-line run ended, no page open
    assert wait_until(lambda: read_run(queued).finished, 180)
    assert read_run(queued).status == "completed"


# ============================================================================= crafted links and text boxes
NUL_PATH = "/x\x00y"
LONG_PATH = "/" + "a" * 6000


@pytest.mark.parametrize("bad", [NUL_PATH, LONG_PATH, "/" + "b" * 300 + "/c"])
@pytest.mark.parametrize("page", ["app_pages/home.py", "app_pages/dataset.py", "app_pages/surgery.py",
                                  "app_pages/training.py"])
@pytest.mark.slow
def test_links_with_a_nul_or_a_very_long_path_are_ignored(bad, page, small_root):
    at = app_test(page, data_root=bad, weights_file=bad, run=bad[:300])
    assert not at.error
    if page in ("app_pages/home.py", "app_pages/dataset.py"):
        assert any(str(small_root) in m.value for m in at.markdown)  # the default data root, not the link's


@pytest.mark.slow
@pytest.mark.parametrize("bad", [NUL_PATH, LONG_PATH])
def test_text_boxes_with_a_nul_or_a_very_long_path_are_messages(bad, small_root):
    at = app_test("app_pages/dataset.py")
    at.radio(key="ds_source").set_value("A folder on this machine").run()
    at.text_input(key="ds_path").input(bad).run()
    at.button(key="ds_use_path").click().run()
    assert not at.exception
    assert any("is not a usable path" in e.value for e in at.error)
    at.radio(key="ds_source").set_value("CIFAR-10").run()
    at.text_input(key="ds_cifar_path").input(bad).run()
    at.button(key="ds_cifar").click().run()
    assert not at.exception
    assert any("is not a usable path" in e.value for e in at.error)
    at = app_test("app_pages/surgery.py")
    at.text_input(key="sg_file").input(bad).run()
    assert not at.exception
    assert len(at.error) == 1 and "is not a usable path" in at.error[0].value
    assert len(at.error[0].value) < 300  # a 6,000-character path is not echoed whole


# ============================================================================= any image mode in the gallery
def test_gallery_a_misclassified_16_bit_png_is_shown(lite0_run, small_root):
    predictions = json.loads((lite0_run / "predictions.json").read_text())
    victim = Path(predictions[0]["path"])
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(victim)
    assert Image.open(victim).mode == "I;16"
    predictions[0]["pred"] = 1 - predictions[0]["label"]  # now misclassified: in the gallery
    (lite0_run / "predictions.json").write_text(json.dumps(predictions))
    with np.load(lite0_run / "test_outputs.npz") as stored:  # the report reads the logits: swap the victim's
        outputs = {key: stored[key] for key in stored.files}
    row = list(outputs["index"]).index(predictions[0]["index"])
    outputs["logits"][row] = outputs["logits"][row][::-1].copy()
    np.savez(lite0_run / "test_outputs.npz", **outputs)
    at = app_test("app_pages/training.py", run=lite0_run.name)
    assert any(t.label.startswith("Misclassified (") and t.label != "Misclassified (0)" for t in at.tabs)
    assert len(at.get("image")) >= 1


# ============================================================================= a read-only workspace
@pytest.fixture
def read_only_workspace(monkeypatch):
    """Every write under the workspace fails as on a read-only mount (root ignores chmod, so patch)."""
    workspace = str(settings().workspace)
    real_mkdir, real_mkstemp, real_mkdtemp = os.mkdir, __import__("tempfile").mkstemp, __import__("tempfile").mkdtemp

    def refuse(path):
        if str(path).startswith(workspace):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    def mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        refuse(dir or "")
        return real_mkstemp(*args, dir=dir, **kwargs)

    def mkdtemp(*args, dir=None, **kwargs):
        refuse(dir or "")
        return real_mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr("tempfile.mkstemp", mkstemp)
    monkeypatch.setattr("tempfile.mkdtemp", mkdtemp)
    return workspace


def test_read_only_workspace_the_dataset_page_says_so_and_still_shows_the_data(small_root, read_only_workspace):
    at = app_test("app_pages/dataset.py")
    at.radio(key="ds_source").set_value("Workspace datasets").run()
    assert not at.exception
    assert "2 classes · 2 train / 2 validation / 4 test" in [s.value for s in at.subheader]
    assert any("is not writable" in c.value and read_only_workspace in c.value for c in at.caption)
    at.button(key="ds_write").click().run()
    assert not at.exception
    assert any("could not write the list files" in e.value and "is not writable" in e.value for e in at.error)


def test_read_only_workspace_start_is_a_message_and_prediction_still_works(small_root, lite0_run, read_only_workspace):
    at = app_test("app_pages/training.py")
    at.button(key="tr_start").click().run()
    assert not at.exception
    message = [e.value for e in at.error if "could not start a run" in e.value]
    assert message and read_only_workspace in message[0] and "prediction still works" in message[0]
    at.switch_page("app_pages/prediction.py").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="pr_run").value == lite0_run.name


def test_read_only_workspace_and_no_demo_yet_home_says_what_still_works(read_only_workspace):
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    assert any("could not generate the demo dataset" in e.value and "is not writable" in e.value for e in at.error)


# ============================================================================= garbage settings
@pytest.mark.parametrize("variable, value", [
    ("TLD_MAX_RUNNING", "abc"), ("TLD_MAX_RUNNING", "-1"), ("TLD_MAX_RUNNING", "2.5"), ("TLD_MAX_IMAGE_PIXELS", "inf"),
    ("TLD_MAX_IMAGE_PIXELS", "1e999"), ("TLD_DOWNLOAD_TIMEOUT", "nan"), ("TLD_DOWNLOAD_TIMEOUT", "0"),
    ("TLD_FEATURE_CACHE_BYTES", "-5"), ("TLD_MAX_ZIP_BYTES", "1e30"), ("TLD_MAX_IMAGE_BYTES", "5 MB")])
def test_settings_a_garbage_value_is_one_message_naming_it(variable, value, monkeypatch):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        settings()
    assert str(caught.value).startswith(f"{variable}={value!r} is not allowed: give ")


def test_settings_every_page_names_the_variable_instead_of_crashing(monkeypatch, small_root):
    monkeypatch.setenv("TLD_MAX_RUNNING", "nan")
    for page in (None, "app_pages/training.py"):
        at = AppTest.from_file(APP, default_timeout=120).run()
        if page:
            at.switch_page(page).run()
        assert not at.exception
        assert [e.value for e in at.error] == ["This app cannot start: TLD_MAX_RUNNING='nan' is not allowed: give a "
                                               "whole number from 1 to 1,024. Whoever runs the server must change "
                                               "it and restart."]


def test_settings_the_command_line_names_the_variable(monkeypatch, small_root, capsys):
    from core.cli.main import main
    from core.models.surgery import adapt_model

    monkeypatch.setenv("TLD_MAX_IMAGE_PIXELS", "1e999")
    image = next(small_root.glob("*/*.png"))
    model, _ = adapt_model("resnet18", 2, weights=None)
    torch.save(model.state_dict(), small_root.parent / "m.pth")
    capsys.readouterr()
    assert main(["predict", str(small_root.parent / "m.pth"), str(image), "--arch", "resnet18",
                 "--classes", "a,b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TLD_MAX_IMAGE_PIXELS='1e999' is not allowed") and err.count("\n") == 1


# ============================================================================= NaN models
def _nan_state_dict(path: Path) -> Path:
    from core.models.surgery import adapt_model

    model, _ = adapt_model("resnet18", 2, weights=None)
    state = model.state_dict()
    state["fc.weight"][0, 0] = float("nan")
    torch.save(state, path)
    return path


def test_nan_a_state_dict_with_nan_is_refused_at_load(tmp_path, capsys):
    from core.cli.main import main
    from core.inference.predict import Predictor
    from core.models.weights import load_state_dict_file

    path = _nan_state_dict(tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match=r"not finite numbers \(NaN or infinity\) in 1 tensor\(s\) \(fc.weight\)"):
        load_state_dict_file(path)
    with pytest.raises(WeightsError, match="not finite"):
        Predictor.from_state_dict(path, arch="resnet18", classes="a,b")
    image = tmp_path / "i.png"
    Image.new("RGB", (64, 64)).save(image)
    assert main(["predict", str(path), str(image), "--arch", "resnet18", "--classes", "a,b"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "not finite" in out.err  # no JSON with NaN in it


def test_nan_a_run_whose_weights_went_nan_neither_predicts_nor_exports(lite0_run):
    from core.inference.export import export
    from core.inference.predict import Predictor

    checkpoint = RunDir(lite0_run).checkpoint()
    ckpt = torch.load(checkpoint, weights_only=True)
    key = next(k for k in ckpt["model"] if k.startswith("_fc"))
    ckpt["model"][key].fill_(float("inf"))
    torch.save(ckpt, checkpoint)
    with pytest.raises(RunError, match="not finite"):
        Predictor.load(lite0_run)
    for fmt in ("torchscript", "onnx"):
        with pytest.raises(RunError, match="not finite"):
            export(lite0_run, fmt)
        assert not list(lite0_run.glob("model_*.pt")) + list(lite0_run.glob("*.onnx"))


def test_nan_outputs_are_refused_at_prediction(tmp_path):
    from core.inference.predict import Predictor
    from core.models.surgery import adapt_model

    model, _ = adapt_model("resnet18", 2, weights=None)
    state = model.state_dict()
    state["fc.weight"].fill_(3e38)  # finite weights whose outputs overflow
    torch.save(state, tmp_path / "huge.pth")
    predictor = Predictor.from_state_dict(tmp_path / "huge.pth", arch="resnet18", classes="a,b", fold=False)
    with pytest.raises(RunError, match="not finite numbers"):
        predictor.probabilities(Image.new("RGB", (64, 64), (255, 255, 255)))


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--momentum", "nan"),
                                         ("--epochs", "1e999"), ("--batch-size", "100000000")])
def test_nan_non_finite_or_huge_hyperparameters_are_refused(flag, value, small_root, capsys):
    from core.cli.main import main

    try:
        code = main(["train", "--data", str(small_root), "--weights", "none", flag, value])
    except SystemExit as exc:  # argparse's own refusals exit from inside main
        code = exc.code
    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not runs_dir().exists() or not list(runs_dir().iterdir())


# password guessing: tests/serving/test_gate.py (per client, per address, across the server; the login route)


# leftovers of killed writes: tests/runs/test_readers_never_write.py (readers never delete; `runs clean` does)


# ============================================================================= classes of the same problem
@pytest.mark.parametrize("line, message", [
    ("a.png\t100000000000000000000", "label 100000000000000000000 is outside 0..99999"),
    ("a.png\t-1", "label -1 is outside"),
    ("a.png\t²", "expected 'path<TAB>label'"),
])
def test_numbers_from_files_a_list_label_is_range_checked_before_it_sizes_anything(tmp_path, line, message):
    from core.data.split import read_split

    (tmp_path / "train.txt").write_text(line + "\n")
    (tmp_path / "test.txt").write_text("")
    with pytest.raises(DatasetError, match=message):
        read_split(tmp_path)


def test_numbers_from_files_a_bom_and_crlf_lose_no_line(tmp_path):
    from core.data.split import read_split

    (tmp_path / "train.txt").write_bytes("\ufeffdata/ants/a.jpg\t0\r\ndata/bees/b.jpg\t1\r\n".encode("utf-8"))
    (tmp_path / "test.txt").write_bytes(b"data/ants/c.jpg\t0\r\n")
    (tmp_path / "classes.json").write_bytes('\ufeff{"classes": ["ants", "bees"]}'.encode("utf-8"))
    split = read_split(tmp_path)
    assert split.train == [("data/ants/a.jpg", 0), ("data/bees/b.jpg", 1)] and split.classes == ["ants", "bees"]


def _cifar_archive(tmp_path: Path, labels, names=None) -> Path:
    import io
    import pickle
    import tarfile

    names = names or [f"c{i}".encode() for i in range(10)]
    batch = pickle.dumps({b"data": np.zeros((len(labels), 3072), np.uint8), b"labels": labels,
                          b"filenames": [b"../../evil.png"] * len(labels)})
    meta = pickle.dumps({b"label_names": names})
    path = tmp_path / "cifar.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [(f"cifar-10-batches-py/data_batch_{i}", batch) for i in range(1, 6)] + [
                ("cifar-10-batches-py/test_batch", batch), ("cifar-10-batches-py/batches.meta", meta)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("labels, names, message", [
    ([0, 10**20], None, "labels that are not whole numbers|labels outside 0..9"),
    ([0, -1], None, "labels outside 0..9"),
    ([0, 1], [b"../up"] + [f"c{i}".encode() for i in range(9)], "cannot be folder names"),
])
def test_numbers_from_files_a_cifar_archive_is_checked_before_it_writes(tmp_path, labels, names, message):
    from core.data.cifar import import_cifar10

    with pytest.raises(DatasetError, match=message):
        import_cifar10(_cifar_archive(tmp_path, labels, names), tmp_path / "out")
    assert not (tmp_path / "up").exists()


def test_numbers_from_files_cifar_file_names_never_leave_their_class_folder(tmp_path):
    from core.data.cifar import import_cifar10

    root = import_cifar10(_cifar_archive(tmp_path, [0, 1]), tmp_path / "out")
    assert not (tmp_path / "evil.png").exists()
    assert sorted(p.name for p in (root / "train" / "c0").iterdir()) == ["evil.png"]


def test_numbers_from_files_predictions_that_index_past_the_classes_make_the_run_damaged(lite0_run):
    predictions = json.loads((lite0_run / "predictions.json").read_text())
    predictions[0]["pred"] = 10**20
    (lite0_run / "predictions.json").write_text(json.dumps(predictions))
    info = read_run(lite0_run)
    assert info.status == "damaged" and info.reason.startswith("predictions.json")
    at = app_test("app_pages/training.py", run=lite0_run.name)
    assert any("damaged" in e.value for e in at.error)


def test_numbers_from_files_an_epochs_confusion_matrix_must_fit_the_classes(lite0_run):
    lines = (lite0_run / "metrics.jsonl").read_text().splitlines()
    epoch = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "epoch")
    record = json.loads(lines[epoch])
    record["confusion"] = [[0] * 5 for _ in range(5)]
    lines[epoch] = json.dumps(record)
    (lite0_run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    info = read_run(lite0_run)
    assert info.status == "damaged" and "per-class figures are not for 2 classes" in info.reason
    app_test("app_pages/training.py", run=lite0_run.name)  # a message, no crash


def test_run_names_from_urls_resolve_inside_the_workspace(lite0_run, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "config.json").write_text("{}")
    (runs_dir() / "link-out").symlink_to(elsewhere)
    assert find_run(runs_dir(), lite0_run.name) == lite0_run
    for name in ("link-out", "../runs/" + lite0_run.name, ".hidden", "x\x00", "a" * 300, "", lite0_run.name + "/"):
        assert find_run(runs_dir(), name) is None, name
    at = app_test("app_pages/training.py", run="link-out")
    assert "Run link-out" not in [s.value for s in at.subheader]


def test_files_that_claim_to_be_checkpoints_are_named_for_what_they_are(lite0_run):
    import zipfile

    best = RunDir(lite0_run).best
    best.unlink()
    with zipfile.ZipFile(best, "w") as archive:
        archive.writestr("holiday.jpg", b"not a model")
    info = read_run(lite0_run)
    assert info.status == "damaged"
    assert info.reason == ("checkpoint_best.pt: it is a zip archive of 1 file(s) ('holiday.jpg'), "
                           "not a PyTorch checkpoint")
    at = app_test("app_pages/prediction.py")
    assert not at.exception
