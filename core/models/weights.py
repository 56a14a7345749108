"""The weights manager: where pretrained weights come from, and reading them safely.

Sources are tried in this order: a file the user names; torch hub's checkpoint cache
(torchvision's file names and older ones); a file uploaded in the browser (stored in that
cache); weights shipped inside a pip package; a download through torchvision's URL.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch

from ..platform.download import DownloadProgress, download_file, sha256_of
from ..platform.errors import DownloadError, WeightsError
from ..platform.io import DiskFull, atomic_write_bytes, foreign_zip, torch_load_tensors
from ..spec.archs import OFFLINE_ARCH, PREFERRED_ARCH, get_arch

HASH_PREFIX = re.compile(r"-([a-f0-9]*)\.")  # torchvision's own rule for file names like resnet18-f37072fd.pth

# ----------------------------------------------------------------------------- reading files
def _unwrap(obj, source: str) -> tuple[dict, list[str]]:
    notes = []
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and not torch.is_tensor(obj.get(key)):
            notes.append(f"the file wraps its weights in a '{key}' entry; that entry was used")
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"'{source}' holds a {type(obj).__name__}, not a state dict "
                           "(a mapping of parameter names to tensors)")
    not_tensors = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise WeightsError(f"'{source}' is not a state dict: entries {', '.join(map(str, not_tensors[:5]))} "
                           "are not tensors")
    check_finite(obj, source)
    if all(str(k).startswith("module.") for k in obj):
        notes.append("keys carried the 'module.' prefix of DataParallel/DistributedDataParallel; it was removed")
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj), notes


def check_finite(state: dict, source: str) -> None:
    """Refuse a state dict holding NaN or infinite values: a model built from it predicts NaN for every image."""
    bad = [str(k) for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"'{source}' holds values that are not finite numbers (NaN or infinity) in {len(bad)} "
                           f"tensor(s) ({', '.join(bad[:4])}{' …' if len(bad) > 4 else ''}); a model made from it "
                           "cannot predict. Was its training diverging (a learning rate too high)?")


def load_state_dict_file(path: str | os.PathLike | bytes, name: str | None = None) -> tuple[dict, list[str]]:
    """Read a state dict (a file, or the bytes of an upload called ``name``) with ``weights_only=True``;
    return it and notes on any unwrapping."""
    source: io.BytesIO | Path
    if isinstance(path, (bytes, bytearray)):
        source, path = io.BytesIO(path), name or "the uploaded file"
    else:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file '{path}' does not exist")
        source = path
    foreign = foreign_zip(source)
    if foreign:
        raise WeightsError(f"'{path}' is {foreign}, not a PyTorch weights file (a .pth/.pt saved by torch.save)")
    try:
        obj = torch_load_tensors(source)
    except pickle.UnpicklingError as exc:
        blocked = re.search(r"GLOBAL ([\w.]+)|reduce for ([\w.]+)", str(exc))
        if blocked:
            raise WeightsError(f"'{path}' was refused: loading it would call {blocked.group(1) or blocked.group(2)}, "
                               "i.e. run code; only plain tensors are accepted (weights_only=True)") from None
        raise WeightsError(f"'{path}' is not a readable PyTorch weights file: it is damaged, or holds objects "
                           "other than tensors, which weights_only=True refuses") from None
    except Exception as exc:  # torch.load fails in many ways on a damaged file
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise WeightsError(f"'{path}' could not be read, it is probably truncated or corrupt "
                           f"({type(exc).__name__}{': ' + first if first else ''})") from None
    return _unwrap(obj, str(path))


def check_hash_prefix(path: str | os.PathLike, file_name: str | None = None) -> None:
    """Check the sha256 prefix that torchvision puts in its file names, as torch.hub does."""
    match = HASH_PREFIX.search(file_name or Path(path).name)
    if not match or not match.group(1):
        return
    digest = sha256_of(path)
    if not digest.startswith(match.group(1)):
        raise WeightsError(f"'{path}' is damaged or not the official file: its sha256 starts with "
                           f"{digest[:len(match.group(1))]}, the name promises {match.group(1)}")


_verified: dict[tuple, str | None] = {}


def hash_problem(path: Path) -> str | None:
    """Why a file named like torchvision's fails its hash-prefix check, or None; memoised per file version."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        try:
            check_hash_prefix(path)
            _verified[key] = None
        except WeightsError as exc:
            _verified[key] = str(exc)
    return _verified[key]


