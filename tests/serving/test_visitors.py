"""Safe to serve: each case a probe of the app found, named after what failed, now a clear message."""
import errno
import io
import multiprocessing
import os
import zipfile
from pathlib import Path

import pytest
import tomllib
import torch
from streamlit.testing.v1 import AppTest

from core.data.split import split_dataset
from core.data.uploads import extract_zip
from core.jobs.queue import cancel, dispatch, kill_worker, launch, queue
from core.platform.errors import UploadError, WeightsError
from core.platform.settings import settings
from core.platform.workspace import runs_dir
from core.runs.listing import list_runs, read_run
from core.spec.config import TrainConfig
from tests.conftest import ROOT, app_test, make_colour_dataset, wait_until

APP = str(ROOT / "dashboard.py")


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ============================================================================= exposure
def test_exposure_a_page_that_raises_shows_no_traceback():
    import streamlit.config

    shipped = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert shipped["client"]["showErrorDetails"] == "none"
    before = streamlit.config.get_option("client.showErrorDetails")
    streamlit.config.set_option("client.showErrorDetails", shipped["client"]["showErrorDetails"])
    try:
        def page():
            raise RuntimeError("secret detail at /srv/app/core/training/train.py")
        at = AppTest.from_function(page).run()
    finally:
        streamlit.config.set_option("client.showErrorDetails", before)
    assert len(at.exception) == 1
    shown = at.exception[0]
    assert "secret detail" not in shown.message and "/srv/app" not in shown.message
    assert not shown.stack_trace


@pytest.mark.parametrize("typed", ["/etc/shadow", "/no/such/file.pth", "/proc/1/environ"])
def test_exposure_the_weights_box_refuses_server_paths_alike(typed, small_root):
    at = app_test("app_pages/surgery.py")
    at.text_input(key="sg_file").input(typed).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors == [f"'{typed}' is outside the folders this app may read "
                      f"({', '.join(map(str, settings().allowed_roots))}); "
                      "use a file inside them, or upload it below."]
    sources = next(d.value for d in at.dataframe if "where" in d.value.columns)
    assert typed not in " ".join(sources["where"])  # never tried, never listed
    assert at.session_state["choices"]["weights_file"] == ""


def test_exposure_three_start_clicks_run_one_and_queue_two(small_root, lite0_file):
    at = app_test("app_pages/training.py")
    at.toggle(key="tr_pretrained").set_value(False).run()
    at.radio(key="tr_recipe").set_value("single").run()
    at.radio(key="tr_freeze").set_value("all").run()
    at.slider(key="tr_epochs").set_value(50).run()
    names = []
    for _ in range(3):
        at.button(key="tr_start").click().run()
        names.append(at.query_params["run"])
    try:
        statuses = {r.name: r.status for r in list_runs(runs_dir())}
        assert sorted(statuses.values()) == ["queued", "queued", "starting"] or \
            sorted(statuses.values()) == ["queued", "queued", "running"], statuses
        assert [r.name for r in queue(list_runs(runs_dir()))] == names[1:]
        at.run()  # following the last one: queued, position 2 of 2, with Cancel
        assert any("Queued: position 2 of 2" in i.value for i in at.info)
        at.button(key="tr_cancel").click().run()
        assert read_run(runs_dir() / names[2]).status == "stopped"
        assert read_run(runs_dir() / names[2]).reason == "cancelled before it started"
        assert not cancel(runs_dir() / names[2])  # once only
        kill_worker(runs_dir() / names[0])
        assert wait_until(lambda: read_run(runs_dir() / names[0]).status == "failed", 20)
        assert dispatch(runs_dir()) == [runs_dir() / names[1]]  # the slot is free: the next one starts
        assert read_run(runs_dir() / names[1]).status in ("starting", "running")
    finally:
        for name in names:
            kill_worker(runs_dir() / name)


@pytest.mark.slow
def test_exposure_queued_runs_start_when_a_run_ends_without_a_browser(colour_data, resnet18_file):
    cfg = TrainConfig(arch="resnet18", weights=str(resnet18_file), data_root=str(colour_data), epochs=1,
                      num_workers=0)
    first, second = launch(cfg), launch(cfg)
    assert read_run(second).status == "queued"
    assert wait_until(lambda: read_run(second).finished, 180)  # the first worker started it as it ended
    assert read_run(first).status == read_run(second).status == "completed"


# ============================================================================= links and the allowed roots
@pytest.fixture
def outside(tmp_path_factory):
    """Images in a folder the app may not read."""
    return make_colour_dataset(tmp_path_factory.mktemp("elsewhere") / "secret", per_class=3, classes=("green",))


