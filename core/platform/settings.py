"""Every ``TLD_*`` setting, read from the environment at call time, in this one place.

Call ``settings()`` where a value is needed (not at import time), so a changed environment,
a test's ``monkeypatch.setenv`` or a server restarted with other values takes effect. A value
that cannot be read says which variable is wrong and what it accepts.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

GiB, MiB = 1024**3, 1024**2
# The server's upload cap (.streamlit/config.toml, server.maxUploadSize, in MB; a test keeps them equal): the
# largest file a page takes is a weights file, and VGG16's is 528 MB.
UPLOAD_CAP_MB = 600


@dataclass(frozen=True)
class Settings:
    workspace: Path  # TLD_WORKSPACE: datasets, list files, runs and caches
    allowed_roots: tuple[Path, ...]  # TLD_ALLOWED_ROOTS: folders the app may read (os.pathsep-separated)
    data_root: str | None  # TLD_DATA_ROOT: the workspace's default dataset (None: the demo)
    example_dataset_url: str  # TLD_EXAMPLE_DATASET_URL: pre-filled on the Dataset page's download tab
    max_image_pixels: int  # TLD_MAX_IMAGE_PIXELS
    max_image_bytes: int  # TLD_MAX_IMAGE_BYTES: per uploaded image
    max_zip_bytes: int  # TLD_MAX_ZIP_BYTES: a dataset zip's extracted size
    feature_cache_bytes: int  # TLD_FEATURE_CACHE_BYTES
    download_timeout_s: float  # TLD_DOWNLOAD_TIMEOUT
    password: str | None  # TLD_PASSWORD: when set, every page asks for it once per session
    max_running: int | None  # TLD_MAX_RUNNING: runs training at once (None: 1 on CPU, the GPU count on CUDA)
    max_page_work: int  # TLD_MAX_PAGE_WORK: heavy in-page jobs (check, finder, search, TTA, predict many) at once
    screenshots: Path | None  # TLD_SCREENSHOTS: the browser test keeps a screenshot of each page there


def _show(number) -> str:
    return f"{number:,}" if isinstance(number, int) else f"{number:g}"


def _number(name: str, default, low, high, *, whole: bool = True):
    """``$name`` as a number from ``low`` to ``high`` (``default`` when unset); anything else is a ConfigError
    naming the variable, the value and what is allowed (nan, inf, 1e999 and words included)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    kind = "a whole number" if whole else "a number"
    allowed = f"{name}={raw[:40]!r} is not allowed: give {kind} from {_show(low)} to {_show(high)}"
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(allowed) from None
    if not math.isfinite(value) or not low <= value <= high or (whole and not value.is_integer()):
        raise ConfigError(allowed)
    return int(value) if whole else value


def password_setting() -> str | None:
    """TLD_PASSWORD alone, for the gate in front of the server: it must not depend on any other value
    being readable (a garbage TLD_MAX_RUNNING must never open the gate)."""
    return os.environ.get("TLD_PASSWORD") or None


_SETTINGS_FROM = ("TLD_WORKSPACE", "TLD_ALLOWED_ROOTS", "TLD_DATA_ROOT", "TLD_EXAMPLE_DATASET_URL",
                  "TLD_MAX_IMAGE_PIXELS", "TLD_MAX_IMAGE_BYTES", "TLD_MAX_ZIP_BYTES", "TLD_FEATURE_CACHE_BYTES",
                  "TLD_DOWNLOAD_TIMEOUT", "TLD_PASSWORD", "TLD_MAX_RUNNING", "TLD_MAX_PAGE_WORK", "TLD_SCREENSHOTS")
_last: list = [None, None]  # the environment (and folder) the settings were last read from, and those settings


def settings() -> Settings:
    """The settings in force: read again whenever a variable above (or the current folder) changed, else the ones
    read last (a scan asks once per image: reading and resolving them each time cost 160 µs, 16 s at 100,000)."""
    key = (tuple(os.environ.get(name) for name in _SETTINGS_FROM), os.getcwd())
    if _last[0] != key:
        _last[1] = _read_settings()  # raises on a bad value, and then remembers nothing
        _last[0] = key
    return _last[1]


def _read_settings() -> Settings:
    workspace = Path(os.environ.get("TLD_WORKSPACE") or "workspace").expanduser().resolve()
    configured = os.environ.get("TLD_ALLOWED_ROOTS", "")
    roots = tuple(Path(p).expanduser().resolve() for p in configured.split(os.pathsep) if p.strip())
    return Settings(
        workspace=workspace,
        allowed_roots=roots or (workspace, Path.cwd().resolve()),
        data_root=os.environ.get("TLD_DATA_ROOT") or None,
        example_dataset_url=os.environ.get("TLD_EXAMPLE_DATASET_URL", ""),
        max_image_pixels=_number("TLD_MAX_IMAGE_PIXELS", 64_000_000, 1, 1_000_000_000),
        max_image_bytes=_number("TLD_MAX_IMAGE_BYTES", 20 * MiB, 1, UPLOAD_CAP_MB * MiB),
        max_zip_bytes=_number("TLD_MAX_ZIP_BYTES", 2 * GiB, 1, 1024 * GiB),
        feature_cache_bytes=_number("TLD_FEATURE_CACHE_BYTES", 2 * GiB, 0, 1024**5),
        download_timeout_s=_number("TLD_DOWNLOAD_TIMEOUT", 20.0, 0.1, 3600.0, whole=False),
        password=password_setting(),
        max_running=_number("TLD_MAX_RUNNING", None, 1, 1024),
        max_page_work=_number("TLD_MAX_PAGE_WORK", 2, 1, 256),
        screenshots=Path(os.environ["TLD_SCREENSHOTS"]) if os.environ.get("TLD_SCREENSHOTS") else None,
    )
