"""CIFAR-10 as class folders: a tiny archive in the exact python format, never a download."""
import io
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from core.data.cifar import import_cifar10
from core.data.split import read_split, split_dataset
from core.platform.errors import DatasetError
from tests.conftest import ROOT

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _batch(rng, n, start):
    labels = [int((start + i) % 10) for i in range(n)]
    data = np.zeros((n, 3072), dtype=np.uint8)
    for i, label in enumerate(labels):
        data[i, :1024] = 25 * label  # the red plane says the class, so the PNGs can be checked
        data[i, 1024:] = rng.integers(0, 256, 2048)
    return {b"batch_label": b"x", b"labels": labels, b"data": data,
            b"filenames": [f"img_{start + i:03d}.png".encode() for i in range(n)]}


def make_archive(path, evil: bool = False):
    rng = np.random.default_rng(0)
    members = {f"data_batch_{k}": _batch(rng, 3, 3 * (k - 1)) for k in range(1, 6)}
    members["test_batch"] = _batch(rng, 5, 15)
    members["batches.meta"] = {b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            data = pickle.dumps(obj, protocol=2)
            if evil and name == "test_batch":
                data = pickle.dumps(__import__("os").system, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_the_archive_becomes_class_folders_with_its_own_split(tmp_path):
    root = import_cifar10(make_archive(tmp_path / "c.tar.gz"), tmp_path / "cifar")
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(NAMES)
    assert len(list((root / "train").rglob("*.png"))) == 15 and len(list((root / "test").rglob("*.png"))) == 5
    from PIL import Image
    cat = Image.open(root / "train" / "cat" / "img_003.png")
    assert cat.size == (32, 32) and cat.getpixel((0, 0))[0] == 75  # label 3 → red 75
    lists = read_split(root / "lists")
    assert lists.classes == sorted(NAMES) and len(lists.train + lists.val) == 15 and len(lists.test) == 5
    assert all(lists.classes[label] == path.split("/")[-2] for path, label in lists.train + lists.val + lists.test)
    assert split_dataset(root).given_by == "train/ + test/"


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="would call posix.system|would call os.system|would call nt.system"):
        import_cifar10(make_archive(tmp_path / "evil.tar.gz", evil=True), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_import_command(tmp_path):
    archive = make_archive(tmp_path / "c.tar.gz")
    ok = subprocess.run([sys.executable, "-m", "core", "import", "cifar10", "--archive", str(archive), "--out",
                         str(tmp_path / "cifar")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "cifar" / "lists" / "train.txt").is_file()
    again = subprocess.run([sys.executable, "-m", "core", "import", "cifar10", "--archive", str(archive), "--out",
                            str(tmp_path / "cifar")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert again.returncode == 2 and "not empty" in again.stderr
    broken = tmp_path / "b.tar.gz"
    broken.write_bytes(b"not a tar")
    bad = subprocess.run([sys.executable, "-m", "core", "import", "cifar10", "--archive", str(broken), "--out",
                          str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "not a readable tar.gz" in bad.stderr


def test_the_dataset_page_imports_a_local_archive(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    archive = make_archive(tmp_path / "cifar-10-python.tar.gz")
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120).run()
    at.switch_page("app_pages/dataset.py").run()
    at.radio(key="ds_source").set_value("CIFAR-10").run()
    at.text_input(key="ds_cifar_path").input(str(archive)).run()
    at.button(key="ds_cifar").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "10 classes · 10 train / 5 validation / 5 test" in [s.value for s in at.subheader]
    assert any("Split given by the dataset" in i.value for i in at.info)
