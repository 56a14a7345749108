"""Downloads: a URL streamed into a file through a temporary one, with progress, a size limit and a
clear message on an offline machine; and the SHA-256 of a file. Weights, CIFAR-10 and dataset zips use it."""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from .errors import DownloadError
from .io import DiskFull, atomic_file
from .settings import settings

DownloadProgress = Callable[[int, int | None], None]  # (bytes done, total bytes or None)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, dest: Path, *, progress: DownloadProgress | None = None,
                  timeout: float | None = None, max_bytes: int | None = None) -> Path:
    """Stream ``url`` into ``dest`` through a temporary file; an offline machine gets a clear message."""
    timeout = settings().download_timeout_s if timeout is None else timeout
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(dest, mode=0o644) as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            if max_bytes and total and total > max_bytes:
                raise DownloadError(f"{url} is {total:,} bytes, more than the limit of {max_bytes:,}")
            done = 0
            while chunk := response.read(1 << 16):
                done += len(chunk)
                if max_bytes and done > max_bytes:
                    raise DownloadError(f"{url} sent more than the limit of {max_bytes:,} bytes")
                out.write(chunk)
                if progress:
                    progress(done, total)
        return dest
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"the server answered {exc.code} {exc.reason} for {url}") from None
    except DiskFull as exc:
        raise DownloadError(f"could not save {url}: {exc}") from None
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"could not download {url} ({reason}); this machine seems to be offline or the "
                           "server is unreachable. Put the file on disk and name it, or upload it") from None
