"""Work bounded by what is shown, and files read defensively.

The gate: tests/serving/test_gate.py and tests/e2e/test_servers.py (a fresh st.App server). The
200-creation race: tests/runs/test_readers_never_write.py. Here: work bounded by what is shown (a label of 3000,
many classes, sparse confusion matrices), files read defensively wherever they come from (FIFOs, devices, NUL bytes,
CSV fields, missing entries named), and outputs nobody can misread (a zip given as weights).
"""
import io
import json
import os
import shutil
import time
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from core.analysis.datacheck import read_path_list
from core.analysis.report import SHOWN_CLASSES, RunReport
from core.data.health import read_header
from core.data.images import open_image
from core.data.split import read_list_file
from core.platform.errors import DatasetError, ImageError, RunError, WeightsError
from core.platform.io import NotAFile, open_regular, read_json_file
from core.platform.workspace import runs_dir
from core.runs.files import read_records
from core.runs.listing import read_run
from core.spec.config import TrainConfig
from core.spec.records import Features, Start, cells_of, class_counts, confusion_cells
from core.training.run import train
from tests.conftest import app_test, make_colour_dataset


def _config(**overrides) -> TrainConfig:
    base = dict(arch="efficientnet_lite0", epochs=2, batch_size=4, lr=0.05, num_workers=0, seed=0, log_every=100)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    return path


# ============================================================================= bounded by what is shown
def _traced_page(run_name: str) -> tuple[float, int]:
    """Seconds and peak traced memory of one fresh Training page on ``run_name``, its report computed anew."""
    import streamlit as st

    st.cache_data.clear()
    tracemalloc.start()
    started = time.monotonic()
    at = app_test("app_pages/training.py", run=run_name)
    seconds = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert not at.exception and any(s.value.startswith("Results on the test split") for s in at.subheader)
    captions = [c.value for c in at.caption]
    assert any(c.startswith("Validation: ") for c in captions) and not any("An older run" in c for c in captions)
    return seconds, peak


def test_label_3000_the_training_page_is_bounded_in_time_and_memory(tmp_path, lite0_file):
    """The probe's case: label 3000 in an ordinary train.txt made a 27 MB metrics line per epoch and a 63 s, 5.1 GB
    Training page. Now the run trains the 2 classes present, and its page costs what the same run labelled 0 and 1
    costs (measured side by side in this test, after a first page has loaded everything a page imports)."""
    make_colour_dataset(tmp_path / "d", per_class=10)
    for name, red in (("plain", 1), ("label3000", 3000)):
        lists = tmp_path / f"lists_{name}"
        lists.mkdir()
        for file, indices in {"train.txt": range(0, 6), "test.txt": range(6, 10)}.items():
            (lists / file).write_text("".join(f"{tmp_path / 'd' / colour / f'{colour}_{i:02d}.png'}\t{label}\n"
                                              for colour, label in (("blue", 0), ("red", red)) for i in indices))
        list(train(_config(lists_dir=str(lists), weights=str(lite0_file), epochs=3), runs_dir() / name))
        assert read_run(runs_dir() / name).status == "completed"
    assert (runs_dir() / "label3000" / "metrics.jsonl").stat().st_size < 50_000
    app_test("app_pages/training.py", run="plain")  # imports and first-use costs, outside the measurement
    plain_s, plain_peak = _traced_page("plain")
    seconds, peak = _traced_page("label3000")
    assert peak < 1.5 * plain_peak + 50 * 1024**2, (peak, plain_peak)  # was 5.1 GB
    assert seconds < 3 * plain_s + 10, (seconds, plain_s)  # was 63 s


def test_an_epochs_confusion_matrix_is_its_non_zero_cells_and_older_dense_ones_still_read():
    dense = torch.tensor([[5, 1, 0], [0, 4, 0], [0, 0, 0]])
    cells = confusion_cells(dense)
    assert cells == {"cells": [[0, 0, 5], [0, 1, 1], [1, 1, 4]]}
    assert cells_of(cells, 3) == cells_of(dense.tolist(), 3) == [(0, 0, 5), (0, 1, 1), (1, 1, 4)]
    assert class_counts(cells, 3) == [6, 4, 0]
    big = torch.zeros(1000, 1000, dtype=torch.long)
    big[torch.arange(1000), torch.arange(1000)] = 1
    assert len(json.dumps(confusion_cells(big))) < 20_000  # 1,000 images: 1,000 cells, not 1,000,000 numbers
    for bad in ({"cells": [[0, 3, 1]]}, {"cells": [[0, 0, 0]]}, {"cells": [[0, 0, 1.5]]}, {"cells": "x"},
                {"cells": [], "more": 1}, [[0] * 3] * 2, [[-1, 0, 0]] * 3, None):
        with pytest.raises(ValueError):
            cells_of(bad, 3)


