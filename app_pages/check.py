"""2 · Check the data: health, duplicates and leakage, the embedding map, label issues and a baseline."""
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages.charts import embedding_chart, image_size_charts, selected_in_box
from app_pages.choices import (
    KEEP_GROUPS,
    current_split,
    data_root,
    default_arch,
    load_state,
    resolve_weights_file,
    split_line,
    stored_check,
    with_version,
)
from app_pages.images import thumbnail
from app_pages.versions import decide, key_of, said_once, version_or_none
from app_pages.work import plural, reported, run_with_stop, user_errors, was_stopped
from core.analysis.datacheck import (
    NEAR_CEILING,
    NEAR_FLOOR,
    DataReport,
    DuplicateGroup,
    LabelIssue,
    check_data,
    data_fingerprint,
    describe,
    label_issues_csv,
    save_report,
    split_fingerprint,
)
from core.data.split import Split, split_dataset, write_split
from core.data.versions import Action, DatasetVersion, load_version
from core.jobs.queue import launch
from core.platform.errors import UserError
from core.platform.workspace import allowed_roots, cache_dir, checks_dir, lists_dir_for, shown, workspace_writes
from core.spec.config import Choices

GROUPS_SHOWN = 30  # duplicate groups drawn as thumbnails (all are in the downloadable report)
SELECTED_SHOWN = 48  # thumbnails of the map's selection
SUSPECTS_SHOWN = 12  # label suspects drawn as thumbnails (all are in the table and the CSV)


# ----------------------------------------------------------------------------- running the check
def run_check(split: Split, arch: str, weights: str | None, threshold: float | None,
              letterbox: bool = False) -> DataReport | None:
    """Run the check with a progress bar and a Stop button; store and return the report."""
    report = run_with_stop(check_data(split, arch=arch, weights=weights, cache_dir=cache_dir(),
                                      near_threshold=threshold, letterbox=letterbox),
                           key="ck_running", what="check", describe=describe)
    if report is None:
        return None
    with reported(), workspace_writes("store the check"):
        save_report(report, checks_dir())
    return report


def _class_names(report: DataReport, labels) -> list[str]:
    return [report.classes[label] if 0 <= label < len(report.classes) else str(label) for label in labels]


# ----------------------------------------------------------------------------- health
def render_health(report: DataReport) -> None:
    h = report.health
    c1, c2, c3, c4 = st.columns(4)
    # Every listed image, the validation share included: the same count as "Readable" + "Unreadable" below.
    c1.metric("Images", f"{report.train + report.val + report.test:,}",
              help=f"{report.train:,} train, {report.val:,} validation, {report.test:,} test")
    c2.metric("Readable", f"{h.readable:,}")
    c3.metric("Unreadable", f"{len(h.unreadable):,}", help="Left out of the list files, each with its reason below.")
    c4.metric("Largest ÷ smallest class", "–" if h.imbalance is None else f"{h.imbalance:.1f}×")
    for warning in h.warnings:
        st.warning(warning)
    counts = pd.DataFrame([{"label": c.label, "class": c.name, "train + validation": c.train, "test": c.test,
                            "unreadable": c.unreadable} for c in h.classes])
    left, right = st.columns([2, 1])
    left.dataframe(counts, hide_index=True, width="stretch")
    with right:
        st.dataframe(pd.DataFrame({"format": list(h.formats), "images": list(h.formats.values())}), hide_index=True)
        st.dataframe(pd.DataFrame({"colour mode": list(h.modes), "images": list(h.modes.values())}), hide_index=True)
    if h.sizes:
        sizes = pd.DataFrame([{"path": s.path, "class": report.classes[s.label], "split": s.split, "width": s.width,
                               "height": s.height, "aspect": s.aspect} for s in h.sizes])
        image_size_charts(sizes, h.input_size)
    for title, flagged in ((f"smaller than the model's {h.input_size}-pixel input", h.small),
                           ("not RGB (converted before training)", h.converted)):
        if flagged:
            with st.expander(f"{plural(len(flagged), 'image')} {title}"):
                st.dataframe(pd.DataFrame([{"path": f.path, "class": report.classes[f.label], "split": f.split,
                                            "why": f.reason} for f in flagged]), hide_index=True, width="stretch")
    if h.unreadable:
        st.error(f"{plural(len(h.unreadable), 'file')} cannot be used; the split leaves them out:")
        st.dataframe(pd.DataFrame([{"path": u.path, "reason": u.reason} for u in h.unreadable]), hide_index=True,
                     width="stretch")


