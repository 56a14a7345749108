"""Bad input and faults: one test per case. Each asserts the message the user sees and that
nothing the user had is lost or corrupted."""
import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.data.images import open_image
from core.data.split import read_split, split_dataset, write_split
from core.data.uploads import check_image_upload, extract_zip
from core.jobs.queue import kill_worker, start_worker
from core.models.surgery import adapt_model
from core.platform.errors import ConfigError, DatasetError, ImageError, UploadError, WeightsError
from core.platform.io import atomic_torch_save
from core.platform.workspace import check_allowed, runs_dir
from core.runs.create import new_run_dir
from core.runs.files import read_records
from core.runs.listing import read_run
from core.runs.rundir import RunDir
from core.runs.status import read_status
from core.spec.config import TrainConfig
from core.spec.records import Epoch
from core.training.run import train
from tests.conftest import ROOT, make_colour_dataset, wait_until


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _png_with_size(width: int, height: int) -> bytes:
    """A valid PNG header declaring width×height (the pixel data is never reached)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


# ============================================================================= images
def test_image_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    with pytest.raises(ImageError, match="corrupt|truncated|cannot|not an image"):
        open_image(path)


def test_image_truncated_jpeg(tmp_path):
    data = _jpeg_bytes(Image.effect_noise((200, 200), 60).convert("RGB"))
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="could not be decoded.*truncated or corrupt"):
        open_image(path)
    assert path.stat().st_size == len(data) // 2  # the user's file is untouched


def test_image_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    with pytest.raises(ImageError, match="not an image PIL can read"):
        open_image(path)


def test_image_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture")
    with pytest.raises(ImageError, match="not an image PIL can read"):
        open_image(path)


def test_image_grayscale():
    img = open_image(Image.new("L", (8, 8), 77))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (77, 77, 77)


def test_image_rgba_and_palette_with_transparency():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert open_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.info["transparency"] = 0
    buf = io.BytesIO()
    palette.save(buf, format="PNG", transparency=0)
    img = open_image(buf.getvalue())
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (10, 200, 30)


def test_image_16_bit_png(tmp_path):
    values = np.full((4, 4), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    r, g, b = open_image(path).getpixel((0, 0))
    assert 120 <= r <= 135 and r == g == b  # not clipped to white


def test_image_cmyk_jpeg():
    data = _jpeg_bytes(Image.new("CMYK", (8, 8), (0, 255, 255, 0)))  # red in CMYK
    r, g, b = open_image(data).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_image_exif_rotated_photo_is_used_upright(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert Image.open(path).size == (40, 20)
    assert open_image(path).size == (20, 40)


@pytest.mark.parametrize("width, height", [(10_000, 10_000), (100_000, 100_000)])
def test_image_decompression_bomb_refused_before_decoding(width, height, monkeypatch):
    data = _png_with_size(width, height)

    def never(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", never)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", never)
    with pytest.raises(ImageError, match="declares|more pixels than PIL will decode"):
        open_image(data)


def test_image_one_pixel(colour_data, resnet18_file, tmp_path):
    list(train(TrainConfig(arch="resnet18", weights=str(resnet18_file), data_root=str(colour_data), epochs=1,
                           num_workers=0), tmp_path / "run"))
    from core.inference.predict import Predictor

    probs = Predictor.load(tmp_path / "run").probabilities(Image.new("RGB", (1, 1), (200, 10, 10)))
    assert probs.shape == (2,) and torch.isfinite(probs).all()  # resized to 224×224 like any other image


# ============================================================================= split
def test_split_empty_class_folder(colour_data):
    (colour_data / "green").mkdir()
    split = split_dataset(colour_data)
    assert split.classes == ["blue", "red"]
    assert "class folder 'green' has no images and was left out" in split.warnings


def test_split_class_with_one_image(tmp_path):
    root = make_colour_dataset(tmp_path / "d", per_class=6)
    make_colour_dataset(tmp_path / "g", per_class=1, classes=("green",))
    (tmp_path / "g" / "green").rename(root / "green")
    split = split_dataset(root)
    green = next(c for c in split.counts() if c.name == "green")
    assert (green.train, green.test) == (1, 0)
    assert any("'green' has 1 image: too few for both a train and a test image" in w for w in split.warnings)


def test_split_only_one_class(tmp_path):
    root = make_colour_dataset(tmp_path / "d", per_class=3, classes=("red",))
    with pytest.raises(DatasetError, match="needs at least two class folders that contain images, found only 'red'"):
        split_dataset(root)


def test_split_files_directly_under_root(colour_data):
    (colour_data / "stray.png").write_bytes((colour_data / "red" / "red_00.png").read_bytes())
    split = split_dataset(colour_data)
    assert [(Path(s.path).name, s.reason) for s in split.skipped] == [
        ("stray.png", "file directly under the root, not inside a class folder")]


def test_split_paths_with_spaces_and_non_ascii(tmp_path):
    root = make_colour_dataset(tmp_path / "mes données", per_class=4, classes=("blue", "red"))
    (root / "red").rename(root / "rouge foncé")
    (root / "blue" / "blue_00.png").rename(root / "blue" / "bleu ciel é 01.png")
    split = split_dataset(root, val_ratio=0.25)
    back = read_split(write_split(split, tmp_path / "lists"))
    assert back.classes == ["blue", "rouge foncé"]
    assert back.train + back.val + back.test == split.train + split.val + split.test
    assert all(Path(p).is_file() for p, _ in back.train + back.val + back.test)


def test_split_path_with_tab_or_newline_is_reported(colour_data):
    src = (colour_data / "red" / "red_00.png").read_bytes()
    (colour_data / "red" / "with\ttab.png").write_bytes(src)
    (colour_data / "red" / "with\nnewline.png").write_bytes(src)
    split = split_dataset(colour_data)
    reasons = [s.reason for s in split.skipped]
    assert len(reasons) == 2 and all("tab or newline" in r for r in reasons)
    assert all("\t" not in p and "\n" not in p for p, _ in split.train + split.val + split.test)


def test_split_nested_folders(colour_data):
    deep = colour_data / "blue" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "deep.png").write_bytes((colour_data / "blue" / "blue_00.png").read_bytes())
    split = split_dataset(colour_data)
    assert any(p.endswith("a/b/deep.png") for p, _ in split.train + split.val + split.test)


def test_split_symlink_loop(colour_data):
    os.symlink(colour_data / "red", colour_data / "red" / "loop")
    split = split_dataset(colour_data)  # returns (pytest-timeout fails a hang)
    assert any(s.path.endswith("loop") and "not followed" in s.reason for s in split.skipped)


# ============================================================================= weights
def test_weights_for_another_architecture(tmp_path):
    from torchvision.models import resnet50

    path = tmp_path / "resnet50.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    with pytest.raises(WeightsError) as err:
        adapt_model("resnet18", 2, weights=path)
    message = str(err.value)
    assert "does not fit resnet18" in message
    assert "layer1.0.conv1.weight: file (64, 64, 1, 1) vs model (64, 64, 3, 3)" in message


def test_weights_truncated_or_corrupt(resnet18_file, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(resnet18_file.read_bytes()[:100_000])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(5000))
    for path in (truncated, garbage):
        with pytest.raises(WeightsError, match="could not be read|not a readable PyTorch weights file"):
            adapt_model("resnet18", 2, weights=path)


def test_weights_object_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2), torch.ones(2)], path)
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        adapt_model("resnet18", 2, weights=path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weights_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"fc.weight": _RunsCode(marker)}, f)
    torch.save({"payload": _RunsCode(marker)}, tmp_path / "evil2.pth")
    for p in (path, tmp_path / "evil2.pth"):
        with pytest.raises(WeightsError, match="refused: loading it would call|not a readable PyTorch weights file"):
            adapt_model("resnet18", 2, weights=p)
    assert not marker.exists()


def test_weights_wrapped_state_dict_and_module_prefix(resnet18_file, tmp_path):
    state = torch.load(resnet18_file, weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    model, report = adapt_model("resnet18", 2, weights=wrapped)
    assert any("'state_dict' entry" in n for n in report.notes)
    assert any("'module.' prefix" in n for n in report.notes)
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])


# ============================================================================= uploads
def _app_with_run(small_root, lite0_file, monkeypatch):
    monkeypatch.setenv("TLD_DATA_ROOT", str(small_root))
    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(small_root),
                           epochs=15, lr=0.05, num_workers=0), runs_dir() / "run1"))
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.run()
    at.switch_page("app_pages/prediction.py").run()
    return at


def test_upload_non_image(tmp_path, lite0_file, monkeypatch):
    root = make_colour_dataset(tmp_path / "workspace" / "datasets" / "c", per_class=4)
    at = _app_with_run(root, lite0_file, monkeypatch)
    at.file_uploader(key="pr_upload").upload("fake.png", b"%PDF-1.4 not an image", "image/png").run()
    assert not at.exception
    assert ["the uploaded image is not an image PIL can read (empty, corrupt, or another kind of file)"] == \
        [e.value for e in at.error]
    # the app keeps working: a real image afterwards is predicted
    at.file_uploader(key="pr_upload").upload("red.png", (root / "red" / "red_00.png").read_bytes(), "image/png").run()
    assert not at.error and at.metric[0].value == "red"


def test_upload_image_over_the_size_cap(tmp_path, lite0_file, monkeypatch):

    monkeypatch.setenv("TLD_MAX_IMAGE_BYTES", "1000")
    with pytest.raises(UploadError, match="more than the limit"):
        check_image_upload(b"x" * 2000, "big.jpg")
    root = make_colour_dataset(tmp_path / "workspace" / "datasets" / "c", per_class=4)
    at = _app_with_run(root, lite0_file, monkeypatch)
    at.file_uploader(key="pr_upload").upload("big.png", (root / "red" / "red_00.png").read_bytes() * 20,
                                             "image/png").run()
    assert any("more than the limit" in e.value for e in at.error)


@pytest.mark.parametrize("evil", ["../escape.png", "/abs/escape.png", "cls/../../escape.png"])
def test_upload_zip_slip(tmp_path, evil):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("good/a.png", b"x")
        z.writestr(evil, b"x")
    with pytest.raises(UploadError, match="points outside the extraction folder"):
        extract_zip(buf.getvalue(), tmp_path / "datasets", "evil.zip")
    assert not (tmp_path / "escape.png").exists()
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())


def test_upload_zip_bomb(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("cls/zeros.png", b"\0" * (50 * 1024**2))
    assert len(buf.getvalue()) < 200_000
    with pytest.raises(UploadError, match="zip bomb"):
        extract_zip(buf.getvalue(), tmp_path / "datasets", "bomb.zip")
    with pytest.raises(UploadError, match="more than the limit"):
        extract_zip(buf.getvalue(), tmp_path / "datasets", "bomb.zip", max_total=10 * 1024**2, max_ratio=10**6)
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())


def test_upload_zip_of_class_folders_is_extracted(tmp_path, colour_data):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in colour_data.rglob("*.png"):
            z.write(p, f"colours/{p.relative_to(colour_data)}")
    (tmp_path / "datasets" / "colours").mkdir(parents=True)  # an existing dataset must not be overwritten
    root = extract_zip(buf.getvalue(), tmp_path / "datasets", "colours.zip")
    assert root.name == "colours-2" and split_dataset(root).classes == ["blue", "red"]


# ============================================================================= training
class NanLoss(torch.nn.CrossEntropyLoss):
    """A training that diverged: every loss is NaN (a learning rate as high as 1e30 is refused up front now)."""

    def forward(self, logits, target):
        return super().forward(logits, target) * float("nan")


def test_training_nan_loss(colour_data, resnet18_file, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="lr must be a number from 1e-08 to 10, got 1e[+]30"):
        TrainConfig(arch="resnet18", data_root=str(colour_data), lr=1e30)
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", NanLoss)
    records = list(train(TrainConfig(arch="resnet18", weights=str(resnet18_file), data_root=str(colour_data),
                                     freeze="all", num_workers=0), tmp_path / "run"))
    final = records[-1]
    assert final.status == "failed"
    assert final.reason.startswith("the loss became nan") or "the loss became inf" in final.reason
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_training_stop_mid_epoch_keeps_the_last_good_checkpoint(colour_data, resnet18_file, tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = TrainConfig(arch="resnet18", weights=str(resnet18_file), data_root=str(colour_data), epochs=3,
                      batch_size=2, log_every=1, feature_cache=False, num_workers=0)
    stream = train(cfg, run.path)
    for record in stream:
        if record.type == "batch" and record.epoch == 2:
            break  # in the middle of epoch 2
    good = run.last.read_bytes()
    run.stop_flag.touch()
    final = list(stream)[-1]
    assert final.status == "stopped" and final.epochs_completed == 1
    assert run.last.read_bytes() == good
    assert torch.load(run.last, weights_only=True)["epoch"] == 1


def test_training_worker_killed(tmp_path, lite0_file):
    root = make_colour_dataset(tmp_path / "workspace" / "datasets" / "c", per_class=30)
    cfg = TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(root), epochs=50,
                      freeze="all", num_workers=0)
    run = start_worker(cfg, new_run_dir(runs_dir()))
    assert wait_until(lambda: (run / "metrics.jsonl").exists(), 120)
    assert read_status(RunDir(run))[0] == "running"
    kill_worker(run)
    assert wait_until(lambda: read_status(RunDir(run))[0] == "failed", 20)
    assert "ended without finishing" in read_status(RunDir(run))[1]
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.query_params["run"] = run.name
    at.run()
    at.switch_page("app_pages/training.py").run()
    assert not at.exception
    assert any("The run failed: the training process ended without finishing" in e.value for e in at.error)


@pytest.mark.slow
def test_training_two_runs_at_once(colour_data, resnet18_file, tmp_path):
    dirs = {new_run_dir(runs_dir(), "same") for _ in range(5)}
    assert len(dirs) == 5
    cfg = TrainConfig(arch="resnet18", weights=str(resnet18_file), data_root=str(colour_data), epochs=1,
                      num_workers=0)
    a, b = (start_worker(cfg, new_run_dir(runs_dir())) for _ in range(2))
    assert a != b
    assert wait_until(lambda: read_run(a).finished and read_run(b).finished, 180)
    for run in (a, b):
        info = read_run(run)
        assert info.status == "completed", info.reason
        assert [r.type for r in read_records(run).items].count("start") == 1


def test_training_checkpoint_write_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    atomic_torch_save({"epoch": 1}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]  # no temporary file left


def test_training_list_with_an_unreadable_image(colour_data, resnet18_file, tmp_path):
    bad = colour_data / "red" / "red_03.png"
    bad.write_text("not an image")
    # Split from the folders: the header check leaves the file out of the lists, so nothing is skipped later.
    records = list(train(TrainConfig(arch="resnet18", weights=str(resnet18_file), data_root=str(colour_data),
                                     epochs=1, num_workers=0), tmp_path / "from-root"))
    assert records[-1].status == "completed" and records[-1].skipped_images == 0
    lists = (tmp_path / "from-root" / "lists")
    assert str(bad) not in (lists / "train.txt").read_text() + (lists / "test.txt").read_text()
    # List files written elsewhere may still name it: the trainer skips it, on both feature paths.
    (lists / "train.txt").write_text((lists / "train.txt").read_text() + f"{bad}\t1\n")
    for cache in (True, False):
        records = list(train(TrainConfig(arch="resnet18", weights=str(resnet18_file), lists_dir=str(lists),
                                         epochs=2, num_workers=0, feature_cache=cache), tmp_path / f"run{cache}"))
        final = records[-1]
        assert final.status == "completed", final.reason
        assert final.skipped_images == 1
        assert all(r.skipped_images == 1 for r in records if isinstance(r, Epoch))


# ============================================================================= server
def test_server_data_root_outside_allowed_roots(tmp_path, monkeypatch):
    monkeypatch.delenv("TLD_ALLOWED_ROOTS")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="outside the folders this app may read"):
        check_allowed("/etc")
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.run()
    at.switch_page("app_pages/dataset.py").run()
    at.radio(key="ds_source").set_value("A folder on this machine").run()
    at.text_input(key="ds_path").input("/etc").run()
    at.button(key="ds_use_path").click().run()
    assert any("'/etc' is outside the folders this app may read" in e.value for e in at.error)
    assert "demo-shapes" in " ".join(m.value for m in at.markdown)  # the current dataset is unchanged
    assert at.session_state["choices"]["data_root"] is None


def test_server_xsrf_on_and_upload_cap_set():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["enableXsrfProtection"] is True
    assert 0 < config["server"]["maxUploadSize"] <= 1024
    assert config["browser"]["gatherUsageStats"] is False
