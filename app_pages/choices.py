"""This visitor's choices and what they point to: kept in the session and the URL (a reload or a shared link keeps
them; nothing one visitor picks changes what another sees), the data root and its split (cached), the stored data
check, the architecture and the weights file."""
from __future__ import annotations

import os
from dataclasses import asdict

import streamlit as st

from core.analysis.datacheck import DataReport, load_report, report_path
from core.data.demo import ensure_demo_dataset
from core.data.split import Split, split_dataset
from core.data.versions import load_version
from core.models.weights import NO_WEIGHTS, PRETRAINED, resolve_weights
from core.models.weights import default_arch as default_arch_and_reason
from core.platform.errors import UserError, WeightsError
from core.platform.figures import pct
from core.platform.workspace import (
    allowed_roots,
    check_allowed,
    checks_dir,
    default_data_root,
    is_allowed,
    path_problem,
    remember_data_root,
    remembered_data_root,
    workspace_dir,
)
from core.spec.archs import ARCHITECTURES
from core.spec.config import FREEZE_MODES, Choices, field_range


# Each visitor's choices live in their session and in the URL (so a reload or a shared link keeps
# them); nothing one visitor picks changes what another sees. Values from the URL are typed by
# anyone: each is checked, and a bad one falls back to the default.
def _within(value, name: str):
    low, high = field_range(name, ui=True)
    return value if low <= value <= high else None


def _path_text(value: str) -> str | None:
    return None if path_problem(value) else value


DEFAULTS = asdict(Choices())


_PARSERS = {
    "data_root": _path_text, "weights_file": _path_text,
    "train_ratio": lambda v: _within(float(v), "train_ratio"),
    "val_ratio": lambda v: _within(float(v), "val_ratio"),
    "seed": lambda v: _within(int(v), "seed"),
    "arch": lambda v: v if v in ARCHITECTURES else None,
    "head_variant": lambda v: v if v in {x.name for spec in ARCHITECTURES.values() for x in spec.variants} else None,
    # "none" as on the command line; "scratch" is how links made before said it
    "weights_mode": lambda v: {PRETRAINED: PRETRAINED, NO_WEIGHTS: NO_WEIGHTS, "scratch": NO_WEIGHTS}.get(v),
    "freeze": lambda v: v if v in FREEZE_MODES else None,
    "letterbox": lambda v: {"True": True, "False": False}.get(v),
}


def _from_url() -> dict:
    chosen = {}
    for name, parse in _PARSERS.items():
        raw = st.query_params.get(name)
        try:
            value = parse(raw) if raw is not None and len(raw) < 4096 else None
        except ValueError:
            value = None
        if value is not None:
            chosen[name] = value
    return chosen


def _to_url(choices: dict) -> None:
    for name, value in choices.items():
        if value in (None, "") or value == DEFAULTS[name]:
            st.query_params.pop(name, None)
        elif st.query_params.get(name) != str(value):
            st.query_params[name] = str(value)


def load_state() -> Choices:
    """This visitor's choices (data root, split, model, weights, freeze mode, letterbox)."""
    if "choices" not in st.session_state:
        st.session_state["choices"] = {**DEFAULTS, **_from_url()}
    choices = st.session_state["choices"]
    _to_url(choices)
    return Choices(**choices)


def save_state(**changes) -> Choices:
    unknown = set(changes) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"unknown choices {sorted(unknown)}; allowed: {sorted(DEFAULTS)}")
    load_state()
    st.session_state["choices"].update(changes)
    _to_url(st.session_state["choices"])
    return Choices(**st.session_state["choices"])


def visitor() -> str:
    """Whose remembered choices to use: everyone's without a password; with one, this client address's."""
    from app_pages.gate import configured_password

    return f"address {client_address()}" if configured_password() else "everyone"


def client_address() -> str:
    try:
        address = st.context.ip_address
    except Exception:  # no request behind this run
        address = None
    return address if isinstance(address, str) and address else "local"  # AppTest hands out a stand-in object


@st.cache_resource(show_spinner="Generating the demo dataset (first launch only)…")
def demo_root(workspace: str) -> str:
    return str(ensure_demo_dataset(workspace))


def choose_data_root(path) -> None:
    """Make ``path`` this visitor's data root, now (session and URL) and next time (the workspace)."""
    save_state(data_root=str(path))
    remember_data_root(path, visitor())


def data_root() -> str:
    """The current data root: the one chosen in this session (or the link), else the one this visitor chose
    last time, else the workspace's default, else the demo."""
    for chosen in (load_state().data_root, remembered_data_root(visitor()), default_data_root()):
        try:
            if chosen and check_allowed(chosen).is_dir():
                return str(check_allowed(chosen))
        except (UserError, OSError):  # a root from a hand-edited URL that this app may not read
            continue
    try:
        return demo_root(str(workspace_dir()))
    except UserError as exc:  # e.g. a full disk on first launch: say so on every page instead of crashing
        st.error(str(exc))
        st.stop()


