"""Charts and tables used by the pages (UI only: they draw what core/ computed)."""
from __future__ import annotations

import html

import altair as alt
import pandas as pd
import streamlit as st

from core.analysis.compare import compare_runs
from core.platform.errors import UserError
from core.platform.figures import epoch_span, pct
from core.runs.files import read_records
from core.runs.listing import RunInfo
from core.spec.records import CHOSEN_ON_TEST, VALIDATION, Records
from core.spec.states import RunState

# Epochs are whole numbers: an ordinal axis labels each one ("1", "2", …), never "1.000000" or "1.5".
EPOCH_AXIS = alt.X("epoch:O", title="epoch", axis=alt.Axis(labelAngle=0))


def loss_charts(records: Records) -> None:
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Batch loss**")
        batches = pd.DataFrame([b.to_json() for b in records.batches])
        if len(batches):
            total = batches["total"].max()
            batches["images seen"] = (batches["epoch"] - 1) * total + batches["seen"]
            st.altair_chart(alt.Chart(batches).mark_line(point=True).encode(
                x="images seen:Q", y=alt.Y("loss:Q", title="loss"), tooltip=["epoch", "batch", "loss"]),
                width="stretch")
        else:
            st.caption("A point every 10 batches (cached-feature runs on small data may log none).")
    with c2:
        on = "validation" if records.epochs and records.epochs[0].evaluated == VALIDATION else "test"
        st.markdown(f"**Per epoch: loss and {on} accuracy**")
        epochs = pd.DataFrame([{"epoch": e.epoch, "train loss": e.train_loss, f"{on} loss": e.score[1],
                                f"{on} accuracy": e.score[0]} for e in records.epochs])
        if len(epochs):
            long = epochs.melt(id_vars=["epoch"], var_name="metric", value_name="value")
            curves = alt.Chart(long).mark_line(point=True).encode(
                x=EPOCH_AXIS, y="value:Q", color="metric:N",
                tooltip=["epoch", "metric", alt.Tooltip("value:Q", format=".4f")])
            st.altair_chart(alt.layer(curves, *stage_marks(records)), width="stretch")
            stages = stage_caption(records)
            if stages:
                st.caption(stages)
            rates = pd.DataFrame([{"epoch": e.epoch, "learning rate": e.lr}
                                  for e in records.epochs if e.lr is not None])
            if len(rates) and rates["learning rate"].nunique() > 1:
                st.markdown("**Learning rate per epoch**")
                positive = bool((rates["learning rate"] > 0).all())  # a log axis cannot show 0
                st.altair_chart(alt.Chart(rates).mark_line(point=True).encode(
                    x=EPOCH_AXIS, y=alt.Y("learning rate:Q", scale=alt.Scale(type="log" if positive else "linear"),
                                          axis=alt.Axis(format=".0e", tickCount=4)),
                    tooltip=["epoch", alt.Tooltip("learning rate:Q", format=".2e")]).properties(height=200),
                    width="stretch")
        else:
            st.caption("Appears after the first epoch's validation pass.")


def stage_starts(records: Records) -> list[tuple[int, int]]:
    """(stage, its first recorded epoch) of each stage after the first (the fine_tune recipe's stage 2)."""
    starts, previous = [], 1
    for e in records.epochs:
        stage = e.stage if isinstance(e.stage, int) and not isinstance(e.stage, bool) else 1  # a damaged file
        if stage != previous:
            starts.append((stage, e.epoch))
            previous = stage
    return starts


def stage_marks(records: Records) -> list:
    """A dashed rule where each later stage begins, labelled, for an epoch chart (none for one stage)."""
    starts = stage_starts(records)
    if not starts:
        return []
    frame = pd.DataFrame([{"epoch": first, "label": f"stage {stage} →"} for stage, first in starts])
    rule = alt.Chart(frame).mark_rule(strokeDash=[4, 4], color="gray").encode(x=EPOCH_AXIS)
    label = alt.Chart(frame).mark_text(align="left", dx=4, dy=-6, color="gray").encode(
        x=EPOCH_AXIS, y=alt.value(8), text="label:N")
    return [rule, label]


