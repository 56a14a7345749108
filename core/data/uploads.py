"""Getting the user's data in without a shell: zip uploads and dataset downloads.

Archives are checked before anything is written: no absolute or ``..`` paths (zip-slip),
no links, and limits on the number of files, the total size and the compression ratio
(zip bombs). Sizes are enforced again while extracting, since headers can lie.
"""
from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from ..platform.download import DownloadProgress, download_file
from ..platform.errors import UploadError, UserError
from ..platform.io import DISK_FULL, free_bytes
from ..platform.settings import settings

MAX_ZIP_FILES = 200_000
MAX_COMPRESSION_RATIO = 200  # JPEG/PNG barely compress; text and bombs compress by far more
DISK_MARGIN_BYTES = 64 * 1024**2  # left free after an extraction, so the app can still write its runs


def _safe_member_path(name: str) -> PurePosixPath | None:
    """The member's relative path, or None for a folder entry; raise on anything that escapes."""
    normalised = name.replace("\\", "/")
    path = PurePosixPath(normalised)
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":") or ".." in path.parts:
        raise UploadError(f"the archive entry '{name}' points outside the extraction folder "
                          "(absolute path or '..'); the archive was refused and nothing was extracted")
    if normalised.endswith("/"):
        return None
    return path


def _check_member(info: zipfile.ZipInfo) -> None:
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UploadError(f"the archive entry '{info.filename}' is a symbolic link; links are not accepted")
    if info.flag_bits & 0x1:
        raise UploadError(f"the archive entry '{info.filename}' is encrypted; password-protected zips are not "
                          "supported, zip the folders again without a password")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        raise UploadError(f"the archive entry '{info.filename}' uses compression method {info.compress_type}, "
                          "which cannot be read here; use zip's standard (deflate) compression")
    if any(len(part.encode()) > 255 for part in PurePosixPath(info.filename).parts):
        raise UploadError(f"the archive entry '{info.filename[:80]}…' has a name longer than 255 bytes, "
                          "more than file systems allow")


def check_zip(archive: zipfile.ZipFile, *, max_total: int | None = None, max_files: int = MAX_ZIP_FILES,
              max_ratio: float = MAX_COMPRESSION_RATIO) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Check every entry and the archive as a whole before anything is written."""
    max_total = settings().max_zip_bytes if max_total is None else max_total
    members = []
    total = packed = 0
    for info in archive.infolist():
        path = _safe_member_path(info.filename)
        if path is None:
            continue
        if path.parts[0] == "__MACOSX" or path.name.startswith("."):
            continue  # Finder metadata, not data
        _check_member(info)
        total += info.file_size
        packed += info.compress_size
        if info.file_size > max_ratio * max(info.compress_size, 1) and info.file_size > 1024**2:
            raise UploadError(f"'{info.filename}' expands {info.file_size / max(info.compress_size, 1):.0f}× "
                              f"(limit {max_ratio:.0f}×): this looks like a zip bomb and was refused")
        members.append((info, path))
    if len(members) > max_files:
        raise UploadError(f"the archive holds {len(members):,} files, more than the limit of {max_files:,}")
    if total > max_total:
        raise UploadError(f"the archive expands to {total:,} bytes, more than the limit of {max_total:,} "
                          "(TLD_MAX_ZIP_BYTES)")
    if total > 1024**2 and total > max_ratio * max(packed, 1):
        raise UploadError(f"the archive expands {total / max(packed, 1):.0f}× overall (limit {max_ratio:.0f}×): "
                          "this looks like a zip bomb and was refused")
    if not members:
        raise UploadError("the archive holds no files")
    return members


def _single_top_folder(members) -> str | None:
    tops = {path.parts[0] for _, path in members}
    if len(tops) == 1 and all(len(path.parts) > 1 for _, path in members):
        return tops.pop()
    return None


def unique_folder(parent: Path, name: str) -> Path:
    """``parent/name``, or ``name-2``, ``name-3``… so an existing folder is never overwritten."""
    candidate, k = parent / name, 2
    while candidate.exists():
        candidate, k = parent / f"{name}-{k}", k + 1
    return candidate


def _check_free_space(folder: Path, needed: int) -> None:
    free = free_bytes(folder)
    if free is not None and free < needed + DISK_MARGIN_BYTES:
        raise UploadError(f"not enough free disk space in '{folder}': the archive needs {needed / 1024**2:.0f} MB "
                          f"and {free / 1024**2:.0f} MB are free; nothing was extracted")


def _member_failure(info: zipfile.ZipInfo, exc: BaseException) -> UploadError:
    """One message, naming the entry, for whatever extracting it raised."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        reason = "the disk filled up while extracting"
    elif isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        reason = "its name is longer than the file system allows"
    elif isinstance(exc, (FileExistsError, NotADirectoryError, IsADirectoryError)):
        reason = "another entry of the archive has the same name (two files, or a file and a folder)"
    elif isinstance(exc, zipfile.BadZipFile):
        reason = f"the archive is damaged ({exc})"
    elif isinstance(exc, RuntimeError) and "encrypted" in str(exc):
        reason = "it is encrypted; password-protected zips are not supported"
    elif isinstance(exc, NotImplementedError):
        reason = f"its compression method cannot be read here ({exc})"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return UploadError(f"could not extract '{info.filename}': {reason}; nothing was kept")