# ----------------------------------------------------------------------------- duplicates
def _group_title(i: int, group, report: DataReport) -> str:
    what = "exact copies" if group.kind == "exact" else "copies"
    what += f" · found by {group.found_by}"
    if "features" in group.found_by:
        what += f" (similarity ≥ {group.similarity:.3f})"
    flags = [":red[**leak: train and test**]"] if group.leak else []
    flags += [":orange[**conflict: two classes**]"] if group.conflict else []
    return f"**Group {i + 1}** · {len(group.members)} {what}" + (" · " + " · ".join(flags) if flags else "")


def how_copies_are_found(report: DataReport) -> str:
    """The three tests, with the numbers this check used (the same wording wherever it is shown)."""
    text = (f"Three tests: the same bytes; a perceptual hash (resized or re-encoded copies: at most "
            f"{report.hash_distance} of 256 bits apart, with the same colour layout)")
    if report.threshold_rule:
        rule = "set by hand" if report.threshold_rule == "given" else report.threshold_rule
        text += f"; backbone features at least {report.near_threshold:.3f} alike ({rule})"
    return text + "."


def render_duplicates(report: DataReport, split: Split, root: str, state: Choices) -> None:
    st.caption(how_copies_are_found(report))
    if not report.duplicates:
        st.success("No duplicates found.")
        return
    leaks, conflicts = report.leaks, report.conflicts
    st.markdown(f"{plural(len(report.duplicates), 'group')} of copies; {len(leaks)} across train and test, "
                f"{len(conflicts)} across classes.")
    if report.leak_effect():
        st.warning(f"**Leakage.** {report.leak_effect()}")
    if conflicts:
        st.warning(f"**{plural(len(conflicts), 'group')} filed under two classes**: at least one label of each is "
                   "wrong (see Label issues).")
    version = version_or_none(root)
    for i, group in enumerate(report.duplicates[:GROUPS_SHOWN]):
        st.markdown(_group_title(i, group, report))
        images = [(thumbnail(m.path), f"{m.split} · {_class_names(report, [m.label])[0]}") for m in group.members[:12]]
        shown_images = [(img, caption) for img, caption in images if img is not None]
        if shown_images:
            st.image([img for img, _ in shown_images], caption=[c for _, c in shown_images], width=112)
        group_actions(group, i, root, state, version)
        with st.expander("Paths"):
            st.code("\n".join(m.path for m in group.members), language=None)
    if len(report.duplicates) > GROUPS_SHOWN:
        st.caption(f"{len(report.duplicates) - GROUPS_SHOWN} more groups are in the report "
                   "(`python -m core inspect --json` writes them all).")
    render_resplit(report, split, root, state)


def group_actions(group: DuplicateGroup, i: int, root: str, state: Choices, version: DatasetVersion | None) -> None:
    """Keep one of the copies (the first, a training image when there is one) or keep them together."""
    if version is None:
        return
    paths = [m.path for m in sorted(group.members, key=lambda m: m.split == "test")]
    states = {version.status_of(p) for p in paths} - {""}
    if states:
        st.caption(f":green[{', '.join(sorted(states))} ({version.name})]")
    if any(s in ("dropped", "kept together") for s in states):
        return  # decided; a relabel alone (a conflict group's wrong copy) still leaves the copies to decide
    key = key_of(*paths)

    def split() -> Split:
        return current_split(root, state)

    left, right, _ = st.columns([2, 2, 3])
    copies = f"{len(paths) - 1} cop{'y' if len(paths) == 2 else 'ies'}"
    if left.button(f"Keep {Path(paths[0]).name}, drop {copies}",
                   key=f"ck_keep_one_{key}", width="stretch"):
        decide(root, split, Action.KEEP_ONE, paths, reason=f"data check: group {i + 1}, {group.kind} copies")
    if right.button("Keep them together", key=f"ck_together_{key}", width="stretch",
                    help="All on one side of the split, so none is tested against its own copy"):
        decide(root, split, Action.KEEP_TOGETHER, paths, reason=f"data check: group {i + 1}, {group.kind} copies")


