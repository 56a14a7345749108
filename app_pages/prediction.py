import json
import tempfile
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from app_pages.charts import confusion_chart
from app_pages.images import run_predictor, show_explanation, thumbnail
from app_pages.work import plural, run_with_stop, user_errors, was_stopped
from core.analysis.report import SHOWN_CLASSES
from core.analysis.scored import FolderScore, score_predictions
from core.data.images import open_image, thumbnail_jpeg
from core.data.uploads import check_image_upload, extract_zip, image_upload_limit_mb
from core.inference.export import export_bytes, stale_exports
from core.inference.predict import CSV_HEADER, Predictor, image_files, predict_many
from core.platform.errors import UserError
from core.platform.figures import pct
from core.platform.workspace import runs_dir
from core.runs.listing import best_completed, list_runs
from core.runs.rundir import RunDir
from core.spec.config import TTA_MODES
from core.spec.states import RunState


def pick_run():
    """The run to predict with: the completed run with the best validation accuracy unless the visitor picks another."""
    runs = [r for r in list_runs(runs_dir()) if r.has_checkpoint or r.status is RunState.DAMAGED]
    usable = [r for r in runs if r.has_checkpoint]
    if not usable:
        st.info("No trained model yet: start a run on the Training page (the defaults work), then come back.")
        st.page_link("app_pages/training.py", label="Go to Training", icon=":material/monitoring:")
        st.stop()
    best = best_completed(runs)
    by_name = {r.name: r for r in runs}
    names = list(by_name)
    if best is not None:  # the best first, the rest newest first
        names.remove(best.name)
        names.insert(0, best.name)

    def describe(name: str) -> str:
        r = by_name[name]
        if r.config is None or r.status is RunState.DAMAGED:
            return f"{r.name} · damaged"
        return (f"{r.name} · {r.config.arch} · {'pretrained' if r.config.pretrained else 'scratch'} · "
                f"test {pct(r.test_acc)} · {r.status}")

    c1, c2 = st.columns([3, 1])
    name = c1.selectbox("Run", names, index=0, key="pr_run", format_func=describe,
                        help="Pre-selected: the completed run with the best validation accuracy (choosing by test "
                             "accuracy would make its test figure optimistic).")
    return by_name[name], c2


def load_model(run) -> Predictor:
    if run.status is RunState.DAMAGED:
        st.error(f"This run is damaged: {run.reason}. Pick another run.")
        st.stop()
    try:
        return run_predictor(run.path)
    except (UserError, OSError) as exc:
        st.error(f"This run's model cannot be loaded: {exc}. Pick another run.")
        st.stop()


def get_image():
    upload_tab, camera_tab = st.tabs(["Upload an image", "Webcam snapshot"])
    with upload_tab:
        upload = st.file_uploader("Image", type=["png", "jpg", "jpeg", "webp", "bmp"], key="pr_upload",
                                  max_upload_size=image_upload_limit_mb())
    with camera_tab:
        snapshot = st.camera_input("Take a snapshot", key="pr_camera")
    source = upload or snapshot
    if source is None:
        st.info("Upload an image (png, jpg, webp, bmp) or take a snapshot to see the class probabilities.")
    return source


def probability_options(predictor: Predictor) -> tuple[bool, str | None]:
    """Calibrated or raw probabilities, and test-time augmentation: this visitor's choice."""
    c1, c2 = st.columns(2)
    has_t = predictor.temperature is not None
    calibrated = c1.toggle("Calibrated probabilities", value=has_t, disabled=not has_t, key="pr_calibrated",
                           help="Softmax of the logits divided by the run's temperature, fitted on the validation "
                                "images so that a 90% answer is right about 90% of the time (see the Training page's "
                                "Calibration tab). Off: the raw softmax.")
    if not has_t:
        c1.caption("This run keeps no temperature (it had no validation split, or was trained before calibration "
                   "was added): raw probabilities.")
    tta = c2.selectbox("Test-time augmentation", ["none", *TTA_MODES], key="pr_tta",
                       format_func=lambda m: "none" if m == "none" else f"{m}: {TTA_MODES[m]}",
                       help="Average the probabilities over several views of the image. Whether it helps this "
                            "run is measured on the Training page (Test-time augmentation tab).")
    return calibrated and has_t, None if tta == "none" else tta