def stage_label(records: Records, epoch: int | None) -> str:
    """" (stage 2: last stage + head)" for an epoch of a staged run; "" for one stage."""
    start = records.start
    for st_ in (start.stages if start is not None and isinstance(start.stages, list) else []):
        first, last = (st_.get("first"), st_.get("last")) if isinstance(st_, dict) else (None, None)
        if isinstance(epoch, int) and isinstance(first, int) and isinstance(last, int) and first <= epoch <= last:
            return f" (stage {st_.get('number')}: {st_.get('trains')})"  # a damaged file's values are only shown
    return ""


def stage_caption(records: Records) -> str:
    """What trained in each stage, in one line, for a run of the fine_tune recipe ("" for one stage)."""
    start = records.start
    lines = start.stages if start is not None and isinstance(start.stages, list) else []
    parts = [f"stage {s['number']}: {s['trains']}, {epoch_span(s['first'], s['last'])}" for s in lines
             if isinstance(s, dict) and {"number", "trains", "first", "last"} <= set(s)]
    return "; ".join(parts) + (". The kept epoch is chosen on validation across both stages." if parts else "")


def per_class_chart(classes: list[str], accuracies: list) -> None:
    per_class = pd.DataFrame({"class": classes, "accuracy": accuracies})
    # A height in pixels (26 per class, so the names do not overlap, and the axis below), not
    # Vega-Lite's per-bar step: a stepped height cannot also fit the container, and the browser's console warned
    # 'Dropping "fit-y"' for every such chart.
    st.altair_chart(alt.Chart(per_class).mark_bar().encode(
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("class:N", sort=None, axis=alt.Axis(labelOverlap=False)),  # every class named, none dropped
        tooltip=["class", alt.Tooltip("accuracy:Q", format=".1%")]).properties(height=26 * len(classes) + 60),
        width="stretch")


CELL_SELECTION = "cell"
CELL_PX = 40


def confusion_chart(classes: list[str], confusion: list[list[int]], key: str | None = None,
                    shown: list[int] | None = None):
    """Rows: true class, columns: predicted; only the ``shown`` classes (all when None), so the chart is
    bounded whatever the class count. With a ``key`` a click selects a cell; returns the selection event
    (``selected_cell`` reads it, in class indices)."""
    shown = list(range(len(classes))) if shown is None else shown
    cells = pd.DataFrame([{"true": classes[i], "predicted": classes[j], "count": confusion[i][j], "t": i, "p": j}
                          for i in shown for j in shown])
    classes = [classes[i] for i in shown]
    # Cells tall enough to click (about 40 px while that fits 600 px), the predicted classes named on top so the
    # matrix's bottom-right corner is the chart's; the counts are written in the cells, so no legend.
    base = alt.Chart(cells).encode(x=alt.X("predicted:N", sort=classes, axis=alt.Axis(orient="top")),
                                   y=alt.Y("true:N", sort=classes),
                                   tooltip=["true", "predicted", "count"]).properties(
        height=min(CELL_PX * len(classes), 600) + 90)
    dark = alt.datum.count > cells["count"].max() / 2
    rect = base.mark_rect(stroke="#333").encode(color=alt.Color("count:Q", scale=alt.Scale(scheme="blues"),
                                                                legend=None))
    if key is None:
        st.altair_chart(rect + _counts(base, dark), width="stretch")
        return None
    pick = alt.selection_point(name=CELL_SELECTION, fields=["t", "p"], on="click", clear="dblclick")
    rect = rect.encode(strokeWidth=alt.condition(pick, alt.value(3), alt.value(0))).add_params(pick)
    return st.altair_chart(rect + _counts(base, dark), on_select="rerun", selection_mode=[CELL_SELECTION], key=key,
                           width="stretch")


def _counts(base, dark):
    return base.mark_text().encode(text="count:Q", color=alt.condition(dark, alt.value("white"), alt.value("black")))


def selected_cell(event, classes: int) -> tuple[int, int] | None:
    """(true class, predicted class) of the clicked confusion cell, or None."""
    try:
        points = event.selection[CELL_SELECTION]
        t, p = int(points[0]["t"]), int(points[0]["p"])
    except (AttributeError, KeyError, TypeError, IndexError, ValueError):
        return None
    return (t, p) if 0 <= t < classes and 0 <= p < classes else None


