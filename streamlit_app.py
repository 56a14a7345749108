"""Transfer-learning dashboard: fine-tune a pretrained CNN on a folder of images and see what happened."""
import streamlit as st

from app_pages.gate import install_serving_guards, require_password

install_serving_guards()  # first: before this session could learn the id it would upload under

from app_pages.common import app_icon, settings_or_stop  # noqa: E402  (after the guard, which must come first)

# A drawn icon, not a :material: one: those are fetched from a font server, and the app must send
# nothing anywhere (it is used offline).
st.set_page_config(page_title="Transfer-learning dashboard", page_icon=app_icon(), layout="wide")
# Streamlit's own "Stop" (top right, while a page redraws) only stops that redraw, never a training run;
# hidden so the Training page's Stop is the one Stop a visitor sees.
st.html("<style>[data-testid='stStatusWidget'] button {display: none;}</style>")
settings_or_stop()  # a TLD_* value that cannot be read: one message naming it, and nothing else runs
require_password()  # before st.navigation: no page runs for a session that has not typed the password

pages = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/dataset.py", title="1 · Dataset", icon=":material/folder_open:"),
    st.Page("app_pages/check.py", title="2 · Check the data", icon=":material/troubleshoot:"),
    st.Page("app_pages/surgery.py", title="3 · Model surgery", icon=":material/build:"),
    st.Page("app_pages/training.py", title="4 · Training", icon=":material/monitoring:"),
    st.Page("app_pages/prediction.py", title="5 · Prediction", icon=":material/online_prediction:"),
]
st.navigation(pages).run()
