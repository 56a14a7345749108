"""Transfer-learning dashboard: fine-tune a pretrained CNN on a folder of images and see what happened."""
import streamlit as st

st.set_page_config(page_title="Transfer-learning dashboard", page_icon="🧠", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/dataset.py", title="1 · Dataset", icon="🗂️"),
    st.Page("pages/surgery.py", title="2 · Model surgery", icon="🔧"),
    st.Page("pages/training.py", title="3 · Training", icon="📈"),
    st.Page("pages/prediction.py", title="4 · Prediction", icon="🔮"),
]
st.navigation(pages).run()