# ----------------------------------------------------------------------------- sources
def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


@dataclass
class WeightsSource:
    kind: str  # "user file", "hub cache", "upload", "package", "download"
    path: str | None
    available: bool
    detail: str


def list_sources(spec, user_file: str | os.PathLike | None = None) -> list[WeightsSource]:
    """Every place the weights for ``spec`` could come from, in the order they are tried."""
    sources = []
    if user_file:
        p = Path(user_file).expanduser()
        sources.append(WeightsSource("user file", str(p), p.is_file(),
                                     "file you named" if p.is_file() else "file you named does not exist"))
    cache = hub_checkpoint_dir()
    for name in spec.hub_file_names:
        p = cache / name
        if not p.is_file():
            sources.append(WeightsSource("hub cache", str(p), False, "not in torch hub's cache"))
            continue
        problem = hash_problem(p)
        sources.append(WeightsSource("hub cache", str(p), problem is None,
                                     problem or "in torch hub's cache (downloaded or uploaded earlier)"))
    for p in sorted(cache.glob(f"{spec.name}-upload-*.pth"), key=lambda f: f.stat().st_mtime, reverse=True):
        sources.append(WeightsSource("upload", str(p), True, "uploaded in the browser earlier, kept in the cache"))
    if spec.packaged:
        package_path = spec.packaged.path()
        sources.append(WeightsSource("package", package_path, bool(package_path and Path(package_path).is_file()),
                                     f"shipped with the pip package {spec.packaged.package}"))
    if spec.download_url:
        sources.append(WeightsSource("download", spec.download_url, False,
                                     "download from the internet (needs network)"))
    return sources


def find_weights(spec, user_file: str | os.PathLike | None = None) -> WeightsSource | None:
    """The first source that is on disk now, or None."""
    for source in list_sources(spec, user_file):
        if source.available:
            return source
    return None


def default_arch(user_file: str | os.PathLike | None = None) -> tuple[str, str]:
    """The architecture to use when none was asked for, and why: resnet18 (the recipe's) when its pretrained
    weights are on this machine (``user_file`` counts: a file the user named is the recipe's), else
    EfficientNet-Lite0, whose ImageNet weights ship with the app."""

    if find_weights(get_arch(PREFERRED_ARCH), user_file):
        return PREFERRED_ARCH, ""
    return OFFLINE_ARCH, (f"no pretrained {PREFERRED_ARCH} weights on this machine (looked in torch hub's cache, "
                          f"{hub_checkpoint_dir()}); using "
                          f"{OFFLINE_ARCH}, whose ImageNet weights ship with the app (--arch {PREFERRED_ARCH} to "
                          "insist)")


# ----------------------------------------------------------------------------- storing
def shape_mismatches(state: dict, model_state: dict) -> list[str]:
    """'key: file (shape) vs model (shape)' for every shared key whose shapes differ."""
    return [f"{k}: file {tuple(v.shape)} vs model {tuple(model_state[k].shape)}"
            for k, v in state.items() if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)]


def check_fits(spec, state: dict, model_state: dict, head_name: str, source: str) -> None:
    """The one rule for "does this weights file fit the architecture": every tensor the file shares
    with the model has the model's shape, and every tensor of the body (all but ``head_name``) is there.

    Used by the surgery (against the adapted model) and before an upload is stored (against the
    ImageNet model). Raises WeightsError naming keys and shapes.
    """
    mismatched = shape_mismatches(state, model_state)
    # BatchNorm's num_batches_tracked is absent from older files (resnet18-5c106cde.pth) and harmless.
    body_missing = [k for k in model_state if k not in state and not _is_under(k, head_name)
                    and not k.endswith("num_batches_tracked")]
    if mismatched or body_missing:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} tensors have other shapes ({'; '.join(mismatched[:4])}"
                         f"{' …' if len(mismatched) > 4 else ''})")
        if body_missing:
            parts.append(f"{len(body_missing)} of the model's tensors are not in the file "
                         f"({', '.join(body_missing[:4])}{' …' if len(body_missing) > 4 else ''})")
        raise WeightsError(f"'{source}' does not fit {spec.name}: " + "; ".join(parts) +
                           ". Is it a file for another architecture?")


