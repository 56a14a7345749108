import streamlit as st

from app_pages.charts import test_cell
from app_pages.choices import data_root, load_state, split_line, split_summary
from app_pages.work import user_errors
from core.analysis.report import SHOWN_CLASSES
from core.platform.workspace import runs_dir
from core.runs.listing import list_runs
from core.spec.states import RunState

INTRO = """
Fine-tune a pretrained CNN on your own folder of images, the way the classic tutorial does it,
and see every step:

1. **Dataset**: one sub-folder per class, split per class into `train.txt` / `val.txt` / `test.txt`.
2. **Check the data**: unreadable files, duplicates leaking between train and test, suspect labels,
   a map of the images as the backbone sees them, and the accuracy a head-only fine-tune should reach.
3. **Model surgery**: swap the ImageNet head for one with *N* outputs, load pretrained weights,
   freeze the body. See what was replaced, popped, dropped and frozen.
4. **Training**: the staged fine-tune (the head, then the last stage) in a background process, with live
   loss and accuracy.
   Compare pretrained against from-scratch runs.
5. **Prediction**: upload an image or take a snapshot, get class probabilities.

Once installed, everything works offline: a synthetic demo dataset is generated on first launch, and
the ImageNet weights of EfficientNet-Lite0, -Lite1 and -Lite2 ship with the app.
"""


def render_dataset() -> None:
    st.subheader("Current dataset")
    with user_errors():
        root = data_root()
        state = load_state()
        summary = split_summary(root, state)["summary"]
    st.write(f"`{root}`")
    st.write(f"{len(summary['classes'])} classes · {split_line(summary)}")
    names = summary["classes"]
    st.caption(", ".join(names[:SHOWN_CLASSES])
               + (f", and {len(names) - SHOWN_CLASSES:,} more" if len(names) > SHOWN_CLASSES else ""))
    st.page_link("app_pages/dataset.py", label="Change the dataset", icon=":material/folder_open:")


def render_latest_run() -> None:
    st.subheader("Latest run")
    runs = list_runs(runs_dir())
    if not runs:
        st.info("No run yet. Go through the pages in order, or jump straight to Training: the defaults work.")
    else:
        run = runs[0]
        st.write(f"**{run.name}** · {run.status}")
        if run.config is None or run.status is RunState.DAMAGED:
            st.warning(f"This run is damaged: {run.reason}")
        else:
            cfg = run.config
            st.write(f"{cfg.arch} · {'pretrained' if cfg.pretrained else 'from scratch'} · "
                     f"trains {cfg.what_trains} · test accuracy {test_cell(run)}")
    # Opens Training on the run just described (its ?run=), not on whichever run that page last followed.
    st.page_link("app_pages/training.py", label="Open Training", icon=":material/monitoring:",
                 query_params={"run": runs[0].name} if runs else None)


def main() -> None:
    st.title("Transfer-learning dashboard")
    st.markdown(INTRO)
    left, right = st.columns(2)
    with left:
        render_dataset()
    with right:
        render_latest_run()


main()