def show_prediction(predictor: Predictor, source, topk: int, calibrated: bool = True, tta: str | None = None) -> None:
    try:
        data = source.getvalue()
        check_image_upload(data, source.name)
        # decoded once, at reduced scale when it is a large JPEG: enough for the model and the 800-pixel view
        image = open_image(data, min_side=predictor.transform.decode_min_side, min_long_side=800)
        probs = predictor.probabilities(image, calibrated=calibrated, tta=tta)
    except UserError as exc:
        st.error(str(exc))
        return
    values, indices = probs.topk(topk)
    kind = "calibrated" if calibrated else "raw"
    table = pd.DataFrame({"class": [predictor.classes[i] for i in indices.tolist()],
                          f"probability ({kind}, %)": [round(100 * v, 1) for v in values.tolist()],
                          "probability": values.tolist()})
    left, middle, right = st.columns([2, 2, 3])
    with left:
        size = "×".join(map(str, image.info.get("decoded_from", image.size)))
        st.image(thumbnail_jpeg(image, 800), caption=f"{source.name} ({size}, shown upright)", width="stretch")
    with middle:
        ranked = [predictor.classes[i] for i in probs.argsort(descending=True).tolist()]
        target = st.selectbox("Explain the class", ranked, key=f"pr_cam_class:{predictor.source}:{source.name}",
                              help="Grad-CAM: which parts of the image raise this class's score. "
                                   "Pre-selected: the predicted class.")
        show_explanation(predictor, image, predictor.classes.index(target), image_key=source.file_id)
    with right:
        best = table.iloc[0]
        st.metric("Prediction", best["class"], f"{pct(best['probability'])} probability ({kind})", delta_color="off",
                  delta_arrow="off")
        note = predictor.transform.tta_note(tta)
        st.caption(("Calibrated" if calibrated else "Raw") + " probabilities"
                   + (f", temperature {predictor.temperature:.2f}" if calibrated else "")
                   + (f", averaged over {tta} views" if tta else "") + (f" ({note})" if note else "") + ".")
        st.altair_chart(alt.Chart(table).mark_bar().encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            y=alt.Y("class:N", sort=None), tooltip=["class", alt.Tooltip("probability:Q", format=".1%")]),
            width="stretch")
        shown = f"probability ({kind}, %)"
        st.dataframe(table[["class", shown]], hide_index=True, column_config={shown: st.column_config.ProgressColumn(
            format="%.1f%%", min_value=0.0, max_value=100.0)})


IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "bmp"]


def _batch_paths(uploads, folder: Path) -> dict[str, str]:
    """Write the uploaded images (each checked) and unpack uploaded zips (safely) into ``folder``: {path written: the
    name the visitor knows it by} (a loose file's own name; a zip member's path inside its zip, folders kept)."""
    shown = {}
    for i, upload in enumerate(uploads):
        data = upload.getvalue()
        if upload.name.lower().endswith(".zip"):
            unpacked = Path(extract_zip(data, folder, upload.name))
            shown.update({p: Path(p).relative_to(folder).as_posix() for p in image_files(unpacked)})
            continue
        check_image_upload(data, upload.name)
        name = Path(upload.name).name
        path = folder / f"loose-{i:05d}" / name  # a folder each: two uploads may share a name
        path.parent.mkdir()
        path.write_bytes(data)
        shown[str(path)] = name
    return shown


def _checkpoint_stamp(run) -> int:
    try:
        return RunDir(run.path).checkpoint().stat().st_mtime_ns
    except (AttributeError, OSError):
        return 0


@st.cache_data(show_spinner=False, max_entries=64)
def _stale_exports(run_path: str, checkpoint_stamp: int) -> list:
    """Exports in the run folder that no longer match its checkpoint; computed again when the checkpoint changes."""
    try:
        return stale_exports(run_path)
    except UserError:  # a checkpoint that cannot be read is said where the model is loaded
        return []


def render_export(run) -> None:
    """TorchScript or ONNX files of this run's model, each with its JSON sidecar, to download."""
    with st.expander("Export the model (TorchScript or ONNX, with a JSON sidecar of classes and preprocessing)"):
        c1, c2 = st.columns(2)
        for column, fmt, label in ((c1, "torchscript", "TorchScript"), (c2, "onnx", "ONNX")):
            key = f"pr_export_{fmt}_{run.name}_{_checkpoint_stamp(run)}"  # a newer best epoch: prepare it again
            if column.button(f"Prepare {label}", key=f"pr_prepare_{fmt}"):
                with tempfile.TemporaryDirectory() as tmp, user_errors(), st.spinner(f"Exporting {label}…"):
                    st.session_state[key] = export_bytes(run.path, fmt, tmp)
            if key in st.session_state:
                model, side, name = st.session_state[key]
                column.download_button(f"Download {name}", model, file_name=name, key=f"pr_dl_{fmt}")
                column.download_button(f"Download {name}.json", side, file_name=f"{name}.json",
                                       mime="application/json", key=f"pr_dl_{fmt}_json")


