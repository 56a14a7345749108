"""Transfer-learning dashboard: fine-tune a pretrained CNN on a folder of images and see what happened."""
import streamlit as st

from pages.common import app_icon, require_password

# A drawn icon, not a :material: one: those are fetched from a font server, and the app must send
# nothing anywhere (it is used offline).
st.set_page_config(page_title="Transfer-learning dashboard", page_icon=app_icon(), layout="wide")
# Streamlit's own "Stop" (top right, while a page redraws) only stops that redraw, never a training run;
# hidden so the Training page's Stop is the one Stop a visitor sees.
st.html("<style>[data-testid='stStatusWidget'] button {display: none;}</style>")
require_password()

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/dataset.py", title="1 · Dataset", icon=":material/folder_open:"),
    st.Page("pages/surgery.py", title="2 · Model surgery", icon=":material/build:"),
    st.Page("pages/training.py", title="3 · Training", icon=":material/monitoring:"),
    st.Page("pages/prediction.py", title="4 · Prediction", icon=":material/online_prediction:"),
]
st.navigation(pages).run()
