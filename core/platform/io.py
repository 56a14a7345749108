"""Small file helpers: atomic writes, so an interrupted write never leaves half a file."""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError
from .process import own_identity, parse_identity


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask is process-wide and not thread-safe to toggle


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
TMP_PREFIX, TMP_SUFFIX = ".", ".tmp"  # an atomic write's temporary file: .NAME.PID-STARTTICKS.RANDOM.tmp


def temp_file_owner(name: str) -> tuple[int, int | None] | None:
    """(pid, start) of the process whose atomic write left the temporary file ``name``; None when the
    name is not such a file or names no owner (written by an older version)."""
    if not (name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)):
        return None
    parts = name[: -len(TMP_SUFFIX)].split(".")
    return parse_identity(parts[-2]) if len(parts) >= 4 else None


class DiskFull(UserError):
    """A write failed because the disk (or the user's quota) is full; the message says where."""


def free_bytes(folder) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full_message(path, what: str = "write") -> str:
    free = free_bytes(Path(path).parent)
    left = f" ({free / 1024**2:.0f} MB free there)" if free is not None else ""
    return f"the disk is full: could not {what} '{path}'{left}; free some space and try again"


def as_disk_full(exc: BaseException, path) -> DiskFull | None:
    """The DiskFull a low-level write failure stands for, or None when it is something else.

    torch.save reports a full disk as a RuntimeError from its zip writer ('unexpected pos',
    'file write failed'), never as ENOSPC; a near-empty disk is then the likely cause.
    """
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return DiskFull(disk_full_message(path))
    if isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "write failed" in str(exc)):
        free = free_bytes(Path(path).parent)
        if free is not None and free < 64 * 1024**2:
            return DiskFull(disk_full_message(path))
    return None


@contextmanager
def atomic_file(path, mode: int | None = None):
    """A binary file that appears at ``path`` only once it is completely written.

    It is written next to ``path`` under a temporary name, then renamed over it, so readers
    never see half a file; on any failure the temporary file is removed, and a full disk
    becomes a DiskFull that says where. ``mode`` defaults to what the umask allows
    (mkstemp's 0600 would hide run files and weights from other users).
    """
    path = Path(path)
    tmp = None
    try:
        # The name carries this process's identity: only this process removes it, or, once this process is
        # provably gone (killed mid-write), `python -m core runs clean` (core.runs.listing.clean_leftovers).
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.{own_identity()}.",
                                   suffix=TMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, (0o666 & ~_UMASK) if mode is None else mode)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        full = as_disk_full(exc, path)
        if full:
            raise full from None
        raise


def _atomic_replace(path: Path, write) -> None:
    with atomic_file(path) as f:
        write(f)


def atomic_write_bytes(path, data: bytes, mode: int | None = None) -> None:
    with atomic_file(path, mode) as f:
        f.write(data)


def atomic_write_text(path, text: str) -> None:
    _atomic_replace(Path(path), lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False))


def atomic_torch_save(obj, path) -> None:
    import torch  # here, not at the top: the split and the CLI's --help must not pay for importing torch

    _atomic_replace(Path(path), lambda f: torch.save(obj, f))


def torch_load_tensors(source, *, mmap: bool = False):
    """``torch.load`` with ``weights_only=True`` onto the CPU, for files that may be damaged or foreign. ``mmap``:
    tensors are read from the file only when used (a cache entry whose list is looked at first).

    torch warns about odd pickle protocols before it fails on such a file; the callers turn every
    failure into one message of their own, so that warning would only be noise (and a second line
    on the CLI's stderr)."""

    # deferred: this module is used without torch (the split, listing runs, --help); importing it costs seconds
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
        return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)


MAX_JSON_BYTES = 256 * 1024**2  # no JSON file this program reads is near this; a larger one is not read at all
MAX_LIST_BYTES = 256 * 1024**2  # a list of 1,000,000 images at 250 characters a line


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class NotAFile(OSError):
    """A path that is not a regular file (a FIFO, a device, a folder, a socket), or one too large to read."""

    def __init__(self, path, what: str):
        super().__init__(errno.EINVAL, what, str(path))

    def __str__(self) -> str:
        return f"'{self.filename}' is {self.strerror}"


def open_regular(path, limit: int | None = None):
    """``path`` opened for reading in binary, only when it is a regular file of at most ``limit`` bytes; else
    NotAFile, before a byte is read. Opening never blocks: a named pipe (FIFO) named where a file belongs would
    hang a plain ``open`` until something writes to it, and a device would stream forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
            raise NotAFile(path, f"{kind}, not a file")
        if limit is not None and info.st_size > limit:
            raise NotAFile(path, f"{info.st_size:,} bytes, more than the {limit:,} such a file may hold")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit`` of them (``open_regular``: never a FIFO or a device)."""
    with open_regular(path, limit) as f:
        return f.read(limit + 1)


def read_tail_text(path, size: int = 64 * 1024) -> str:
    """The last ``size`` bytes of a regular file as text (a log's last lines), whatever the file's length."""
    with open_regular(path) as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - size))
        return f.read(size).decode("utf-8", "replace")


def foreign_zip(source) -> str | None:
    """What a zip archive that is not a PyTorch file is (torch.save writes a zip holding ``<name>/data.pkl``),
    e.g. "a zip archive of 398 file(s) ('ants/0013035.jpg', …)"; None for anything else (a checkpoint, a
    legacy pickle, a damaged file: torch.load says what is wrong with those)."""
    try:
        if not zipfile.is_zipfile(source):
            return None
        with zipfile.ZipFile(source) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    finally:
        if hasattr(source, "seek"):
            source.seek(0)
    if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return None
    shown = ", ".join(repr(n[:60]) for n in names[:2]) + (", …" if len(names) > 2 else "")
    return f"a zip archive of {len(names):,} file(s) ({shown})" if names else "an empty zip archive"


def parse_json(text: str | bytes):
    """``json.loads`` for text from a file anyone may have written: nesting too deep for the parser (a
    RecursionError, which is not a ValueError) becomes a ValueError like any other malformed JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply to be a file of this program") from None


def read_json_file(path, encoding: str = "utf-8", limit: int = MAX_JSON_BYTES):
    """A JSON file, read only when it is at most ``limit`` bytes (OSError, UnicodeDecodeError or ValueError
    otherwise, as reading and parsing it would raise)."""
    try:
        f = open_regular(path, limit)
    except NotAFile as exc:
        raise ValueError(exc.strerror) from None
    with f:
        data = f.read(limit + 1)
    return parse_json(data.decode(encoding))


def append_jsonl(path, record: dict) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
    except OSError as exc:
        full = as_disk_full(exc, path)
        if full:
            raise full from None
        raise
