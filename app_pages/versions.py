"""The dataset version on the pages: deciding about an image where a finding is shown (Check page), and the
version in force with its changes, undo and export (Dataset page). Everything goes through core.data.versions:
the user's folder is never written."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import pandas as pd
import streamlit as st

from app_pages.work import plural, user_errors
from core.data.split import Split
from core.data.versions import Action, DatasetVersion, export_copy, export_lists, load_version, record, set_aside, undo
from core.platform.errors import DatasetError
from core.platform.workspace import shown, workspace_dir, workspace_writes

DONE = "ver_done"  # what the last decision did, said once after the rerun it causes


def version_or_none(root: str) -> DatasetVersion | None:
    """The version in force, or None after saying why it cannot be read (a damaged file)."""
    try:
        return load_version(root)
    except DatasetError as exc:
        st.error(str(exc))
        return None


def key_of(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:12]


def decide(root: str, data: Callable[[], Split], action: Action, paths: list[str], *, label: str = "",
           reason: str = "") -> None:
    """Record one decision (refused with a message when the image or class is no longer the data's), then rerun so
    every count on the page is the new version's. ``data``: the split, read only when a decision is made."""
    with user_errors(), workspace_writes("keep the decision"):
        split = data()
        known = {p for p, _ in [*split.train, *split.val, *split.test]}
        version = record(root, action, paths, label=label, reason=reason, classes=split.classes, known=known)
        st.session_state[DONE] = f"{version.name}: {version.changes[-1].describe()} (undo on the Dataset page)"
        st.rerun()


def said_once() -> None:
    if DONE in st.session_state:
        st.success(st.session_state.pop(DONE))


def render_version(root: str, split: Split) -> None:
    """The Dataset page's section: the version in force, its changes with undo, and the export."""
    st.subheader("Dataset version")
    said_once()
    try:
        version = load_version(root)
    except DatasetError as exc:
        st.error(str(exc))
        if st.button("Set the damaged version file aside", key="ver_aside",
                     help="Renames it beside itself (…damaged-<time>.json) and starts again from the folder as it is."):
            with user_errors(), workspace_writes("set the file aside"):
                aside = set_aside(root)
            st.success(f"Set aside as `{aside}`." if aside else "It was gone already.")
        return
    if not version.changes:
        st.caption(f"**{version.name}**: the folder as it is. Relabel, drop or keep one of copies on the Check page "
                   "(or `python -m core fix`): the decisions are kept here, in the workspace; the folder is never "
                   "moved or written.")
        return
    edits = version.edits()
    st.markdown(f"**{version.name}** · {plural(len(edits.relabel), 'image')} relabelled, "
                f"{plural(len(edits.drop), 'image')} dropped, {plural(len(edits.together), 'group')} kept together. "
                "The split above, new runs and the list files use it; your folder is unchanged.")
    rows = [{"version": f"v{c.version}", "change": c.describe(), "reason": c.reason,
             "when": pd.Timestamp(c.time, unit="s").strftime("%Y-%m-%d %H:%M UTC")} for c in reversed(version.changes)]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    latest = version.changes[-1]
    c1, c2 = st.columns([1, 2])
    if c1.button(f"Undo v{latest.version}", key="ver_undo", help=f"Take back: {latest.describe()}"):
        with user_errors(), workspace_writes("undo"):
            new, taken = undo(root)
        st.session_state[DONE] = f"Took back v{taken.version} ({taken.describe()}); now {new.name}."
        st.rerun()
    with c2.popover("Undo an earlier change"):
        made_by = st.selectbox("Change", [c.version for c in reversed(version.changes)], key="ver_pick",
                               format_func=lambda v: next(f"v{c.version}: {c.describe()}" for c in version.changes
                                                          if c.version == v))
        if st.button("Undo it", key="ver_undo_pick"):
            with user_errors(), workspace_writes("undo"):
                new, taken = undo(root, made_by)
            st.session_state[DONE] = f"Took back v{taken.version} ({taken.describe()}); now {new.name}."
            st.rerun()
    render_export(root, split, version)


def render_export(root: str, split: Split, version: DatasetVersion) -> None:
    with st.expander("Export the corrected dataset"):
        st.caption("List files (train.txt, val.txt, test.txt, classes.json and the version) or a copy of the images "
                   "in class folders, written into the workspace. Nothing in your folder is moved or overwritten.")
        name = f"{Path(split.root).name}-{version.name}"
        out = workspace_dir() / "exports" / name
        c1, c2 = st.columns(2)
        if c1.button("Write the corrected lists", key="ver_export_lists"):
            with user_errors(), workspace_writes("export"):
                target = export_lists(split, version, out / "lists")
            st.success(f"Wrote the lists of {version.name} to `{shown(target)}`.")
        if c2.button("Copy the corrected images", key="ver_export_copy",
                     help="Into a new folder, one sub-folder per (corrected) class; refused if it exists already."):
            with user_errors(), workspace_writes("export"):
                bar = st.progress(0.0, text="Copying…")
                copied = export_copy(split, out / "images",
                                     progress=lambda done, total: bar.progress(done / total, text=f"{done}/{total}"))
            st.success(f"Copied {copied:,} images of {version.name} to `{shown(out / 'images')}`.")
