import random
from dataclasses import replace
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages.charts import class_counts_chart, download_progress
from app_pages.choices import (
    choose_data_root,
    current_split,
    data_root,
    demo_root,
    load_state,
    save_state,
    split_line,
    split_sizes,
    split_summary,
)
from app_pages.images import thumbnail
from app_pages.versions import render_version
from app_pages.work import plural, reported, user_errors
from core.data.datasets import training_transform
from core.data.images import open_image
from core.data.split import split_dataset, write_split
from core.data.uploads import download_dataset, extract_zip, unique_folder
from core.platform.errors import UserError
from core.platform.figures import count
from core.platform.settings import settings
from core.platform.workspace import (
    allowed_roots,
    check_allowed,
    datasets_dir,
    lists_dir_for,
    workspace_dir,
    workspace_writes,
)
from core.spec.archs import get_arch
from core.spec.config import AUGMENTATIONS, Choices, field_range

SOURCES = ["Workspace datasets", "A folder on this machine", "Upload a zip", "Download a zip", "CIFAR-10"]


def use_root(path, message: str = "") -> None:
    """Switch to ``path`` (remembered for next time) and redraw; ``message`` is shown once after the redraw."""
    choose_data_root(path)
    if message:
        st.session_state["ds_done"] = message
    st.rerun()


