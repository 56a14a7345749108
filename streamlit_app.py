"""Transfer-learning dashboard: fine-tune a pretrained CNN on a folder of images and see what happened.

``streamlit run streamlit_app.py`` serves ``dashboard.py`` (the pages) through Streamlit's ``st.App``,
with the password gate in front as a Starlette middleware: every request and websocket handshake is
checked before Streamlit sees it (app_pages/gate.py says how). Streamlit finds ``app`` by its name.
"""
import streamlit as st
from starlette.middleware import Middleware

from app_pages.gate import GATE, PasswordGate

app = st.App("dashboard.py", middleware=[Middleware(PasswordGate, gate=GATE)], routes=GATE.routes())

if __name__ == "__main__":  # `python streamlit_app.py` works too
    app.run()
