"""What pages draw from images and models: thumbnails (cached), the predictor of a run (cached) and Grad-CAM
explanations."""
from __future__ import annotations

import os

import streamlit as st

from core.data.images import thumbnail_jpeg
from core.inference.predict import Predictor, checkpoint_path
from core.models.explain import explain
from core.platform.errors import UserError


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