def _is_under(name: str, module_name: str) -> bool:
    return name == module_name or name.startswith(module_name + ".")


def store_uploaded_weights(spec, data: bytes, file_name: str) -> Path:
    """Save an uploaded weights file into torch hub's cache after checking, in memory, that it fits ``spec``.

    Messages name the user's file. Weights are not secret: the stored file is readable by other users.
    """
    state, _ = load_state_dict_file(data, file_name)
    check_fits(spec, state, spec.build_meta().state_dict(), spec.head, file_name)
    digest = hashlib.sha256(data).hexdigest()
    official = next((n for n in spec.hub_file_names if n == Path(file_name).name), None)
    if official:
        expected = HASH_PREFIX.search(official)
        if expected and expected.group(1) and not digest.startswith(expected.group(1)):
            raise WeightsError(f"'{file_name}' is damaged or not the official file: its sha256 starts with "
                               f"{digest[:len(expected.group(1))]}, the name promises {expected.group(1)}")
    cache = hub_checkpoint_dir()
    target = cache / (official or f"{spec.name}-upload-{digest[:10]}.pth")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data, mode=0o644)
    except (OSError, DiskFull) as exc:
        reason = "the disk is full" if isinstance(exc, DiskFull) else (exc.strerror or str(exc))
        raise WeightsError(f"could not store '{file_name}' in torch hub's cache ({cache}): {reason}") from None
    return target


# ----------------------------------------------------------------------------- download
def download_weights(spec, *, progress: DownloadProgress | None = None, timeout: float | None = None,
                     url: str | None = None) -> Path:
    """Download ``spec``'s torchvision weights into torch hub's cache, checking the hash prefix."""
    url = url or spec.download_url
    if not url:
        raise WeightsError(f"{spec.name} has no download address; its weights come from "
                           f"{spec.packaged.package if spec.packaged else 'a file'}")
    file_name = Path(urllib.parse.urlparse(url).path).name
    target = hub_checkpoint_dir() / file_name
    part = target.with_suffix(".download")
    try:
        download_file(url, part, progress=progress, timeout=timeout)
    except DownloadError as exc:
        raise WeightsError(str(exc)) from None
    try:
        check_hash_prefix(part, file_name)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return target


# ----------------------------------------------------------------------------- the default rule
PRETRAINED, NO_WEIGHTS = "pretrained", "none"


def resolve_weights(spec, choice: str | None = PRETRAINED, user_file: str | os.PathLike | None = None) -> str | None:
    """The weights file a run of ``spec`` starts from; None for random initialisation.

    ``choice`` is ``"pretrained"`` (the default: the first source found, in the order of
    ``list_sources``, ``user_file`` first when given), ``"none"`` (train from scratch) or a file path. The
    pages, the CLI and the benchmark all decide through this one function.
    """
    if choice is None or choice == NO_WEIGHTS:
        return None
    if choice != PRETRAINED:
        path = Path(choice).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file '{choice}' does not exist; give a state-dict file, "
                               f"'{PRETRAINED}' (found automatically) or '{NO_WEIGHTS}' (random initialisation)")
        return str(path)
    source = find_weights(spec, user_file)
    if source is None:
        looked = "; ".join(f"{s.kind}: {s.path}" for s in list_sources(spec, user_file) if s.kind != "download")
        raise WeightsError(
            f"no pretrained {spec.name} weights on this machine (looked in {looked or 'nowhere'}). "
            f"Name a file with --weights FILE, put it in torch hub's cache ({hub_checkpoint_dir()}), "
            + (f"download it from {spec.download_url} " if spec.download_url else "")
            + "or use --arch efficientnet_lite0, whose weights ship with the app and work offline")
    return source.path