def test_many_classes_charts_and_tables_draw_at_most_30_and_say_how_many_more():
    n = 120
    confusion = [[0] * n for _ in range(n)]
    for c in range(n):
        confusion[c][c] = 3
    for t, p in ((5, 7), (7, 5), (100, 3), (64, 64)):
        confusion[t][p] += 2
    report = SimpleNamespace(classes=[f"c{i}" for i in range(n)], confusion=confusion,
                             per_class=[SimpleNamespace(support=sum(row)) for row in confusion])
    shown = RunReport.shown_classes(report)
    assert len(shown.indices) == SHOWN_CLASSES == 30 and shown.hidden == 90 and shown.total == n
    assert {3, 5, 7, 100} <= set(shown.indices) and shown.indices == sorted(shown.indices)
    assert shown.note() == ("30 of 120 classes shown (the ones in the most errors), and 90 more: every class is in "
                            "the report (python -m core report RUN --json FILE).")
    few = RunReport.shown_classes(SimpleNamespace(classes=["a", "b"], confusion=[[1, 0], [0, 1]], per_class=[]))
    assert few.indices == [0, 1] and few.note() == ""


# ============================================================================= every file read defensively
def test_a_fifo_or_a_device_is_refused_by_name_without_blocking(fifo, tmp_path):
    """Every reader of a file the user names: a FIFO would hang a plain open() until someone writes to it."""
    started = time.monotonic()
    for path, kind in ((fifo, r"a named pipe \(FIFO\)"), (Path("/dev/zero"), "a character device"),
                       (tmp_path, "a folder")):
        with pytest.raises(NotAFile, match=kind):
            open_regular(path)
        with pytest.raises(DatasetError, match="a list file must be a text file"):
            read_list_file(path)
        with pytest.raises(ValueError, match="not a file"):
            read_json_file(path)
        with pytest.raises(ImageError, match=f"is {kind}"):
            open_image(str(path))
        assert "not a file" in read_header(str(path)).reason
        with pytest.raises(DatasetError):
            read_path_list(path)
    assert time.monotonic() - started < 10  # nothing waited for a writer


def test_a_fifo_in_a_list_is_named_in_the_run_and_the_run_completes(fifo, tmp_path, lite0_file):
    make_colour_dataset(tmp_path / "d", per_class=10)
    lists = tmp_path / "lists"
    lists.mkdir()
    rows = [(tmp_path / "d" / c / f"{c}_{i:02d}.png", label)
            for c, label in (("blue", 0), ("red", 1)) for i in range(10)]
    missing = [(tmp_path / "d" / f"gone_{i}.png", i % 2) for i in range(6)]
    (lists / "train.txt").write_text("".join(f"{p}\t{y}\n" for p, y in [*rows[:6], *rows[10:16], (fifo, 0), *missing]))
    (lists / "val.txt").write_text("".join(f"{p}\t{y}\n" for p, y in [*rows[6:8], *rows[16:18]]))
    (lists / "test.txt").write_text("".join(f"{p}\t{y}\n" for p, y in [*rows[8:10], *rows[18:20]]))
    records = list(train(_config(lists_dir=str(lists), weights=str(lite0_file)), tmp_path / "run"))
    assert records[-1].status == "completed"
    start = read_records(tmp_path / "run").start
    assert start.unusable == 7 and len(start.unusable_examples) == 5
    assert start.unusable_examples[0] == f"{fifo} (a named pipe (FIFO))"
    assert start.unusable_examples[1] == f"{missing[0][0]} (missing)"
    assert start.unusable_line().startswith("7 list entries cannot be images and are skipped: ")
    assert start.unusable_line().endswith("; and 2 more")
    shutil.copytree(tmp_path / "run", runs_dir() / "with-fifo", ignore=shutil.ignore_patterns("*.pt"))
    at = app_test("app_pages/training.py", run="with-fifo")
    warnings = [w.value for w in at.warning]
    assert start.unusable_line()[:1].upper() + start.unusable_line()[1:] + "." in warnings
    assert any(w.startswith("Train: 7 unreadable image(s) skipped") for w in warnings)
    features = [r for r in read_records(tmp_path / "run").of(Features) if r.split == "train"]
    assert features[0].skipped == 7  # the default path (cached features) names the images its pass skipped
    assert features[0].skipped_line().startswith(f"7 unreadable image(s) skipped: {fifo}, {missing[0][0]}")
    assert features[0].skipped_line().endswith(" and 2 more")