def test_links_a_class_folder_linking_outside_is_skipped(small_root, outside):
    (small_root / "green").symlink_to(outside / "green")
    split = split_dataset(small_root, allowed_roots=settings().allowed_roots)
    assert split.classes == ["blue", "red"]
    assert [(s.path, s.reason) for s in split.skipped] == [(str(small_root / "green"),
                                                            "links outside the allowed folders")]
    at = app_test("app_pages/dataset.py")
    assert "2 classes · 2 train / 2 validation / 4 test" in [s.value for s in at.subheader]
    assert str(outside) not in str([e.value for e in at.dataframe])  # the target is never listed


def test_links_a_link_to_etc_is_one_skipped_entry(small_root):
    (small_root / "etc").symlink_to("/etc")
    at = app_test("app_pages/dataset.py")
    skipped = at.dataframe[-1].value
    assert list(skipped["path"]) == [str(small_root / "etc")]
    assert list(skipped["reason"]) == ["links outside the allowed folders"]


def test_links_a_dangling_image_link_is_skipped_and_the_page_renders(small_root):
    (small_root / "red" / "x.jpg").symlink_to(small_root / "red" / "gone.jpg")
    at = app_test("app_pages/dataset.py")
    skipped = at.dataframe[-1].value
    assert list(skipped["reason"]) == ["broken link: what it points to does not exist"]
    assert not at.error


def test_links_an_image_link_inside_the_roots_is_used(small_root):
    (small_root / "red" / "again.png").symlink_to(small_root / "red" / "red_00.png")
    split = split_dataset(small_root, allowed_roots=(small_root,))
    assert str(small_root / "red" / "again.png") in [p for p, _ in split.train + split.val + split.test]