def render_resplit(report: DataReport, split: Split, root: str, state: Choices) -> None:
    if split.given_by:
        st.info(f"The dataset brings its own split ({split.given_by}), so it is not re-split here; move the copies "
                "between its folders yourself to stop the leak.")
        return
    if not report.leaks:
        return
    st.markdown("**Measure honestly:** a group-aware split keeps each group on one side (same ratio and seed "
                "otherwise). Your files are not moved or deleted.")
    if st.button("Re-split keeping every duplicate group on one side", key="ck_resplit"):
        groups = [[m.path for m in g.members] for g in report.duplicates]
        with user_errors(), workspace_writes("write the list files"):
            grouped = split_dataset(root, state.train_ratio, state.seed, val_ratio=state.val_ratio,
                                    allowed_roots=allowed_roots(), keep_together=groups,
                                    edits=load_version(root).edits())  # the lists as runs would read the data
            out = write_split(grouped, lists_dir_for(root), overwrite=True)
        sides = ({path: "train" for path, _ in [*grouped.train, *grouped.val]}
                 | {path: "test" for path, _ in grouped.test})
        crossing = sum(len({sides.get(p) for p in g} - {None}) > 1 for g in groups)
        st.session_state[KEEP_GROUPS] = True
        st.success(f"Wrote {len(grouped.train)} train and {len(grouped.test)} test lines to `{out}`; "
                   f"{crossing} groups cross the split now. Runs started from the Training page keep the groups "
                   "together too (a checkbox there).")


# ----------------------------------------------------------------------------- map
def render_map(report: DataReport) -> None:
    if not report.embedding:
        st.info("No map: " + (" ".join(report.notes) or "no features."))
        return
    points = pd.DataFrame([{"path": p.path, "x": p.x, "y": p.y, "class": report.classes[p.label], "split": p.split}
                           for p in report.embedding])
    sampled = (f"Showing {len(report.embedding):,} of {report.embedding_total:,} images (a random sample, on which "
               "the map is computed; a selection picks among the drawn points). "
               if report.embedding_total > len(report.embedding) else "")
    st.caption(f"{sampled}{report.embedding_method} of the {report.arch} features; nearby points look alike to the "
               "backbone. Drag a box to see those images; an image among another class's points may be mislabeled.")
    event = embedding_chart(points, key="ck_map")
    picked = selected_in_box(points, event)
    if picked.empty:
        return
    st.markdown(f"**{plural(len(picked), 'image')} selected**")
    first = _both_splits(picked, SELECTED_SHOWN)
    images = [(thumbnail(path), f"{name} · {side}") for path, name, side in zip(first["path"], first["class"],
                                                                                  first["split"])]
    kept = [(img, caption) for img, caption in images if img is not None]
    if kept:
        st.image([img for img, _ in kept], caption=[c for _, c in kept], width=96)
    if len(kept) < len(picked):
        st.caption(shown_of(len(kept), len(picked), "selected images", "train and test in proportion"))
    st.dataframe(picked[["path", "class", "split"]], hide_index=True, width="stretch")


def shown_of(shown: int, total: int, what: str, which: str = "the first ones") -> str:
    """The note under thumbnails that are fewer than the rows they stand for."""
    return f"Thumbnails: {shown:,} of {total:,} {what} ({which}); the table below lists all {total:,}."


def _both_splits(picked: pd.DataFrame, most: int) -> pd.DataFrame:
    """At most ``most`` rows with test images in proportion to the selection (at least one when there is one), so a
    selection's thumbnails never show only its training images."""
    test = picked[picked["split"] == "test"]
    if len(picked) <= most or test.empty:
        return picked.head(most)
    share = min(len(test), max(1, round(most * len(test) / len(picked))))
    return pd.concat([picked[picked["split"] != "test"].head(most - share), test.head(share)])