def test_list_files_refuse_nul_bytes_by_line_and_csv_fields_over_the_limit(tmp_path):
    listed = tmp_path / "train.txt"
    listed.write_bytes(b"a.png\t0\nb\x00.png\t1\n")
    with pytest.raises(DatasetError, match="line 2: the image path holds a NUL byte"):
        read_list_file(listed)
    csv_file = tmp_path / "suspects.csv"
    csv_file.write_text("path,split\n\"" + "x" * 200_000 + "\",train\n")
    with pytest.raises(DatasetError, match="is not a CSV of this program .*field larger than field limit"):
        read_path_list(csv_file)


def test_old_runs_without_the_new_fields_still_read():
    start = Start.from_json({"arch": "a", "classes": ["x", "y"], "train_size": 1, "test_size": 1, "epochs": 1,
                             "batches_per_epoch": 1, "device": "cpu", "device_name": "cpu",
                             "feature_path": "cached features", "trainable_params": 1, "frozen_params": 1,
                             "weights": None, "time": 0.0})
    assert start.unusable == 0 and start.unusable_line() == ""


# ============================================================================= outputs nobody can misread
def _photo_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in ("ants/0013035.jpg", "ants/1030023514.jpg", "bees/1092977343.jpg"):
            archive.writestr(name, b"\xff\xd8 not really a photo")
    return out.getvalue()


def test_a_zip_of_images_given_as_weights_is_called_what_it_is(tmp_path):
    from core.models.weights import load_state_dict_file

    expected = ("is a zip archive of 3 file(s) ('ants/0013035.jpg', 'ants/1030023514.jpg', …), not a PyTorch "
                "weights file")
    path = tmp_path / "photos.pth"
    path.write_bytes(_photo_zip())
    with pytest.raises(WeightsError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_state_dict_file(path)
    with pytest.raises(WeightsError, match="'upload.pt' is a zip archive of 3 file"):
        load_state_dict_file(_photo_zip(), "upload.pt")


def test_a_zip_of_images_given_as_a_checkpoint_to_predict_is_called_what_it_is(tmp_path):
    from core.inference.predict import Predictor

    path = tmp_path / "model.pt"
    path.write_bytes(_photo_zip())
    with pytest.raises(RunError, match=r"is a zip archive of 3 file\(s\) .*, not a checkpoint"):
        Predictor.load(path)


def test_overflowing_outputs_are_refused_everywhere_they_are_shown(tmp_path, capsys):
    """Finite weights whose logits overflow: predict (one image, a folder, the CLI) and Grad-CAM refuse in one
    sentence; never NaN probabilities with exit 0."""
    from PIL import Image

    from core.cli.main import main
    from core.inference.predict import Predictor, predict_many
    from core.models.explain import explain
    from core.models.surgery import adapt_model

    model, _ = adapt_model("resnet18", 2, weights=None)
    state = model.state_dict()
    state["fc.weight"].fill_(3e38)
    torch.save(state, tmp_path / "huge.pth")
    image = tmp_path / "white.png"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(image)
    predictor = Predictor.from_state_dict(tmp_path / "huge.pth", arch="resnet18", classes="a,b", fold=False)
    with pytest.raises(RunError, match="not finite numbers"):
        explain(predictor, str(image))
    with pytest.raises(RunError, match="not finite numbers"):
        for _ in predict_many(predictor, [str(image)]):
            pass
    for extra in ([], ["--cam", str(tmp_path / "cam.png")]):
        assert main(["predict", str(tmp_path / "huge.pth"), str(image), "--arch", "resnet18", "--classes", "a,b",
                     *extra]) == 2
        out = capsys.readouterr()
        assert out.out == "" and "this model" not in out.err and "not finite numbers" in out.err
    assert not (tmp_path / "cam.png").exists()


def test_a_temperature_that_makes_finite_logits_overflow_is_refused(tmp_path):
    from core.inference.predict import Predictor
    from core.models.surgery import adapt_model

    model, _ = adapt_model("resnet18", 2, weights=None)
    state = model.state_dict()
    state["fc.weight"].fill_(1e35)
    torch.save(state, tmp_path / "big.pth")
    predictor = Predictor.from_state_dict(tmp_path / "big.pth", arch="resnet18", classes="a,b", fold=False)
    predictor.temperature = 1e-4  # a forged sidecar's or checkpoint's temperature
    batch = torch.ones(1, 3, 224, 224)
    assert torch.isfinite(predictor.batch_logits(batch)).all()
    with pytest.raises(RunError, match="not finite numbers"):
        predictor.batch_probabilities(batch)


def test_an_export_whose_checkpoint_changed_is_flagged_by_predict_and_the_page(lite0_run_here, tmp_path, capsys):
    from PIL import Image

    from core.cli.main import main
    from core.inference.export import export, stale_exports

    run = lite0_run_here
    model_file, side = export(run, "torchscript")
    assert json.loads(side.read_text())["checkpoint"]["file"] == "checkpoint_best.pt"
    assert stale_exports(run) == []
    image = tmp_path / "i.png"
    Image.new("RGB", (64, 64), (30, 60, 220)).save(image)
    assert main(["predict", str(run), str(image)]) == 0
    assert "warning" not in capsys.readouterr().err
    # The run's checkpoint changes (a resume, a new best epoch): same classes, other weights.
    checkpoint = run / "checkpoint_best.pt"
    ckpt = torch.load(checkpoint, weights_only=True)
    key = next(iter(ckpt["model"]))
    ckpt["model"][key] = ckpt["model"][key] + 0.01
    torch.save(ckpt, checkpoint)
    expected = (f"{model_file.name} no longer matches this run's checkpoint (the checkpoint has changed since it was "
                "exported); export it again before using it")
    assert [s.sentence() for s in stale_exports(run)] == [expected]
    assert main(["predict", str(run), str(image)]) == 0
    assert f"warning: {expected}" in capsys.readouterr().err
    at = app_test("app_pages/prediction.py", run=run.name)
    assert any(expected[:1].upper() + expected[1:] in w.value for w in at.warning)
    # A sidecar for other classes, and one that cannot be read.
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "classes": ["x", "y"]}))
    assert "other classes" in stale_exports(run)[0].why
    side.write_text("{" * 100_000)
    assert stale_exports(run)[0].why == "its sidecar cannot be read"