def _extract_members(archive, members, tmp: Path, strip: bool, max_total: int) -> None:
    written = 0
    for info, path in members:
        parts = path.parts[1:] if strip else path.parts
        out = tmp.joinpath(*parts)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(out, "xb") as dst:
                while chunk := src.read(1 << 16):
                    written += len(chunk)
                    if written > max_total:
                        raise UploadError(f"the archive expanded past {max_total:,} bytes while extracting "
                                          "(its headers understate the sizes); refused, nothing was kept")
                    dst.write(chunk)
        except UploadError:
            raise
        except (OSError, zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, ValueError) as exc:
            raise _member_failure(info, exc) from None


def extract_zip(source, dest_parent: str | os.PathLike, name: str, *, max_total: int | None = None,
                max_ratio: float = MAX_COMPRESSION_RATIO) -> Path:
    """Extract a zip of class folders into a new folder under ``dest_parent``; return the data root.

    A zip whose files all sit in one top folder (``flowers/daisy/…``) yields that folder's content.
    Everything is checked first (paths, links, encryption, sizes, ratios, free space); the bytes
    written are counted again; on any failure nothing partial is left behind.
    """
    max_total = settings().max_zip_bytes if max_total is None else max_total
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(f"this is not a readable zip archive ({exc})") from None
    with archive:
        members = check_zip(archive, max_total=max_total, max_ratio=max_ratio)
        dest_parent = Path(dest_parent)
        dest_parent.mkdir(parents=True, exist_ok=True)
        _check_free_space(dest_parent, sum(info.file_size for info, _ in members))
        target = unique_folder(dest_parent, _clean_name(name))
        tmp = Path(tempfile.mkdtemp(dir=dest_parent, prefix=".extract-"))
        try:
            _extract_members(archive, members, tmp, bool(_single_top_folder(members)), max_total)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _clean_name(name: str) -> str:
    stem = Path(name).stem if name.lower().endswith(".zip") else name
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem).strip("-.")
    return cleaned or "dataset"


def download_dataset(url: str, dest_parent: str | os.PathLike, *, progress: DownloadProgress | None = None,
                     timeout: float | None = None) -> Path:
    """Download a zip of class folders from ``url`` and extract it safely; return the data root."""
    if not url.lower().startswith(("http://", "https://")):
        raise UploadError(f"'{url}' is not an http(s) address")
    dest_parent = Path(dest_parent)
    dest_parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_parent, suffix=".zip")
    os.close(fd)
    try:
        try:
            download_file(url, Path(tmp), progress=progress, timeout=timeout, max_bytes=settings().max_zip_bytes)
        except UserError as exc:
            raise UploadError(str(exc)) from None
        name = Path(url.split("?")[0].rstrip("/")).name or "download"
        return extract_zip(tmp, dest_parent, name)
    finally:
        Path(tmp).unlink(missing_ok=True)


def image_upload_limit_mb() -> int:
    """The per-image upload cap in the uploader's own unit (Streamlit's MB: 2**20 bytes), at least 1."""
    return max(1, settings().max_image_bytes // 1024**2)


def check_image_upload(data: bytes, name: str) -> None:
    limit = settings().max_image_bytes
    if len(data) > limit:
        # The size as the uploader shows a file's size (10**6 bytes a MB), the limit as it shows its limit.
        shown = f"{limit / 1024**2:g} MB" if limit >= 1024**2 else f"{limit:,} bytes"
        raise UploadError(f"'{name}' is {len(data) / 1e6:.1f} MB, more than the limit of {shown} per image")
