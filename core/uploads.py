"""Getting the user's data in without a shell: zip uploads and dataset downloads.

Archives are checked before anything is written: no absolute or ``..`` paths (zip-slip),
no links, and limits on the number of files, the total size and the compression ratio
(zip bombs). Sizes are enforced again while extracting, since headers can lie.
"""
from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from .errors import UploadError, UserError
from .weights import Progress, download_file

MAX_ZIP_TOTAL_BYTES = int(os.environ.get("TLD_MAX_ZIP_BYTES", 2 * 1024**3))
MAX_ZIP_FILES = 200_000
MAX_COMPRESSION_RATIO = 200  # JPEG/PNG barely compress; text and bombs compress by far more
MAX_IMAGE_UPLOAD_BYTES = int(os.environ.get("TLD_MAX_IMAGE_BYTES", 20 * 1024**2))


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


def check_zip(archive: zipfile.ZipFile, *, max_total: int = MAX_ZIP_TOTAL_BYTES, max_files: int = MAX_ZIP_FILES,
              max_ratio: float = MAX_COMPRESSION_RATIO) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    members = []
    total = 0
    for info in archive.infolist():
        path = _safe_member_path(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UploadError(f"the archive entry '{info.filename}' is a symbolic link; links are not accepted")
        if path is None:
            continue
        if path.parts[0] == "__MACOSX" or path.name.startswith("."):
            continue  # Finder metadata, not data
        total += info.file_size
        if info.file_size > max_ratio * max(info.compress_size, 1) and info.file_size > 1024**2:
            raise UploadError(f"'{info.filename}' expands {info.file_size / max(info.compress_size, 1):.0f}× "
                              f"(limit {max_ratio:.0f}×): this looks like a zip bomb and was refused")
        members.append((info, path))
    if len(members) > max_files:
        raise UploadError(f"the archive holds {len(members):,} files, more than the limit of {max_files:,}")
    if total > max_total:
        raise UploadError(f"the archive expands to {total:,} bytes, more than the limit of {max_total:,}")
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


def extract_zip(source, dest_parent: str | os.PathLike, name: str, *, max_total: int = MAX_ZIP_TOTAL_BYTES,
                max_ratio: float = MAX_COMPRESSION_RATIO) -> Path:
    """Extract a zip of class folders into a new folder under ``dest_parent``; return the data root.

    A zip whose files all sit in one top folder (``flowers/daisy/…``) yields that folder's content.
    """
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(f"this is not a readable zip archive ({exc})") from None
    with archive:
        members = check_zip(archive, max_total=max_total, max_ratio=max_ratio)
        strip = _single_top_folder(members)
        dest_parent = Path(dest_parent)
        dest_parent.mkdir(parents=True, exist_ok=True)
        target = unique_folder(dest_parent, _clean_name(name))
        tmp = Path(tempfile.mkdtemp(dir=dest_parent, prefix=".extract-"))
        try:
            written = 0
            for info, path in members:
                parts = path.parts[1:] if strip else path.parts
                out = tmp.joinpath(*parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(out, "wb") as dst:
                    while chunk := src.read(1 << 16):
                        written += len(chunk)
                        if written > max_total:
                            raise UploadError(f"the archive expanded past {max_total:,} bytes while extracting "
                                              "(its headers understate the sizes); refused")
                        dst.write(chunk)
            os.replace(tmp, target)
        except zipfile.BadZipFile as exc:
            raise UploadError(f"the archive is damaged ({exc}); nothing was kept") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _clean_name(name: str) -> str:
    stem = Path(name).stem if name.lower().endswith(".zip") else name
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem).strip("-.")
    return cleaned or "dataset"


def download_dataset(url: str, dest_parent: str | os.PathLike, *, progress: Progress | None = None,
                     timeout: float = 20.0) -> Path:
    """Download a zip of class folders from ``url`` and extract it safely; return the data root."""
    if not url.lower().startswith(("http://", "https://")):
        raise UploadError(f"'{url}' is not an http(s) address")
    dest_parent = Path(dest_parent)
    dest_parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_parent, suffix=".zip")
    os.close(fd)
    try:
        try:
            download_file(url, Path(tmp), progress=progress, timeout=timeout, max_bytes=MAX_ZIP_TOTAL_BYTES)
        except UserError as exc:
            raise UploadError(str(exc)) from None
        name = Path(url.split("?")[0].rstrip("/")).name or "download"
        return extract_zip(tmp, dest_parent, name)
    finally:
        Path(tmp).unlink(missing_ok=True)


def check_image_upload(data: bytes, name: str) -> None:
    if len(data) > MAX_IMAGE_UPLOAD_BYTES:
        raise UploadError(f"'{name}' is {len(data) / 1024**2:.1f} MB, more than the limit of "
                          f"{MAX_IMAGE_UPLOAD_BYTES / 1024**2:.0f} MB per image")