def reliability_chart(bins, bins_calibrated) -> None:
    """Accuracy against confidence per bin, raw and after temperature scaling; the diagonal is perfect
    calibration, points below it are overconfident. A point's size is its bin's image count."""
    rows = [{"confidence": b.confidence, "accuracy": b.accuracy, "images": b.count, "probabilities": name,
             "bin": f"{b.low:.2f}–{b.high:.2f}"}
            for name, group in (("raw", bins), ("temperature-scaled (held apart)", bins_calibrated))
            for b in group if b.count]
    diagonal = alt.Chart(pd.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0]})).mark_line(
        strokeDash=[4, 4], color="gray").encode(x="x:Q", y="y:Q")
    curves = alt.Chart(pd.DataFrame(rows)).mark_line(point=True).encode(
        x=alt.X("confidence:Q", scale=alt.Scale(domain=[0, 1]), title="confidence (mean of the bin)"),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy of the bin"),
        color=alt.Color("probabilities:N", legend=alt.Legend(orient="bottom", labelLimit=400)),
        tooltip=["probabilities", "bin", "images", alt.Tooltip("confidence:Q", format=".3f"),
                 alt.Tooltip("accuracy:Q", format=".3f")])
    points = curves.mark_point(filled=True).encode(size=alt.Size("images:Q", legend=None))
    st.altair_chart(diagonal + curves + points, width="stretch")


def test_cell(r: RunInfo) -> str:
    """A run's test accuracy as every table and line shows it: with its interval, or why there is none."""
    if r.test is not None:
        return r.test.text() + (" · chosen on the test split (older run)" if r.chosen_on == CHOSEN_ON_TEST else "")
    return "test not evaluated" if r.finished and r.epochs_done else "measured once, at the end"


def runs_table(runs: list[RunInfo]) -> None:
    rows = []
    for r in runs:
        c, sizes = r.config, r.sizes
        rows.append({"run": r.name, "status": r.status, "arch": c.arch if c else None,
                     "weights": ("pretrained" if c.pretrained else "scratch") if c else None,
                     "trains": c.what_trains if c else None,
                     "epochs": f"{r.epochs_done}/{c.total_epochs}" if c else None,
                     "version": (c.dataset_version or "v0") if c and c.data_root else None,
                     "data": (c.data_root or c.lists_dir) if c else None,
                     "train / val / test": " / ".join(f"{n:,}" for n in sizes) if sizes else None,
                     "excluded": r.excluded,
                     "val acc (chose)": pct(r.val_acc) if r.val_acc is not None else "–",
                     "test acc": test_cell(r),
                     "lr": c.lr if c else None, "batch": c.batch_size if c else None,
                     "note": r.reason if r.status is not RunState.RUNNING else ""})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def compare_chart(runs: list[RunInfo]) -> None:
    """The curves that chose (validation accuracy and loss per epoch) of several runs, overlaid, then each run's
    test figure with its interval and the paired differences where runs share their test images."""
    rows = []
    for info in runs:
        try:
            records = read_records(info.path)
        except UserError as exc:
            st.caption(f"{info.name} left out: {exc}")
            continue
        rows += [{"run": info.label, "epoch": e.epoch, "metric": f"{e.evaluated} {what}", "value": value}
                 for e in records.epochs for what, value in zip(("accuracy", "loss"), e.score)]
    if not rows:
        if runs:
            st.caption("The picked runs have no finished epoch yet; their curves appear after the first epoch.")
        return
    data = pd.DataFrame(rows)
    metrics = sorted(data["metric"].unique(), key=lambda m: (m.endswith("loss"), m))
    if {m.split()[0] for m in metrics} == {"validation", "test"}:
        st.caption("Older runs chose on the test split and show test curves; newer ones show validation curves. "
                   "The two are not the same images: read them side by side, not as one comparison.")
    columns = st.columns(2)
    for i, metric in enumerate(metrics):
        with columns[i % 2]:
            st.markdown(f"**{metric} per epoch**")
            st.altair_chart(alt.Chart(data[data["metric"] == metric]).mark_line(point=True).encode(
                x=EPOCH_AXIS, y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False, nice=False, padding=8)),
                color=alt.Color("run:N", legend=alt.Legend(orient="bottom", columns=1, labelLimit=600))),
                width="stretch")
    st.markdown("**Test accuracy** (each measured once, on the epoch its run kept)")
    for info in runs:
        st.markdown(f"- {info.label}: {test_cell(info)}")
    for a, b in zip(runs, runs[1:]):
        st.caption(compare_runs(a.path, b.path).text(a.name, b.name))


