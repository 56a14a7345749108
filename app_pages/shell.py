"""The app around the pages: the settings check that stops every page on a bad value, the icon, the Log out link."""
from __future__ import annotations

import streamlit as st


def settings_or_stop() -> None:
    """Every page needs the TLD_* settings: one that cannot be read is said once, naming it, and nothing runs."""
    from core.platform.errors import ConfigError
    from core.platform.settings import settings

    try:
        settings()
    except ConfigError as exc:
        st.error(f"This app cannot start: {exc}. Whoever runs the server must change it and restart.")
        st.stop()


@st.cache_resource
def app_icon():
    """A small drawn icon (three bars of a chart), made here so nothing is fetched from outside."""
    from PIL import Image, ImageDraw

    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    draw.rounded_rectangle([2, 2, 62, 62], radius=12, fill=(255, 75, 75, 255))
    for i, height in enumerate((18, 30, 42)):
        draw.rectangle([12 + 15 * i, 52 - height, 22 + 15 * i, 52], fill=(255, 255, 255, 255))
    return icon


def logout_link() -> None:
    """With a password set, a "Log out" link at the foot of the sidebar (the gate's /logout route)."""
    from app_pages.gate import LOGOUT_PATH, configured_password

    if configured_password():
        st.sidebar.markdown(f'<a href="{LOGOUT_PATH}" target="_self">Log out</a>', unsafe_allow_html=True)
