"""The architecture chooser's table, shared by the Model surgery and Training pages."""
from __future__ import annotations

import streamlit as st


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
