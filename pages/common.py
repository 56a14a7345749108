"""Helpers shared by the pages: cached access to core/ and consistent error display."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from core.appstate import load_state
from core.archs import ARCHITECTURES
from core.data import split_dataset
from core.demo import ensure_demo_dataset
from core.errors import UserError
from core.weights import find_weights
from core.workspace import check_allowed, workspace_dir


@st.cache_resource(show_spinner="Generating the demo dataset (first launch only)…")
def demo_root(workspace: str) -> str:
    return str(ensure_demo_dataset(workspace))


def data_root() -> str:
    """The current data root: the one chosen on the Dataset page, else the demo dataset."""
    chosen = load_state()["data_root"]
    if chosen and Path(chosen).is_dir():
        return chosen
    return demo_root(str(workspace_dir()))


def _folder_stamp(root: str) -> float:
    # Cheap change detector: adding or removing a class or image touches a folder's mtime.
    try:
        return max([os.stat(root).st_mtime] + [e.stat().st_mtime for e in os.scandir(root) if e.is_dir()])
    except OSError:
        return 0.0


@st.cache_data(show_spinner="Scanning the dataset…", max_entries=32)
def _split_summary(root: str, ratio: float, seed: int, stamp: float) -> dict:
    split = split_dataset(root, ratio, seed)
    return {"summary": split.summary(), "train": split.train, "test": split.test}


def split_summary(root: str, ratio: float, seed: int) -> dict:
    check_allowed(root)
    return _split_summary(root, ratio, seed, _folder_stamp(root))


def default_arch() -> str:
    """resnet18 when its weights are on disk; otherwise the backbone that ships with its weights."""
    state = load_state()
    if state["arch"] in ARCHITECTURES:
        return state["arch"]
    return "resnet18" if find_weights(ARCHITECTURES["resnet18"]) else "efficientnet_lite0"


def resolve_weights_file(arch: str, state: dict | None = None) -> str | None:
    """The weights file the current settings point to, or None for training from scratch."""
    state = state or load_state()
    if state["weights_mode"] == "scratch":
        return None
    source = find_weights(ARCHITECTURES[arch], state["weights_file"] or None)
    return source.path if source else None


@contextmanager
def user_errors():
    """Show a UserError as st.error (and stop the page) instead of a traceback."""
    try:
        yield
    except UserError as exc:
        st.error(str(exc))
        st.stop()


def fmt_pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"
