"""The dashboard's pages (st.navigation), served by ``streamlit_app.py`` behind its password gate.

Run ``streamlit run streamlit_app.py``, not this file: on its own it has no gate, so with a password
configured it shows only a message saying so. Tests drive it headlessly with ``AppTest``.
"""
import streamlit as st

from app_pages.gate import configured_password, served_through_gate
from app_pages.shell import app_icon, logout_link, settings_or_stop

# A drawn icon, not a :material: one: those are fetched from a font server, and the app must send
# nothing anywhere (it is used offline).
st.set_page_config(page_title="Transfer-learning dashboard", page_icon=app_icon(), layout="wide")
# Streamlit's own "Stop" (top right, while a page redraws) only stops that redraw, never a training run;
# hidden so the Training page's Stop is the one Stop a visitor sees.
st.html("<style>[data-testid='stStatusWidget'] button {display: none;}</style>")
if configured_password() and not served_through_gate():
    # Started as `streamlit run dashboard.py`: nothing checked this visitor's password, so show nothing.
    st.error("A password is set, but this server was started without its gate. Start it with "
             "`streamlit run streamlit_app.py` (or scripts/run-app.sh).")
    st.stop()
settings_or_stop()  # a TLD_* value that cannot be read: one message naming it, and nothing else runs
logout_link()

pages = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/dataset.py", title="1 · Dataset", icon=":material/folder_open:"),
    st.Page("app_pages/check.py", title="2 · Check the data", icon=":material/troubleshoot:"),
    st.Page("app_pages/surgery.py", title="3 · Model surgery", icon=":material/build:"),
    st.Page("app_pages/training.py", title="4 · Training", icon=":material/monitoring:"),
    st.Page("app_pages/prediction.py", title="5 · Prediction", icon=":material/online_prediction:"),
]
st.navigation(pages).run()