def _folder_stamp(root: str) -> float:
    # Cheap change detector: adding or removing a class or image touches a folder's mtime. Two levels,
    # for datasets that ship split into train/ and val/ folders of class folders.
    try:
        stamps = [os.stat(root).st_mtime]
        for entry in os.scandir(root):
            if entry.is_dir():
                stamps.append(entry.stat().st_mtime)
                stamps += [e.stat().st_mtime for e in os.scandir(entry.path) if e.is_dir()]
        return max(stamps)
    except OSError:
        return 0.0


@st.cache_data(show_spinner="Scanning the dataset…", max_entries=32)
def _split_summary(root: str, ratio: float, seed: int, val_ratio: float, stamp: float, version: str) -> dict:
    split = _split(root, ratio, seed, val_ratio, stamp, version)
    return {"summary": split.summary(), "train": split.train, "val": split.val, "test": split.test}


def split_summary(root: str, state: Choices) -> dict:
    """The split of ``root`` with this visitor's ratios and seed and the root's dataset version, as a summary
    (cached until a folder or the version changes)."""
    check_allowed(root)
    return _split_summary(root, state.train_ratio, state.seed, state.val_ratio, _folder_stamp(root),
                          _version_key(root))


@st.cache_data(show_spinner="Scanning the dataset…", max_entries=16)
def _split(root: str, ratio: float, seed: int, val_ratio: float, stamp: float, version: str) -> Split:
    """``version``: the dataset version's key ("" for none), so a new decision makes a new split."""
    edits = load_version(root).edits() if version else None
    return split_dataset(root, ratio, seed, val_ratio=val_ratio, allowed_roots=allowed_roots(), edits=edits)


def _version_key(root: str) -> str:
    version = load_version(root)
    return f"{version.name}:{version.changes[-1].time if version.changes else 0}" if version.changes else ""


def current_split(root: str, state: Choices, *, as_version: bool = True) -> Split:
    """The split a run started now would train on: the folder with the dataset version applied (``as_version``
    False: the folder as it is, which the data check describes). Cached until a folder or the version changes."""
    check_allowed(root)
    return _split(root, state.train_ratio, state.seed, state.val_ratio, _folder_stamp(root),
                  _version_key(root) if as_version else "")


def with_version(root: str | None, settings: dict) -> dict:
    """A run's settings with the data root's dataset version: its relabels, drops and groups, and its name."""
    if not root:
        return settings
    fields = load_version(root).config_fields()
    fields["keep_together"] = (*settings.pop("keep_together", ()), *fields["keep_together"])
    return {**settings, **fields}


def split_sizes(summary: dict) -> str:
    return (f"{summary['train_images']:,} train / {summary['val_images']:,} validation / "
            f"{summary['test_images']:,} test")


def split_line(summary: dict) -> str:
    """What the split actually did, in one line, the same on every page: the ratios only where they applied."""
    sizes = split_sizes(summary) + " images"
    if summary.get("given_by"):
        return (f"{sizes} · split as the dataset gives it ({summary['given_by']})"
                + (f"; validation: {pct(summary['val_ratio'], 0)} of train, seed {summary['seed']}"
                   if summary.get("val_ratio") else ""))
    return (f"{sizes} · train ratio {summary['train_ratio']}, validation {pct(summary['val_ratio'] or 0, 0)} of train, "
            f"seed {summary['seed']}")


KEEP_GROUPS = "keep_duplicate_groups"  # session flag: the Check page re-split, so runs keep duplicate groups together


@st.cache_data(max_entries=8, show_spinner=False)
def _stored_check(fingerprint: str, mtime: float) -> DataReport | None:
    return load_report(checks_dir(), fingerprint)


def stored_check(fingerprint: str) -> DataReport | None:
    """The stored data check of these images (``core.analysis.datacheck``), or None; read again when its file changes.
    A damaged file raises DatasetError (a UserError)."""
    try:
        mtime = report_path(checks_dir(), fingerprint).stat().st_mtime
    except OSError:
        return None
    return _stored_check(fingerprint, mtime)


def default_arch() -> str:
    """resnet18 when its weights are on disk; otherwise the backbone that ships with its weights."""
    state = load_state()
    if state.arch in ARCHITECTURES:
        return state.arch
    return default_arch_and_reason()[0]


def resolve_weights_file(arch: str, state: Choices | None = None) -> str | None:
    """The weights file the current choices point to; None for scratch or when none is on this machine."""
    state = state or load_state()
    choice = PRETRAINED if state.weights_mode == PRETRAINED else NO_WEIGHTS
    user_file = state.weights_file if state.weights_file and is_allowed(state.weights_file) else None
    try:
        return resolve_weights(ARCHITECTURES[arch], choice, user_file)
    except WeightsError:
        return None