def render_batch(predictor: Predictor, topk: int, calibrated: bool = True) -> None:
    """Several images (or zips of them) at once: a table with a CSV download."""
    with st.expander("Predict many images at once (several files or a zip), with a CSV"):
        uploads = st.file_uploader("Images or zips", type=IMAGE_TYPES + ["zip"], accept_multiple_files=True,
                                   key="pr_batch")
        was_stopped("pr_batch_run", "prediction of many images")
        if not uploads or not st.button("Predict them", key="pr_batch_go"):
            return
        rows = None
        with tempfile.TemporaryDirectory() as tmp, user_errors():
            names = _batch_paths(uploads, Path(tmp))
            rows = run_with_stop(predict_many(predictor, list(names), topk=topk, calibrated=calibrated),
                                 key="pr_batch_run", what="prediction of many images",
                                 describe=lambda step: f"Predicting… {step.done}/{step.total} images")
            score = score_predictions(rows, names, predictor.classes) if rows is not None else None
            if score is not None:  # while the unpacked files exist: the mistakes' thumbnails
                render_scored(score, [(thumbnail(i.path), i) for i in score.misclassified[:MISTAKES_SHOWN]])
        if rows is None:  # it failed, and said why
            return
        failed = sum(bool(r.error) for r in rows)
        st.success(f"Predicted {plural(len(rows) - failed, 'image')}"
                   + (f"; {plural(failed, 'file')} could not be read (see the error column)" if failed else "") + ".")
        table = pd.DataFrame([[names[r.path], *r.csv_fields()[1:]] for r in rows], columns=CSV_HEADER)
        st.dataframe(table, hide_index=True, width="stretch")
        st.download_button("Download the CSV", table.to_csv(index=False), file_name="predictions.csv",
                           mime="text/csv", key="pr_batch_csv")


MISTAKES_SHOWN = 24


def render_scored(score: FolderScore, mistakes: list) -> None:
    """A labelled batch (sub-folders named as the model's classes, in a zip): the test report's figures for it."""
    st.markdown("**These images are labelled** (their folders are named as the model's classes), so the predictions "
                "are scored, as the test split is after training:")
    st.metric("Accuracy on these images", pct(score.accuracy.value), help=score.accuracy.interval_text())
    st.caption(score.summary())
    left, right = st.columns([3, 2])
    with left:
        rows = [{"class": c.name, "precision": c.precision, "recall": c.recall, "F1": c.f1, "support": c.support}
                for c in [*score.per_class[:SHOWN_CLASSES], score.macro, score.weighted]]
        percent = st.column_config.NumberColumn(format="percent")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                     column_config={"precision": percent, "recall": percent, "F1": percent})
    with right:
        if len(score.classes) <= SHOWN_CLASSES:
            confusion_chart(score.classes, score.confusion)
    wrong = score.scored - score.correct
    if not wrong:
        return
    st.markdown(f"**Misclassified: {plural(wrong, 'image')}**, most confident mistakes first")
    shown = [(img, f"{i.name}: {score.classes[i.label]} → {score.classes[i.pred]} ({pct(i.probability, 0)})")
             for img, i in mistakes if img is not None]
    if shown:
        st.image([img for img, _ in shown], caption=[c for _, c in shown], width=112)
    if len(shown) < wrong:
        st.caption(f"Thumbnails: {len(shown):,} of {wrong:,} misclassified images (the most confident mistakes); "
                   "the JSON below lists " + (f"all {wrong:,}." if wrong <= len(score.misclassified) else
                                              f"the first {len(score.misclassified):,}."))
    st.download_button("Download the scored report (JSON)", json.dumps(score.to_json(), indent=1),
                       file_name="scored.json", mime="application/json", key="pr_scored_json")


def main() -> None:
    st.title("5 · Prediction")
    st.caption("Upload an image or take a snapshot; the model preprocesses it exactly as in evaluation.")
    run, topk_column = pick_run()
    predictor = load_model(run)
    n = len(predictor.classes)
    topk = topk_column.slider("Top k", 1, max(2, n), min(5, n), key="pr_topk", disabled=n < 2)
    names = predictor.classes
    st.caption(f"Checkpoint `{predictor.source.rsplit('/', 1)[-1]}` from epoch {predictor.epoch} · "
               f"classes: {', '.join(names[:SHOWN_CLASSES])}"
               + (f", and {len(names) - SHOWN_CLASSES:,} more" if len(names) > SHOWN_CLASSES else ""))
    for stale in _stale_exports(str(run.path), _checkpoint_stamp(run)):
        st.warning(stale.sentence()[:1].upper() + stale.sentence()[1:] + ".")
    calibrated, tta = probability_options(predictor)
    source = get_image()
    if source is not None:
        show_prediction(predictor, source, min(topk, n), calibrated, tta)
    render_batch(predictor, min(topk, n), calibrated)
    render_export(run)


main()