@pytest.fixture
def lite0_run_here(small_root, lite0_file) -> Path:
    path = runs_dir() / "exported"
    list(train(_config(weights=str(lite0_file), data_root=str(small_root), epochs=1), path))
    assert read_run(path).status == "completed"
    return path


# ============================================================================= the data check on degenerate data
def _check(split, lite0_file, cache):
    from core.analysis.datacheck import check_data

    stream = check_data(split, arch="efficientnet_lite0", weights=str(lite0_file), cache_dir=cache, device="cpu")
    while True:
        try:
            next(stream)
        except StopIteration as finished:
            return finished.value


def _lists(folder: Path, train_rows, test_rows) -> Path:
    folder.mkdir(parents=True)
    (folder / "train.txt").write_text("".join(f"{p}\t{y}\n" for p, y in train_rows))
    (folder / "test.txt").write_text("".join(f"{p}\t{y}\n" for p, y in test_rows))
    return folder


def test_degenerate_data_gets_a_report_that_says_so(tmp_path, lite0_file):
    from core.data.split import read_split, split_dataset

    root = make_colour_dataset(tmp_path / "d", per_class=8)
    blue = sorted(str(p) for p in (root / "blue").iterdir())
    red = sorted(str(p) for p in (root / "red").iterdir())
    cache = tmp_path / "cache"
    one_class = _check(read_split(_lists(tmp_path / "one", [(p, 0) for p in blue[:6]], [(p, 0) for p in blue[6:]])),
                       lite0_file, cache)
    assert "every readable image is of one class (blue): a classifier needs at least two" in one_class.notes[0]
    empty_test = _check(read_split(_lists(tmp_path / "empty", [(p, 0) for p in blue] + [(p, 1) for p in red], [])),
                        lite0_file, cache)
    assert "the test split is empty: a run would have nothing to measure its accuracy on" in empty_test.notes
    assert empty_test.baseline is not None  # the rest of the check still runs
    one_image = make_colour_dataset(tmp_path / "tiny", per_class=2, classes=("blue", "red", "green"))
    for extra in range(6):
        copy = (one_image / "green" / "green_00.png").read_bytes()
        (one_image / "green" / f"green_{extra:02d}.png").write_bytes(copy)
    report = _check(split_dataset(one_image, 0.6, 0), lite0_file, cache)
    assert any("too small for label checking" in n for n in report.notes) and report.baseline is None