def pick_workspace_dataset(root: str) -> None:
    try:
        demo = [demo_root(str(workspace_dir()))]
    except UserError as exc:  # a read-only or full workspace: the demo cannot be made, the rest still works
        st.caption(f"The demo dataset is not offered: {exc}")
        demo = []
    try:
        found = [str(p) for p in datasets_dir().iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:  # no datasets folder yet (nothing uploaded), or one that cannot be read
        found = []
    options = sorted({*demo, root, *found})
    picked = st.selectbox("Dataset", options, index=options.index(root), key="ds_pick",
                          format_func=lambda p: f"{Path(p).name}  ({p})")
    if picked != root and st.button("Use this dataset", key="ds_use_pick"):
        use_root(picked)


def pick_folder(root: str) -> None:
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
            use_root(path)


def _usable(path: Path) -> bool:
    try:
        split_dataset(path, allowed_roots=allowed_roots())
        return True
    except UserError as exc:
        st.warning(f"Extracted to `{path}`, but it is not usable as a dataset: {exc}")
        return False


def upload_zip() -> None:
    upload = st.file_uploader("A zip of class folders", type=["zip"], key="ds_zip")
    if upload is not None and st.button("Extract and use", key="ds_extract"):
        path = None
        with reported(), st.spinner("Extracting…"), workspace_writes("extract the zip"):
            path = extract_zip(upload.getvalue(), datasets_dir(), upload.name)
        if path is not None and _usable(path):
            use_root(path, f"Extracted {upload.name} to `{path}`; it is now the dataset.")


def download_zip() -> None:
    url = st.text_input("Address of a zip of class folders", key="ds_url", value=settings().example_dataset_url,
                        placeholder="https://example.org/flowers.zip")
    if st.button("Download and use", key="ds_download", disabled=not url):
        path, bar = None, download_progress()
        with reported(bar), workspace_writes("save the download"):
            path = download_dataset(url, datasets_dir(), progress=bar)
        if path is not None and _usable(path):
            use_root(path, f"Downloaded and extracted to `{path}`; it is now the dataset.")


def import_cifar() -> None:
    """The tutorial's VGG16 example: CIFAR-10 from a local archive, or downloaded (170 MB, needs network)."""
    st.caption("CIFAR-10 (10 classes of 32×32 photos) becomes class folders with the archive's own train/test "
               "split, as in the tutorial's VGG16 example.")
    typed = st.text_input("A local cifar-10-python.tar.gz (optional)", key="ds_cifar_path",
                          help="Inside the allowed folders (TLD_ALLOWED_ROOTS). Leave empty to download it.")
    if st.button("Import CIFAR-10", key="ds_cifar"):
        from core.data.cifar import download_cifar10, import_cifar10

        root, download, writing = None, download_progress() if not typed else None, st.empty()
        with reported(*[p for p in (download,) if p]), workspace_writes("import CIFAR-10"):
            archive = check_allowed(typed) if typed else download_cifar10(
                datasets_dir(), download, local_file_hint="in the box above")
            writing.progress(0.0, text="Writing the images…")
            root = import_cifar10(archive, unique_folder(datasets_dir(), "cifar10"),
                                  progress=lambda done, total: writing.progress(done / total,
                                                                                text=f"Batch {done}/{total} written"))
        writing.empty()
        if root is not None:
            use_root(root, f"CIFAR-10 imported to `{root}`; it is now the dataset.")


def render_choose_data(root: str) -> None:
    with st.expander("Choose the data", expanded=False):
        source = st.radio("Source", SOURCES, horizontal=True, key="ds_source")
        if source == SOURCES[0]:
            pick_workspace_dataset(root)
        elif source == SOURCES[1]:
            pick_folder(root)
        elif source == SOURCES[2]:
            upload_zip()
        elif source == SOURCES[3]:
            download_zip()
        else:
            import_cifar()


def render_split_settings(state: Choices, summary: dict) -> dict:
    """The ratios and the seed; returns this visitor's state with them."""
    given = summary["given_by"]
    c1, c2, c3 = st.columns(3)
    ratio = c1.slider("Train ratio", *field_range("train_ratio", ui=True), float(state.train_ratio), 0.05,
                      key="ds_ratio", disabled=bool(given),
                      help="The dataset brings its own train and test folders: the ratio does not apply." if given
                      else "Share of each class used for training and validation; the rest is the test split.")
    three_parts = bool(given) and summary["val_ratio"] is None  # train/ + test/ + val/: every role as given
    val_ratio = c2.slider("Validation ratio", *field_range("val_ratio", ui=True), float(state.val_ratio), 0.05,
                          key="ds_val_ratio", disabled=three_parts,
                          help="The dataset brings its own validation folder: the ratio does not apply." if three_parts
                          else "Share of each class's training images set aside as validation: it chooses the kept "
                               "epoch, early stopping and the temperature, so the test split is looked at once. "
                               "0: none, as the tutorial (the last epoch is kept).")
    seed = c3.number_input("Seed", *field_range("seed", ui=True), int(state.seed), key="ds_seed",
                           help="The same seed always gives the same split.")
    if (ratio, val_ratio, seed) != (state.train_ratio, state.val_ratio, state.seed):
        save_state(train_ratio=ratio, val_ratio=val_ratio, seed=int(seed))
    return replace(state, train_ratio=ratio, val_ratio=val_ratio, seed=int(seed))


def render_counts(summary: dict) -> None:
    if summary["given_by"]:
        st.info(f"**Split given by the dataset** ({summary['given_by']}): its own images are used as they are, so "
                "the train ratio does not apply; the folder names are not classes.")
    for warning in summary["warnings"]:
        st.warning(warning)
    counts = pd.DataFrame(summary["counts"]).rename(columns={"name": "class"})
    left, right = st.columns([2, 3])
    with left:
        st.subheader(f"{len(counts)} classes · {split_sizes(summary)}")
        st.caption(split_line(summary))
        st.dataframe(counts[["label", "class", "train", "val", "test"]].rename(columns={"val": "validation"}),
                     hide_index=True, width="stretch")
    with right:
        class_counts_chart(counts)


def render_samples(result: dict) -> None:
    st.subheader("Samples")
    per_class = st.slider("Thumbnails per class", 1, 12, 6, key="ds_thumbs")
    by_class: dict[int, list[str]] = {}
    for path, label in result["train"] + result["val"] + result["test"]:
        by_class.setdefault(label, []).append(path)
    rng = random.Random(0)
    for label, name in enumerate(result["summary"]["classes"]):
        paths = sorted(by_class.get(label, []))
        sample = rng.sample(paths, min(per_class, len(paths)))
        images = [t for t in (thumbnail(p) for p in sample) if t is not None]
        st.markdown(f"**{name}** ({len(paths)} images)")
        if images:
            st.image(images, width=96)
    skipped = result["summary"]["skipped"]
    if skipped:
        with st.expander(f"{plural(len(skipped), 'file')} skipped"):
            st.dataframe(pd.DataFrame(skipped), hide_index=True, width="stretch")


def render_augmentation_preview(result: dict) -> None:
    """A few random augmentations of one image, as the training loader would draw them."""
    with st.expander("Preview the augmentations"):
        paths = [p for p, _ in result["train"]][:200]
        if not paths:
            return
        c1, c2 = st.columns(2)
        preset = c1.selectbox("Augmentation", AUGMENTATIONS[1:], key="ds_aug")
        path = c2.selectbox("Image", paths, key="ds_aug_image", format_func=lambda p: Path(p).name)
        arch = load_state().arch or "efficientnet_lite0"
        transform = training_transform(get_arch(arch).transforms(), preset)
        transform.normalize = False  # show pixels, not the model's normalised input
        try:
            image = open_image(path, min_side=transform.decode_min_side)
        except UserError as exc:
            st.error(str(exc))
            return
        samples = [transform(image).clamp(0, 1).permute(1, 2, 0).numpy() for _ in range(6)]
        # One column per draw: the gaps keep a flipped draw from reading as one mirrored picture with its neighbour.
        for i, (column, sample) in enumerate(zip(st.columns(6, gap="medium"), samples)):
            column.image(sample, width=112, caption=f"draw {i + 1} of 6")


def render_lists(root: str, state: Choices, summary: dict) -> None:
    st.subheader("List files")
    out_dir = lists_dir_for(root)
    where = st.empty()  # filled after the button, so it says what is true once a click has written them
    if st.button("Write train.txt / val.txt / test.txt", type="primary", key="ds_write"):
        with user_errors(), st.spinner("Writing…"), workspace_writes("write the list files"):
            write_split(current_split(root, state), out_dir, overwrite=True)
        st.success(f"Wrote {count(summary['train_images'])} train, {count(summary['val_images'])} validation and "
                   f"{count(summary['test_images'])} test lines.")
    written = (out_dir / "train.txt").is_file()
    where.caption(f"{'Written to' if written else 'Not written yet; the button writes them to'} `{out_dir}`. Each "
                  "training run keeps its own copy, so rewriting them never changes a past run.")
    for name in ("train.txt", "val.txt", "test.txt"):
        try:
            with open(out_dir / name, encoding="utf-8") as f:
                first = "".join(line for _, line in zip(range(5), f))
        except (OSError, UnicodeDecodeError):
            continue
        st.markdown(f"`{name}` (first lines: path, tab, label)")
        st.code(first or "(empty)", language=None)


def main() -> None:
    st.title("1 · Dataset")
    st.caption("A root folder with one sub-folder per class (or `train/` and `val/` folders of them). Each class "
               "is split on its own after a seeded shuffle.")
    root = data_root()
    if "ds_done" in st.session_state:  # what the last action did, said once after it switched the dataset
        st.success(st.session_state.pop("ds_done"))
    render_choose_data(root)
    st.write(f"**Data root:** `{root}`")
    state = load_state()
    with user_errors():
        result = split_summary(root, state)
    chosen = render_split_settings(state, result["summary"])
    if chosen != state:
        state = chosen
        with user_errors():
            result = split_summary(root, state)
    render_counts(result["summary"])
    with user_errors():
        render_version(root, current_split(root, state))
    render_samples(result)
    render_augmentation_preview(result)
    render_lists(root, state, result["summary"])


main()