def class_counts_chart(counts: pd.DataFrame) -> None:
    parts = ["train", "validation", "test"]
    long = counts.rename(columns={"val": "validation"}).melt(id_vars=["class"], value_vars=parts, var_name="part",
                                                            value_name="images")
    st.altair_chart(alt.Chart(long).mark_bar().encode(
        x=alt.X("images:Q", stack=True), y=alt.Y("class:N", sort=None, axis=alt.Axis(labelOverlap=False)),
        color=alt.Color("part:N", sort=parts, scale=alt.Scale(domain=parts, scheme="tableau10")),
        order=alt.Order("part_order:Q"), tooltip=["class", "part", "images"]).transform_calculate(
        part_order="indexof(['train', 'validation', 'test'], datum.part)").properties(
        height=26 * counts["class"].nunique() + 60), width="stretch")  # pixels, not a step: see per_class_chart


class DownloadProgress:
    """A progress bar and the callback that moves it: (bytes done, total or None). ``clear()`` removes it, so
    a download that failed leaves a message, not a bar stuck at "Connecting…"."""

    def __init__(self):
        self.slot = st.empty()
        self.slot.progress(0.0, text="Connecting…")

    def __call__(self, done: int, total: int | None) -> None:
        self.slot.progress(min(done / total, 1.0) if total else 0.0,
                           text=f"Downloading… {done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else ""))

    def clear(self) -> None:
        self.slot.empty()


download_progress = DownloadProgress


def highlighted_lines(lines: list[str], changed: set[int], colour: str) -> str:
    """HTML of a model printout with the changed lines highlighted (escaped: module names are text)."""
    rows = [f'<div style="background:{colour if i in changed else "transparent"}">{html.escape(line) or " "}</div>'
            for i, line in enumerate(lines)]
    return ('<div style="font-family:monospace;font-size:12px;white-space:pre;overflow:auto;max-height:480px;'
            'border:1px solid #ddd;border-radius:6px;padding:6px">' + "".join(rows) + "</div>")


# ----------------------------------------------------------------------------- the data check
MAX_CHART_POINTS = 5000  # an Altair chart ships its data to the browser: past this, a seeded sample is drawn


def _sampled(frame: pd.DataFrame) -> pd.DataFrame:
    return frame if len(frame) <= MAX_CHART_POINTS else frame.sample(MAX_CHART_POINTS, random_state=0)


def class_colours(classes) -> alt.Color:
    """One categorical palette for classes wherever they are drawn (map, health): hues that tell classes apart,
    not the theme's shades of one colour."""
    names = sorted(set(classes))
    return alt.Color("class:N", scale=alt.Scale(domain=names, scheme="tableau10" if len(names) <= 10 else "tableau20"),
                     legend=alt.Legend(title="class", symbolOpacity=1))


def _pixel_domain(values, input_size: int) -> list[float]:
    """A log axis fitted to the images and the model's input size, with a margin: not to 10,000 for 500-pixel photos."""
    low = min(float(values.min()), input_size) if len(values) else input_size
    high = max(float(values.max()), input_size) if len(values) else input_size
    return [max(1.0, low / 1.25), high * 1.25]


def image_size_charts(sizes: pd.DataFrame, input_size: int) -> None:
    """Width against height (one point per image, by class) and the aspect ratios; the model's input size as rules."""
    c1, c2 = st.columns(2)
    colour = class_colours(sizes["class"])
    with c1:
        st.markdown(f"**Width × height** (lines: the model's {input_size}-pixel input)")
        x = alt.X("width:Q", title="width (px)", scale=alt.Scale(type="log", domain=_pixel_domain(sizes["width"],
                                                                                                  input_size)))
        y = alt.Y("height:Q", title="height (px)", scale=alt.Scale(type="log", domain=_pixel_domain(sizes["height"],
                                                                                                    input_size)))
        points = alt.Chart(_sampled(sizes)).mark_circle(size=40, opacity=0.8).encode(
            x=x, y=y, color=colour, tooltip=["path", "class", "split", "width", "height"])
        rules = alt.Chart(pd.DataFrame({"width": [input_size], "height": [input_size]}))
        st.altair_chart(points + rules.mark_rule(strokeDash=[4, 4]).encode(x=x)
                        + rules.mark_rule(strokeDash=[4, 4]).encode(y=y), width="stretch")
    with c2:
        st.markdown("**Aspect ratio** (longer side ÷ shorter side)")
        st.altair_chart(alt.Chart(sizes).mark_bar().encode(
            x=alt.X("aspect:Q", bin=alt.Bin(maxbins=30), title="aspect ratio"), y=alt.Y("count():Q", title="images"),
            color=colour), width="stretch")


MAP_SELECTION = "picked"


def embedding_chart(points: pd.DataFrame, key: str):
    """The features' 2-D map, coloured by class and shaped by split; drag a box or click points to select them.
    Returns Streamlit's selection event."""
    brush = alt.selection_interval(name=MAP_SELECTION, encodings=["x", "y"])
    chart = alt.Chart(_sampled(points)).mark_point(filled=True, size=90, stroke="white", strokeWidth=0.5).encode(
        x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None),
        color=class_colours(points["class"]), shape=alt.Shape("split:N", scale=alt.Scale(domain=["train", "test"],
                                                                              range=["circle", "triangle"])),
        opacity=alt.condition(brush, alt.value(0.9), alt.value(0.25)),
        tooltip=["class", "split", "path"]).add_params(brush).properties(height=480)
    return st.altair_chart(chart, on_select="rerun", selection_mode=[MAP_SELECTION], key=key, width="stretch")