# ============================================================================= zip uploads
def _zip(entries: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_zip_a_bomb_of_many_small_members_is_refused_before_writing(tmp_path):
    bomb = _zip({f"c{i % 2}/{i}.png": b"\0" * 1_000_000 for i in range(400)})
    assert len(bomb) < 2_000_000
    with pytest.raises(UploadError, match=r"expands \d+× overall .* zip bomb"):
        extract_zip(bomb, tmp_path / "out", "bomb.zip")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_zip_a_full_disk_while_extracting_is_a_message_and_leaves_nothing(tmp_path, monkeypatch):
    data = _zip({"a/1.png": b"x" * 1000, "b/2.png": b"y" * 1000})
    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):
        if "x" in mode and str(path).endswith("2.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(UploadError, match="could not extract 'b/2.png': the disk filled up"):
        extract_zip(data, tmp_path / "out", "d.zip")
    monkeypatch.undo()
    assert list((tmp_path / "out").iterdir()) == []


def test_zip_not_enough_free_space_is_refused_first(tmp_path, monkeypatch):
    monkeypatch.setattr("core.data.uploads.free_bytes", lambda folder: 10 * 1024**2)
    with pytest.raises(UploadError, match="not enough free disk space"):
        extract_zip(_zip({"a/1.png": b"x" * 1000, "b/1.png": b"y"}), tmp_path / "out", "d.zip")


def _patched_zip(entries: dict[str, bytes], **fields) -> bytes:
    """A zip whose local and central headers claim ``flag_bits`` or ``compress_type`` they do not have."""
    data = bytearray(_zip(entries, zipfile.ZIP_STORED))
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            if "flag_bits" in fields:
                data[start + flag_at:start + flag_at + 2] = fields["flag_bits"].to_bytes(2, "little")
            if "compress_type" in fields:
                data[start + method_at:start + method_at + 2] = fields["compress_type"].to_bytes(2, "little")
            start += 4
    return bytes(data)


@pytest.mark.parametrize("case, data, message", [
    ("encrypted", lambda: _patched_zip({"a/1.png": b"x", "b/1.png": b"y"}, flag_bits=1), "is encrypted"),
    ("unsupported method", lambda: _patched_zip({"a/1.png": b"x", "b/1.png": b"y"}, compress_type=98),
     "uses compression method 98"),
    ("file and folder clash", lambda: _zip({"a": b"x", "a/1.png": b"y"}), "could not extract 'a/1.png': another"),
    ("300-character name", lambda: _zip({f"a/{'n' * 300}.png": b"x", "b/1.png": b"y"}), "longer than 255 bytes"),
])
def test_zip_failures_are_one_message_naming_the_entry(case, data, message, tmp_path):
    with pytest.raises(UploadError, match=message):
        extract_zip(data(), tmp_path / "out", "d.zip")
    assert not any(p.name.startswith(".extract-") for p in (tmp_path / "out").glob("*"))


def test_zip_failures_on_the_dataset_page_are_messages(small_root):
    at = app_test("app_pages/dataset.py")
    at.radio(key="ds_source").set_value("Upload a zip").run()
    at.file_uploader(key="ds_zip").upload("enc.zip", _patched_zip({"a/1.png": b"x", "b/1.png": b"y"}, flag_bits=1),
                                          "application/zip").run()
    at.button(key="ds_extract").click().run()
    assert not at.exception
    assert any("is encrypted" in e.value for e in at.error)


# ============================================================================= disk full elsewhere
def test_disk_full_weights_upload_names_the_users_file_and_leaves_no_temp_file(resnet18_file, monkeypatch):
    from core.models.weights import hub_checkpoint_dir, store_uploaded_weights
    from core.spec.archs import get_arch

    monkeypatch.setattr("core.models.weights.os.fdopen", lambda fd, mode: os.close(fd) or _enospc())
    with pytest.raises(WeightsError, match=r"could not store 'my weights.pth' in torch hub's cache .*disk is full"):
        store_uploaded_weights(get_arch("resnet18"), resnet18_file.read_bytes(), "my weights.pth")
    assert list(hub_checkpoint_dir().glob("*")) == []


def test_disk_full_a_weights_file_that_does_not_fit_is_named_as_uploaded(tmp_path):
    from core.models.weights import store_uploaded_weights
    from core.spec.archs import get_arch

    torch.save({"x": torch.zeros(2)}, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="'vacation.pth' does not fit resnet18") as caught:
        store_uploaded_weights(get_arch("resnet18"), (tmp_path / "w.pth").read_bytes(), "vacation.pth")
    assert ".upload" not in str(caught.value)


def test_disk_full_a_nearly_full_run_folder_says_the_disk_is_full(colour_data, resnet18_file, tmp_path, monkeypatch):
    from core.training.run import train

    def torch_zip_writer_failure(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1234 vs 1200")

    monkeypatch.setattr(torch, "save", torch_zip_writer_failure)
    monkeypatch.setattr("core.platform.io.free_bytes", lambda folder: 1024)
    final = list(train(TrainConfig(arch="resnet18", weights=str(resnet18_file), data_root=str(colour_data),
                                   epochs=1, num_workers=0), tmp_path / "run"))[-1]
    assert final.status == "failed"
    assert final.reason.startswith("the disk is full: could not write") and "checkpoint_last.pt" in final.reason
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_disk_full_the_demo_cannot_be_generated_and_home_says_so(monkeypatch):
    monkeypatch.setattr("core.data.demo.tempfile.mkdtemp", _enospc)
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("could not generate the demo dataset" in e.value and "the disk is full" in e.value for e in at.error)


# ============================================================================= the shared cache
def _hammer_cache(folder: str, worker: int, rounds: int, errors) -> None:
    from core.features.cache import FeatureSet, load_cached_features, store_cached_features

    os.environ["TLD_FEATURE_CACHE_BYTES"] = "6000"
    features = FeatureSet(torch.zeros(8, 64), torch.zeros(8, dtype=torch.long), torch.arange(8), 0)

    def images(w: int, i: int) -> list:
        return [(f"{folder}/w{w}-{i % 7}-{k}.png", 0) for k in range(8)]  # never on disk: stamps of gone files

    for i in range(rounds):
        try:
            if not store_cached_features(Path(folder), f"id{worker % 2}", images(worker, i), features):
                errors.put(f"store failed: {worker}, {i}")
            load_cached_features(Path(folder), f"id{(worker + 1) % 2}", images((worker + 1) % 4, i))
        except Exception as exc:  # noqa: BLE001 - any error is what this test counts
            errors.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_cache_four_processes_under_a_tiny_cap_see_no_errors(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_hammer_cache, args=(str(tmp_path), w, 300, errors)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert all(p.exitcode == 0 for p in procs)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
    entries = list((tmp_path / "features").rglob("*.pt"))
    assert 0 < len(entries) <= 4  # pruned to the cap as they went


# ============================================================================= smaller defects
def test_smaller_the_pixel_limit_message_quotes_the_apps_limit(monkeypatch):
    from PIL import Image

    from core.data.images import open_image
    from core.platform.errors import ImageError

    monkeypatch.setenv("TLD_MAX_IMAGE_PIXELS", "1000")
    buf = io.BytesIO()
    Image.new("RGB", (50, 50)).save(buf, format="PNG")
    with pytest.raises(ImageError, match="more than the limit of 1,000"):
        open_image(buf.getvalue())


def test_smaller_stored_and_downloaded_weights_are_readable_by_others(resnet18_file):
    from core.models.weights import store_uploaded_weights
    from core.spec.archs import get_arch

    stored = store_uploaded_weights(get_arch("resnet18"), resnet18_file.read_bytes(), "r.pth")
    assert stored.stat().st_mode & 0o777 == 0o644


def test_smaller_no_password_configured_opens_the_app(small_root):
    at = app_test()
    assert "Current dataset" in [s.value for s in at.subheader]
    assert not [t for t in at.text_input if t.label == "Password"]