def test_a_check_whose_test_images_are_unreadable_caches_nothing_empty_and_the_run_after_it_says_why(
        tmp_path, lite0_file):
    """The probe's case: the check cached an empty 0×0 array, and the next run failed with 'mat1 and mat2 shapes
    cannot be multiplied (0x0 and 1280x2)'."""
    from core.data.split import read_split

    root = make_colour_dataset(tmp_path / "d", per_class=8)
    rows = [(str(p), y) for y, c in enumerate(("blue", "red")) for p in sorted((root / c).iterdir())]
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(4):
        (bad / f"x{i}.png").write_bytes(b"not an image")
    lists = _lists(tmp_path / "lists", rows, [(str(bad / f"x{i}.png"), i % 2) for i in range(4)])
    cache = tmp_path / "cache"
    report = _check(read_split(lists), lite0_file, cache)
    assert any(n.startswith("none of the 4 test images can be read") for n in report.notes)
    entries = list(cache.rglob("*.pt"))
    assert entries and all(len(torch.load(e, weights_only=True)["labels"]) for e in entries)  # none is empty
    final = list(train(_config(lists_dir=str(lists), weights=str(lite0_file), val_ratio=0.25), tmp_path / "run",
                       cache_dir=cache))[-1]
    assert final.status == "completed" and final.test_acc is None, final  # trained; no test figure, none made up
    features = [r for r in read_records(tmp_path / "run").of(Features) if r.split == "test"]
    assert features[0].skipped == 4 and str(bad / "x0.png") in features[0].skipped_line()


def test_a_stored_empty_feature_entry_is_only_a_miss(tmp_path):
    from core.features.cache import FeatureSet, file_stamp, list_key, load_cached_features, store_cached_features
    from core.platform.io import atomic_torch_save

    samples = [(str(tmp_path / f"gone_{i}.png"), i % 2) for i in range(4)]
    empty = FeatureSet(torch.empty(0, 0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), 4)
    assert store_cached_features(tmp_path, "id", samples, empty) is False and not list(tmp_path.rglob("*.pt"))
    stamps = [file_stamp(path) for path, _ in samples]
    entry = tmp_path / "features" / "id" / f"{list_key(stamps)}.pt"
    entry.parent.mkdir(parents=True)
    atomic_torch_save({"features": empty.features, "labels": empty.labels, "indices": empty.indices,
                       "skipped": 4, "stamps": stamps}, entry)
    assert load_cached_features(tmp_path, "id", samples) is None


# ============================================================================= the class: every run file hostile
RUN_FILES = ["config.json", "status.json", "metrics.jsonl", "summary.json", "surgery.json", "predictions.json",
             "test_outputs.npz", "checkpoint_best.pt", "checkpoint_last.pt", "worker.log", "error.txt",
             "temperature.json", "lists/train.txt", "lists/test.txt", "lists/val.txt", "lists/classes.json"]


def _in_time(fn, seconds: float = 20.0):
    """fn() in a thread: its result, or a failure when it has not returned in ``seconds`` (a read that blocks)."""
    import threading

    box = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001  (the test looks at what came out)
            box["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} blocked for {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "garbage", "nested"])
def test_every_file_of_a_run_made_hostile_never_blocks_or_breaks_a_reader(lite0_run_here, kind):
    """Each file a run folder may hold, replaced in turn (one run per file) by a FIFO, random bytes or deeply
    nested JSON: reading, the report and prediction answer in time, the run marked damaged or unaffected; the
    listing, Home, Prediction and Training (on each hostile run) show it beside the good one."""
    import shutil

    from core.analysis.report import run_report
    from core.inference.predict import Predictor
    from core.platform.errors import UserError
    from core.runs.listing import list_runs

    good = lite0_run_here
    hostile = []
    for number, name in enumerate(RUN_FILES):
        run = good.parent / f"hostile-{number:02d}"
        shutil.copytree(good, run)
        target = run / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        if kind == "fifo":
            os.mkfifo(target)
        elif kind == "garbage":
            target.write_bytes(os.urandom(4096))
        else:
            target.write_text("[" * 100_000)
        hostile.append(run)
        info = _in_time(lambda: read_run(run))
        assert info.status in ("completed", "damaged"), (name, info.status, info.reason)
        for reader in (lambda: run_report(run), lambda: Predictor.load(run)):
            try:
                _in_time(reader)
            except UserError:
                pass  # a message: what matters is that it answered
    assert {i.path.name for i in _in_time(lambda: list_runs(runs_dir()))} == {good.name, *(r.name for r in hostile)}
    for page in ("app_pages/home.py", "app_pages/prediction.py"):
        assert not _in_time(lambda: app_test(page), 120).exception
    for run in hostile:
        at = _in_time(lambda: app_test("app_pages/training.py", run=run.name), 120)
        assert not at.exception, run
    for run in hostile:
        shutil.rmtree(run)