def selected_in_box(points: pd.DataFrame, event) -> pd.DataFrame:
    """The points inside the dragged box of ``embedding_chart``'s selection event (none selected: empty)."""
    try:
        box = event.selection[MAP_SELECTION]
    except (AttributeError, KeyError, TypeError):
        return points.iloc[:0]
    if not box or "x" not in box or "y" not in box:
        return points.iloc[:0]
    (x0, x1), (y0, y1) = sorted(box["x"]), sorted(box["y"])
    return points[points["x"].between(x0, x1) & points["y"].between(y0, y1)]


def lr_finder_chart(result) -> None:
    """The finder's smoothed loss against the learning rate (log scale), the suggestion marked."""
    curve = pd.DataFrame({"learning rate": result.lrs, "loss (smoothed)": result.losses})
    line = alt.Chart(curve).mark_line().encode(
        x=alt.X("learning rate:Q", scale=alt.Scale(type="log"), axis=alt.Axis(format=".0e")),
        y=alt.Y("loss (smoothed):Q", scale=alt.Scale(zero=False)),
        tooltip=[alt.Tooltip("learning rate:Q", format=".2e"), alt.Tooltip("loss (smoothed):Q", format=".3f")])
    layers = [line]
    if result.suggestion is not None:
        marks = pd.DataFrame({"learning rate": [result.suggestion], "what": ["suggested (valley)"]})
        layers.append(alt.Chart(marks).mark_rule(color="red", strokeDash=[4, 4]).encode(
            x="learning rate:Q", tooltip=["what", alt.Tooltip("learning rate:Q", format=".2e")]))
    st.altair_chart(alt.layer(*layers).properties(height=220), width="stretch")


def trials_chart(trials) -> None:
    """The head search's score per trial (pruned trials at the score they had when stopped), best so far as a line."""
    rows, best = [], None
    for t in trials:
        if t.score is not None and t.state == "complete":
            best = t.score if best is None else max(best, t.score)
        rows.append({"trial": t.number, "score": t.score, "state": t.state, "best so far": best,
                     **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in t.params.items()}})
    data = pd.DataFrame(rows)
    points = alt.Chart(data).mark_point(filled=True).encode(
        x=alt.X("trial:Q"), y=alt.Y("score:Q", title="cross-validated accuracy", scale=alt.Scale(zero=False)),
        color=alt.Color("state:N", scale=alt.Scale(domain=["complete", "pruned"], range=["#1f77b4", "#bbbbbb"])),
        tooltip=list(data.columns))
    line = alt.Chart(data).mark_line(color="#d62728").encode(x="trial:Q", y="best so far:Q")
    st.altair_chart((points + line).properties(height=220), width="stretch")