# ----------------------------------------------------------------------------- label issues
def render_label_issues(report: DataReport, root: str, state: Choices) -> None:
    if report.too_small:
        st.caption(f"Too small for label checking (fewer than 3 images): {', '.join(report.too_small)}.")
    issues = report.label_issues
    if not issues and not report.hard_cases:
        st.success("No label issues found." if report.baseline else "Not checked: " + " ".join(report.notes))
        return
    version = version_or_none(root)
    if issues:
        st.markdown(f"**{plural(len(issues), 'suspect')}**, most suspect first (cleanlab's label quality score): "
                    "confident learning over a linear head's out-of-fold predictions counts them as another class's. "
                    "Relabel or drop one right here; your folder is not touched (the Dataset page keeps the version, "
                    "with undo).")
        render_cards(issues, report, root, state, version, "suspects")
        st.download_button("Download the list (CSV)", label_issues_csv(issues), file_name="label_issues.csv",
                           mime="text/csv", key="ck_issues_csv")
        in_train = [i.path for i in issues if i.split == "train"]
        if in_train and st.button(f"Start a run that leaves the {plural(len(in_train), 'training suspect')} out",
                                  key="ck_train_without",
                                  help="A head-only run with the default settings; the test split stays whole so "
                                       "its accuracy stays comparable. The run records what it left out."):
            start_without(in_train, root, state, report)
    else:
        st.success("No suspect: confident learning counts no image as another class's.")
    if report.hard_cases:
        st.markdown(f"**Hard or mislabelled: {plural(len(report.hard_cases), 'image')}** the model takes for another "
                    "class, though confident learning does not count them as mislabelled. Often unusual photos of "
                    "their class, sometimes wrong labels: look before acting.")
        render_cards(report.hard_cases, report, root, state, version, "hard cases")


def render_cards(issues: list[LabelIssue], report: DataReport, root: str, state: Choices,
                 version: DatasetVersion | None, what: str) -> None:
    first = issues[:SUSPECTS_SHOWN]
    for row in range(0, len(first), 4):
        for column, issue in zip(st.columns(4), first[row:row + 4]):
            with column:
                suspect_card(issue, report, root, state, version)
    if len(first) < len(issues):
        st.caption(shown_of(len(first), len(issues), what))
    table = pd.DataFrame([{"path": i.path, "split": i.split, "given": i.given, "model expects": i.suggested,
                           "probability": round(i.confidence, 3), "given class's probability": round(i.score, 4),
                           "decided": version.status_of(i.path) if version else ""} for i in issues])
    st.dataframe(table, hide_index=True, width="stretch")


def suspect_card(issue: LabelIssue, report: DataReport, root: str, state: Choices,
                 version: DatasetVersion | None) -> None:
    """One suspect: its thumbnail, what the model expects, and the decisions (or the one already taken)."""
    image = thumbnail(issue.path)
    if image is not None:
        st.image(image, width=128)
    st.caption(f"**{issue.given} → {issue.suggested}** ({100 * issue.confidence:.0f}%) · {issue.split} · "
               f"`{Path(issue.path).name}`")
    if version is None:
        return
    status = version.status_of(issue.path)
    if status:
        st.caption(f":green[{status} ({version.name})]")
        return
    key = key_of(issue.path)

    def split() -> Split:
        return current_split(root, state)

    why = f"data check: the model expects {issue.suggested} ({100 * issue.confidence:.0f}%)"
    if st.button(f"Relabel as {issue.suggested}", key=f"ck_relabel_{key}", width="stretch"):
        decide(root, split, Action.RELABEL, [issue.path], label=issue.suggested, reason=why)
    left, right = st.columns(2)
    if left.button("Drop", key=f"ck_drop_{key}", width="stretch", help="Leave it out of every split"):
        decide(root, split, Action.DROP, [issue.path], reason=f"{why}; dropped")
    with right.popover("Other…", width="stretch"):
        other = st.selectbox("Class", [c for c in report.classes if c != issue.given], key=f"ck_other_{key}")
        if st.button(f"Relabel as {other}", key=f"ck_relabel_other_{key}"):
            decide(root, split, Action.RELABEL, [issue.path], label=other, reason="data check: chosen by hand")


def start_without(paths: list[str], root: str, state: Choices, report: DataReport) -> None:
    groups = tuple(tuple(m.path for m in g.members) for g in report.duplicates) if st.session_state.get(KEEP_GROUPS) \
        else ()
    with user_errors():
        cfg = state.config(arch=report.arch, weights=report.weights, data_root=root,
                           **with_version(root, {"exclude": tuple(paths), "keep_together": groups}))
        path = launch(cfg)
    st.switch_page("app_pages/training.py", query_params={"run": path.name})


