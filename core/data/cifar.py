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

from ..platform.download import download_file
from ..platform.errors import DatasetError, UserError
from .split import split_dataset, write_split

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META = "batches.meta"
MAX_MEMBER_BYTES = 64 * 1024**2
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
        raise DatasetError(f"a CIFAR-10 batch could not be read ({type(exc).__name__}); "
                           "the archive is damaged") from None
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
                    if member.size > MAX_MEMBER_BYTES:  # the real batches are 30 MB each
                        raise DatasetError(f"'{archive}' is not the python CIFAR-10 archive: its {name} declares "
                                           f"{member.size:,} bytes, more than any CIFAR-10 batch")
                    extracted = tar.extractfile(member)
                    if extracted is None:  # isfile() said it is a regular member
                        continue
                    found[name] = extracted.read(MAX_MEMBER_BYTES + 1)
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
    if data.dtype != np.uint8:
        raise DatasetError(f"a CIFAR-10 batch holds {data.dtype} pixels, not bytes (uint8)")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DatasetError("a CIFAR-10 batch has labels that are not whole numbers") from None
    if labels.ndim != 1 or labels.size and not 0 <= int(labels.min()) <= int(labels.max()) < len(names):
        raise DatasetError(f"a CIFAR-10 batch has labels outside 0..{len(names) - 1}")
    files = batch.get("filenames")
    if not isinstance(files, list) or len(files) != len(data):
        files = [b""] * len(data)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    for i, (image, label, name) in enumerate(zip(images, labels.tolist(), files)):
        target = folder / names[label] / f"{_file_stem(name, i)}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(target)
    return len(images)


def _file_stem(name, index: int) -> str:
    """The archive's own file name without its extension, when it is a plain one; else the image's number."""
    text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    stem = Path(text).stem
    if not stem or stem.startswith(".") or "\x00" in stem or len(stem) > 200:
        return f"{index:05d}"
    return stem


def _class_names(meta: dict) -> list[str]:
    """The 10 class names of batches.meta; each becomes a folder, so each must be a plain, distinct name."""
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in meta.get("label_names", [])]
    if len(names) != 10 or not all(isinstance(n, str) for n in names):
        raise DatasetError("batches.meta does not name the 10 CIFAR-10 classes")
    bad = [n for n in names if not n or n in (".", "..") or any(c in n for c in "/\\\x00") or len(n) > 100]
    if bad or len(set(names)) != 10:
        raise DatasetError(f"batches.meta names classes that cannot be folder names ({bad[:2] or 'repeated'})")
    return names


def import_cifar10(archive: str | os.PathLike, out: str | os.PathLike,
                   progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the class-folder tree and list files of a CIFAR-10 python archive; return the data root."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"'{out}' is not empty; choose a new folder so nothing is overwritten")
    members = _members(Path(archive))
    names = _class_names(_load(members[META]))
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


def download_cifar10(folder: str | os.PathLike, progress=None, *, local_file_hint: str = "with --archive") -> Path:
    """torchvision's CIFAR-10 archive, downloaded with a progress callback and its MD5 checked. When it cannot
    be downloaded, the message says how to give a local copy instead (``local_file_hint``)."""
    # deferred: torchvision costs about as much as torch to import, and most paths never need this
    from torchvision.datasets import CIFAR10


    target = Path(folder) / CIFAR10.filename
    if not target.is_file():
        try:
            download_file(CIFAR10.url, target, progress=progress)
        except UserError as exc:
            raise DatasetError(f"{exc}. Offline? Download {CIFAR10.url} elsewhere and give the file "
                               f"{local_file_hint}") from None
    digest = hashlib.md5(target.read_bytes()).hexdigest()
    if digest != CIFAR10.tgz_md5:
        target.unlink(missing_ok=True)
        raise DatasetError(f"the downloaded CIFAR-10 archive is damaged (MD5 {digest}, expected {CIFAR10.tgz_md5})")
    return target
