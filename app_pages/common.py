"""Helpers shared by the pages: this visitor's choices, cached access to core/ and consistent error display."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import asdict

import streamlit as st

from core.analysis.datacheck import DataReport, load_report, report_path
from core.data.demo import ensure_demo_dataset
from core.data.images import thumbnail_jpeg
from core.data.split import Split, split_dataset
from core.inference.predict import Predictor, checkpoint_path
from core.models.explain import explain
from core.models.weights import NO_WEIGHTS, PRETRAINED, resolve_weights
from core.models.weights import default_arch as default_arch_and_reason
from core.platform.errors import UserError, WeightsError
from core.platform.figures import pct
from core.platform.settings import settings
from core.platform.slots import PAGE_WORK
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


# ----------------------------------------------------------------------------- this visitor's choices
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


@st.cache_resource(show_spinner="Generating the demo dataset (first launch only)…")
def demo_root(workspace: str) -> str:
    return str(ensure_demo_dataset(workspace))


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


def logout_link() -> None:
    """With a password set, a "Log out" link at the foot of the sidebar (the gate's /logout route)."""
    from app_pages.gate import LOGOUT_PATH, configured_password

    if configured_password():
        st.sidebar.markdown(f'<a href="{LOGOUT_PATH}" target="_self">Log out</a>', unsafe_allow_html=True)


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
def _split_summary(root: str, ratio: float, seed: int, val_ratio: float, stamp: float) -> dict:
    split = split_dataset(root, ratio, seed, val_ratio=val_ratio, allowed_roots=allowed_roots())
    return {"summary": split.summary(), "train": split.train, "val": split.val, "test": split.test}


def split_summary(root: str, state: Choices) -> dict:
    """The split of ``root`` with this visitor's ratios and seed, as a summary (cached until a folder changes)."""
    check_allowed(root)
    return _split_summary(root, state.train_ratio, state.seed, state.val_ratio, _folder_stamp(root))


@st.cache_data(show_spinner="Scanning the dataset…", max_entries=16)
def _split(root: str, ratio: float, seed: int, val_ratio: float, stamp: float) -> Split:
    return split_dataset(root, ratio, seed, val_ratio=val_ratio, allowed_roots=allowed_roots())


def current_split(root: str, state: Choices) -> Split:
    """The split a run started now would train on (cached until a folder of the dataset changes)."""
    check_allowed(root)
    return _split(root, state.train_ratio, state.seed, state.val_ratio, _folder_stamp(root))


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


@contextmanager
def user_errors():
    """Show a UserError as st.error (and stop the page) instead of a traceback."""
    try:
        yield
    except UserError as exc:
        st.error(str(exc))
        st.stop()


@contextmanager
def reported(*leftovers):
    """Show a UserError as st.error and go on with the page (unlike ``user_errors``, which stops it): for an
    action whose failure must not blank what is below. ``leftovers`` (progress bars) are cleared on failure.
    The code after the ``with`` block runs either way: check that what the block made exists."""
    try:
        yield
    except UserError as exc:
        for leftover in leftovers:
            leftover.clear()
        st.error(str(exc))


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ----------------------------------------------------------------------------- images
@st.cache_data(max_entries=512, show_spinner=False)
def _thumbnail(path: str, size: int, square: bool, mtime: float) -> bytes | None:
    try:
        return thumbnail_jpeg(path, size, square=square)
    except UserError:
        return None


def thumbnail(path: str, size: int = 112, *, square: bool = False) -> bytes | None:
    """A JPEG of the image at most ``size`` pixels on its longer side (``square``: on a white square), or None
    when it cannot be read (any mode, as training converts it); cached until the file changes."""
    try:
        mtime = os.path.getmtime(path)
    except (OSError, ValueError):  # removed since the scan: the thumbnail then says it cannot be read
        return None
    return _thumbnail(path, size, square, mtime)


# ----------------------------------------------------------------------------- the app
def settings_or_stop() -> None:
    """Every page needs the TLD_* settings: one that cannot be read is said once, naming it, and nothing runs."""
    from core.platform.errors import ConfigError
    from core.platform.settings import settings

    try:
        settings()
    except ConfigError as exc:
        st.error(f"This app cannot start: {exc}. Whoever runs the server must change it and restart.")
        st.stop()


@st.cache_resource
def app_icon():
    """A small drawn icon (three bars of a chart), made here so nothing is fetched from outside."""
    from PIL import Image, ImageDraw

    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    draw.rounded_rectangle([2, 2, 62, 62], radius=12, fill=(255, 75, 75, 255))
    for i, height in enumerate((18, 30, 42)):
        draw.rectangle([12 + 15 * i, 52 - height, 22 + 15 * i, 52], fill=(255, 255, 255, 255))
    return icon


# ----------------------------------------------------------------------------- models and explanations
@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _load_predictor(checkpoint: str, mtime: float) -> Predictor:
    # keyed on mtime too, so a checkpoint rewritten by a newer epoch is picked up
    return Predictor.load(checkpoint)


def run_predictor(run_path) -> Predictor:
    """The run's best model (shared by the visitors; never changed in place)."""
    checkpoint = checkpoint_path(run_path)
    return _load_predictor(str(checkpoint), checkpoint.stat().st_mtime)


def show_explanation(predictor: Predictor, image, target: int | None, image_key: str, column=st) -> None:
    """The Grad-CAM overlay of class ``target`` (None: the predicted one) on ``image``, in ``column``.

    Kept in this visitor's session under ``image_key``, so moving another widget does not recompute it
    (a VGG16 map takes seconds on a CPU)."""
    kept = st.session_state.setdefault("cam_overlays", {})
    key = (predictor.source, predictor.epoch, image_key, target)
    if key not in kept:
        try:
            explanation = explain(predictor, image, target)
        except UserError as exc:
            column.error(str(exc))
            return
        if len(kept) >= 16:
            kept.pop(next(iter(kept)))
        kept[key] = (explanation.overlay(),
                     f"Grad-CAM for {explanation.class_name} (its probability is the one shown with the "
                     "prediction): red is where the evidence for it lies, on the image as the model saw it")
    overlay, caption = kept[key]
    column.image(overlay, width="stretch", caption=caption)


def run_with_stop(stream, *, key: str, what: str, describe):
    """Follow ``stream`` under a progress bar and a Stop button; its result, or None when it failed (said
    here). A Stop click ends this script run at once; the ``key`` flag it leaves behind lets the next run say
    so (``was_stopped``). ``describe(record)``: the bar's text for a record with ``done`` and ``total``,
    or None to leave the bar as it is. Bar and button go once the work is done. Heavy work waits its turn in the
    server's line first (core.platform.slots: at most TLD_MAX_PAGE_WORK at once), saying its place."""
    bar = st.progress(0.0, text=f"Preparing the {what}…")
    stop = st.empty()
    stop.button("Stop", key=f"{key}_stop", help=f"Stops the {what} at once.")
    st.session_state[key] = True  # still set on the next run only when Stop cut this one short
    ticket = PAGE_WORK.join()
    if ticket is None:
        bar.empty()
        stop.empty()
        st.session_state.pop(key, None)
        st.warning(f"The server is busy: {PAGE_WORK.waiting} jobs are waiting already. Try again in a few minutes.")
        return None
    try:
        _wait_for_a_slot(ticket, bar, what)
        return _followed(stream, bar, stop, key, describe)
    finally:
        PAGE_WORK.leave(ticket)  # also on Stop (which ends this script run), an error or a closed tab


def _wait_for_a_slot(ticket: int, bar, what: str) -> None:
    """Wait in the server's line for heavy in-page work, saying the place in it (Stop leaves the line)."""
    limit = settings().max_page_work
    shown = None
    while place := PAGE_WORK.start(ticket, limit):
        if place != shown:  # a message only when the place changes
            bar.progress(0.0, text=f"Queued: number {place} in line for the {what}. At most {limit} such job"
                                   f"{'s run' if limit != 1 else ' runs'} at once on this server; yours starts when "
                                   "one ends (Stop leaves the line).")
            shown = place
        time.sleep(0.25)


def _followed(stream, bar, stop, key: str, describe):
    from core.spec.records import follow

    def show(record) -> None:
        text = describe(record)
        if text is not None:
            bar.progress(min(1.0, record.done / max(record.total, 1)), text=text)

    result = None
    with reported(bar):
        result = follow(stream, show)
    st.session_state.pop(key, None)
    bar.empty()
    stop.empty()
    return result


def was_stopped(key: str, what: str) -> None:
    """Say that the last run's work was cut short by its Stop button (see ``run_with_stop``)."""
    if st.session_state.pop(key, False):
        st.info(f"The {what} was stopped.")


# ----------------------------------------------------------------------------- choosing an architecture
def architecture_rows(choices):
    """One row per architecture: what a user weighs when choosing (core.models.arch_choice.ArchChoice)."""
    import pandas as pd

    return pd.DataFrame([{
        "architecture": c.name,
        "parameters (M)": round(c.parameters / 1e6, 1),
        "input (px)": c.input_size,
        "ImageNet top-1 (%)": c.imagenet_top1,
        "s / 100 images": round(c.speed.seconds_per_100, 1) if c.speed else None,
        "weights here": c.weights_status,
        "about": c.summary,
    } for c in choices])


def render_architecture_table(selected: str | None = None) -> None:
    """The table of architectures, with where its speeds were measured."""
    from core.models.arch_choice import architecture_choices

    choices = architecture_choices()
    # A static table, not a data grid: its cells wrap, so the "about" column and every figure stay readable in a
    # 1280-pixel window instead of being cut at the grid's edge.
    one_decimal = lambda v: "–" if v is None or v != v else f"{v:.1f}"  # noqa: E731  (NaN: not measured)
    st.table(architecture_rows(choices).style.hide(axis="index").format(
        {"parameters (M)": one_decimal, "ImageNet top-1 (%)": one_decimal, "s / 100 images": one_decimal}))
    where = sorted({c.speed.where for c in choices if c.speed})
    unmeasured = [c.name for c in choices if not c.speed]
    st.caption("s / 100 images: the frozen feature pass (what a default run spends its time on), measured by "
               "`python bench/benchmark.py --only archs` on " + (" and ".join(where) if where else "no machine yet")
               + (f"; not measured: {', '.join(unmeasured)}" if unmeasured else "")
               + ". ImageNet top-1 comes from each weights' own description."
               + (f" Selected: **{selected}**." if selected else ""))