# ----------------------------------------------------------------------------- baseline
def render_baseline(report: DataReport) -> None:
    b = report.baseline
    if b is None:
        st.info("No baseline: " + (" ".join(report.notes) or "no features."))
        return
    c1, c2 = st.columns(2)
    c1.metric("Linear head on the features", f"{100 * b.accuracy:.1f}% ± {100 * b.std:.1f}",
              help="Logistic regression, the same model a head-only fine-tune trains, cross-validated.")
    c2.metric("k-NN on the features (k=5)", f"{100 * b.knn_accuracy:.1f}% ± {100 * b.knn_std:.1f}")
    st.caption(f"{b.folds}-fold cross-validation over {b.images:,} images of {b.classes} classes; copies share a fold, "
               "so none is tested against itself. A head-only fine-tune should reach about this; far below means the "
               "run's settings, far above means the test split is easier (or leaks).")


# ----------------------------------------------------------------------------- the page
def threshold_choice(column, report: DataReport | None) -> float | None:
    """The feature threshold for near copies: None (the default) lets the check choose it from the data."""
    with column:
        by_hand = st.toggle("Set the near-copy threshold by hand", key="ck_by_hand",
                            help="By default the check chooses it from your data: far above the typical similarity "
                                 "of each image to its nearest neighbour. The report says what it chose.")
        if not by_hand:
            return None
        start = min(max(report.near_threshold if report else NEAR_CEILING, NEAR_FLOOR), NEAR_CEILING)
        return st.slider("Near-copy threshold (cosine similarity of features)", NEAR_FLOOR, NEAR_CEILING,
                         round(start, 3), 0.001, key="ck_threshold", format="%.3f",
                         help="Lower finds looser copies (and more false ones). Pixel-level copies (resized, "
                              "re-encoded) are found by the perceptual hash whatever this says.")



def _stored(fingerprint: str) -> DataReport | None:
    try:
        return stored_check(fingerprint)
    except UserError as exc:
        st.warning(str(exc))
        return None


def main() -> None:
    st.title("2 · Check the data")
    st.caption("Before training: unreadable files, duplicates and leakage between train and test, suspect labels, "
               "a map of the images as the backbone sees them, and the accuracy a head-only fine-tune should reach. "
               "All from the backbone features a run uses (cached, so a run afterwards computes none again).")
    root, state = data_root(), load_state()
    arch = default_arch()
    weights = resolve_weights_file(arch, state)
    with user_errors():
        split = current_split(root, state, as_version=False)  # the check describes the folder as it is
    said_once()
    st.write(f"**Data:** `{shown(root)}` · {split_line(split.summary())} · **backbone:** {arch}, "
             + (f"pretrained (`{Path(weights).name}`)" if weights else "no pretrained weights on this machine")
             + (" · **letterbox** (as the Training page's setting)" if state.letterbox else ""))
    was_stopped("ck_running", "check")  # nothing of it was stored
    report = _stored(data_fingerprint(split, arch, weights))
    c1, c2 = st.columns([1, 3])
    threshold = threshold_choice(c2, report)
    label = "Check again" if report else "Check the data"
    if c1.button(label, type="primary", key="ck_run"):
        report = run_check(split, arch, weights, threshold, letterbox=state.letterbox) or report
    if report is None:
        st.info("Press **Check the data**. The first check computes each image's backbone features (the slow part, "
                "with progress); later checks and head-only runs read them from the cache.")
        return
    when = pd.Timestamp(report.created, unit="s").strftime("%Y-%m-%d %H:%M UTC")
    st.caption(f"Checked {when} in {sum(report.seconds.values()):.1f} s"
               + (" (features from the cache)" if report.features_from_cache else ""))
    if report.split_fingerprint != split_fingerprint(split):
        st.warning("This check was made on another split of these images (the ratio or seed changed since): its "
                   "leakage figures are for that split. Check again for this one.")
    for note in report.notes:
        st.caption(f"Note: {note}")
    # A keyed tab bar remembers the open tab, so a selection on the map (a rerun) keeps the map in view.
    labels_tab = f"Label issues ({len(report.label_issues)} + {len(report.hard_cases)} hard)"
    tabs = st.tabs(["Health", f"Duplicates ({len(report.duplicates)})", "Map",
                    labels_tab, "Baseline"], key="ck_tabs", on_change="rerun")
    with tabs[0]:
        render_health(report)
    with tabs[1]:
        render_duplicates(report, split, root, state)
    with tabs[2]:
        render_map(report)
    with tabs[3]:
        render_label_issues(report, root, state)
    with tabs[4]:
        render_baseline(report)


main()
