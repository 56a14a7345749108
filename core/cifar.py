"""CIFAR-10, the tutorial's VGG16 example, as the usual class-folder tree.

``python -m core import cifar10 [--archive cifar-10-python.tar.gz] --out DIR`` writes
``DIR/train/<class>/*.png`` and ``DIR/test/<class>/*.png`` (the archive's own split, which the
split then keeps as "given by the dataset") and the list files in ``DIR/lists``. The archive is
a local file or torchvision's download address, with its MD5 checked.

The python version of CIFAR-10 is pickled. A pickle can run code, so batches are read with an
unpickler that only builds dicts, lists, bytes and numpy arrays.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .errors import DatasetError, UserError
from .split import split_dataset, write_split

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META = "batches.meta"
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _DataOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(f"the CIFAR-10 archive holds a pickle that would call {module}.{name}; refused "
                           "(only plain data is accepted)")


def _load(data: bytes) -> dict:
    try:
        obj = _DataOnly(io.BytesIO(data), encoding="bytes").load()
    except UserError:
        raise
    except Exception as exc:
        raise DatasetError(f"a CIFAR-10 batch could not be read ({type(exc).__name__}); the archive is damaged") from None
    if not isinstance(obj, dict):
        raise DatasetError("a CIFAR-10 batch is not a dict; is this the python version of the archive?")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _members(archive: Path) -> dict[str, bytes]:
    wanted = set(TRAIN_BATCHES + [TEST_BATCH, META])
    found = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and name in wanted:
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"'{archive}' is not a readable tar.gz archive ({exc})") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise DatasetError(f"'{archive}' is not the python CIFAR-10 archive: it lacks {', '.join(missing)}")
    return found


def _write_batch(batch: dict, names: list[str], folder: Path) -> int:
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or len(labels or []) != len(data):
        raise DatasetError("a CIFAR-10 batch does not hold N×3072 pixels with N labels")
    files = batch.get("filenames") or [f"{i:05d}.png".encode() for i in range(len(data))]
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    for image, label, name in zip(images, labels, files):
        stem = Path((name.decode() if isinstance(name, bytes) else str(name))).stem
        target = folder / names[int(label)] / f"{stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(target)
    return len(images)


def import_cifar10(archive: str | os.PathLike, out: str | os.PathLike,
                   progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the class-folder tree and list files of a CIFAR-10 python archive; return the data root."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"'{out}' is not empty; choose a new folder so nothing is overwritten")
    members = _members(Path(archive))
    names = [n.decode() if isinstance(n, bytes) else n for n in _load(members[META]).get("label_names", [])]
    if len(names) != 10:
        raise DatasetError("batches.meta does not name the 10 CIFAR-10 classes")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        parts = [(b, "train") for b in TRAIN_BATCHES] + [(TEST_BATCH, "test")]
        for done, (batch, part) in enumerate(parts, 1):
            _write_batch(_load(members[batch]), names, tmp / part)
            if progress:
                progress(done, len(parts))
        out.mkdir(exist_ok=True)
        for part in ("train", "test"):
            os.replace(tmp / part, out / part)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_split(split_dataset(out), out / "lists")
    return out


def download_cifar10(folder: str | os.PathLike, progress=None) -> Path:
    """torchvision's CIFAR-10 archive, downloaded with a progress callback and its MD5 checked."""
    from torchvision.datasets import CIFAR10

    from .weights import download_file

    target = Path(folder) / CIFAR10.filename
    if not target.is_file():
        try:
            download_file(CIFAR10.url, target, progress=progress, timeout=60)
        except UserError as exc:
            raise DatasetError(f"{exc}. Offline? Download {CIFAR10.url} elsewhere and give the file with "
                               "--archive (or its path on the Dataset page)") from None
    digest = hashlib.md5(target.read_bytes()).hexdigest()
    if digest != CIFAR10.tgz_md5:
        target.unlink(missing_ok=True)
        raise DatasetError(f"the downloaded CIFAR-10 archive is damaged (MD5 {digest}, expected {CIFAR10.tgz_md5})")
    return target
