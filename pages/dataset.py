import io
import os
import random
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from pages.common import load_state, save_state
from core.split import split_dataset, write_split
from core.errors import UserError
from core.images import open_image
from core.uploads import download_dataset, extract_zip
from core.settings import settings
from core.workspace import allowed_roots, check_allowed, datasets_dir, lists_dir_for, workspace_dir
from pages.common import data_root, demo_root, split_summary, user_errors

st.title("1 · Dataset")
st.caption("A root folder with one sub-folder per class. Each class is split on its own after a seeded shuffle.")

state = load_state()
root = data_root()


def choose_root(path: str) -> None:
    save_state(data_root=str(path))


# ----------------------------------------------------------------------------- choose the data
with st.expander("Choose the data", expanded=False):
    source = st.radio("Source", ["Workspace datasets", "A folder on this machine", "Upload a zip",
                                 "Download a zip"], horizontal=True, key="ds_source")
    if source == "Workspace datasets":
        demo = demo_root(str(workspace_dir()))
        options = sorted({demo, root, *[str(p) for p in datasets_dir().iterdir()
                                        if p.is_dir() and not p.name.startswith(".")]})
        picked = st.selectbox("Dataset", options, index=options.index(root), key="ds_pick",
                              format_func=lambda p: f"{Path(p).name}  ({p})")
        if picked != root and st.button("Use this dataset", key="ds_use_pick"):
            choose_root(picked)
            st.rerun()
    elif source == "A folder on this machine":
        typed = st.text_input("Folder path", value=root, key="ds_path",
                              help="Only folders under the allowed roots can be read (TLD_ALLOWED_ROOTS).")
        if st.button("Use this folder", key="ds_use_path"):
            try:
                path = check_allowed(typed)
                if not path.is_dir():
                    raise UserError(f"'{typed}' is not a folder")
                split_dataset(path, allowed_roots=allowed_roots())  # refuse unusable folders before switching
            except UserError as exc:
                st.error(str(exc))  # the current dataset stays as it was
            else:
                choose_root(str(path))
                st.rerun()
    elif source == "Upload a zip":
        upload = st.file_uploader("A zip of class folders", type=["zip"], key="ds_zip")
        if upload is not None and st.button("Extract and use", key="ds_extract"):
            with user_errors(), st.spinner("Extracting…"):
                path = extract_zip(upload.getvalue(), datasets_dir(), upload.name)
                try:
                    split_dataset(path)
                except UserError as exc:
                    st.warning(f"Extracted to `{path}`, but it is not usable as a dataset: {exc}")
                    st.stop()
            choose_root(str(path))
            st.success(f"Extracted to `{path}`.")
            st.rerun()
    else:
        url = st.text_input("Address of a zip of class folders", key="ds_url",
                            value=settings().example_dataset_url,
                            placeholder="https://example.org/flowers.zip")
        if st.button("Download and use", key="ds_download", disabled=not url):
            bar = st.progress(0.0, text="Downloading…")

            def progress(done, total):
                bar.progress(min(done / total, 1.0) if total else 0.0,
                             text=f"Downloading… {done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else ""))

            with user_errors():
                path = download_dataset(url, datasets_dir(), progress=progress)
            choose_root(str(path))
            st.rerun()

st.write(f"**Data root:** `{root}`")

# ----------------------------------------------------------------------------- split settings
c1, c2 = st.columns(2)
ratio = c1.slider("Train ratio", 0.1, 0.9, float(state["train_ratio"]), 0.05, key="ds_ratio",
                  help="Share of each class that goes to training; the rest is the test set.")
seed = c2.slider("Seed", 0, 100, min(int(state["seed"]), 100), key="ds_seed",
                 help="The same seed always gives the same split.")
if (ratio, seed) != (state["train_ratio"], state["seed"]):
    save_state(train_ratio=ratio, seed=int(seed))

with user_errors():
    result = split_summary(root, ratio, int(seed))
summary = result["summary"]

if summary["given_by"]:
    st.info(f"**Split given by the dataset** ({summary['given_by']}): its own train and test images are used as "
            "they are, so the train ratio does not apply; `train` and `val` are not classes.")
for warning in summary["warnings"]:
    st.warning(warning)

counts = pd.DataFrame(summary["counts"]).rename(columns={"name": "class"})
left, right = st.columns([2, 3])
with left:
    st.subheader(f"{len(counts)} classes · {summary['train_images']} train / {summary['test_images']} test")
    st.dataframe(counts[["label", "class", "train", "test"]], hide_index=True, width="stretch")
with right:
    long = counts.melt(id_vars=["class"], value_vars=["train", "test"], var_name="part", value_name="images")
    chart = alt.Chart(long).mark_bar().encode(
        x=alt.X("images:Q", stack=True), y=alt.Y("class:N", sort=None), color=alt.Color("part:N"),
        tooltip=["class", "part", "images"])
    st.altair_chart(chart, width="stretch")


# ----------------------------------------------------------------------------- thumbnails
@st.cache_data(max_entries=512, show_spinner=False)
def thumbnail(path: str, mtime: float) -> bytes | None:
    try:
        img = open_image(path)
    except UserError:
        return None
    img.thumbnail((112, 112))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:  # removed since the scan: the thumbnail then says it cannot be read
        return 0.0


st.subheader("Samples")
per_class = st.slider("Thumbnails per class", 1, 12, 6, key="ds_thumbs")
by_class: dict[int, list[str]] = {}
for path, label in result["train"] + result["test"]:
    by_class.setdefault(label, []).append(path)
rng = random.Random(0)
for label, name in enumerate(summary["classes"]):
    paths = sorted(by_class.get(label, []))
    sample = rng.sample(paths, min(per_class, len(paths)))
    images = [t for t in (thumbnail(p, _mtime(p)) for p in sample) if t is not None]
    st.markdown(f"**{name}** ({len(paths)} images)")
    if images:
        st.image(images, width=96)

if summary["skipped"]:
    with st.expander(f"{len(summary['skipped'])} files were skipped"):
        st.dataframe(pd.DataFrame(summary["skipped"]), hide_index=True, width="stretch")

# ----------------------------------------------------------------------------- write the lists
st.subheader("List files")
out_dir = lists_dir_for(root)
st.caption(f"Written to `{out_dir}`. Each training run keeps its own copy, so rewriting them never changes a past run.")
if st.button("Write train.txt / test.txt", type="primary", key="ds_write"):
    with user_errors(), st.spinner("Writing…"):
        write_split(split_dataset(root, ratio, int(seed), allowed_roots=allowed_roots()), out_dir, overwrite=True)
    st.success(f"Wrote {summary['train_images']} train and {summary['test_images']} test lines.")
if (out_dir / "train.txt").exists():
    for name in ("train.txt", "test.txt"):
        st.markdown(f"`{name}` (first lines: path, tab, label)")
        with open(out_dir / name, encoding="utf-8") as f:
            st.code("".join(line for _, line in zip(range(5), f)) or "(empty)", language=None)
