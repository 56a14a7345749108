"""The password gate: who may see the pages, and who may upload.

With a password set (TLD_PASSWORD or the secret ``password``), a session sees nothing but the login
form until it has typed the password, and the server keeps no file it uploads. streamlit_app.py
calls ``install_serving_guards()`` and ``require_password()`` before ``st.navigation``, on every script
run; the pages live in ``app_pages/`` (not ``pages/``), so Streamlit never runs a page script on its
own, without the entry script.

This module imports nothing heavy: it runs first on a fresh server, before a session can learn the
id it would upload under.
"""
from __future__ import annotations

import hmac
import threading

import streamlit as st

from core.guard import GuessLimiter

_guesses = GuessLimiter()  # process-wide: every session and address of this server together
_passed: set[str] = set()  # ids of the sessions that typed the password
_passed_lock = threading.Lock()


def configured_password() -> str | None:
    from core.settings import settings

    if settings().password:
        return settings().password
    try:
        return st.secrets.get("password") or None
    except Exception:  # no secrets file: no password
        return None


def _session_id() -> str | None:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


def may_upload(session_id: str) -> bool:
    """Whether the server keeps files this session uploads: always without a password, else once it passed."""
    try:
        if configured_password() is None:
            return True
    except Exception:  # a setting that cannot be read: refuse rather than guess
        return False
    with _passed_lock:
        return session_id in _passed


def install_serving_guards() -> None:
    """Two guards on Streamlit's server, installed once per server process on the first script run (a
    session learns its id only from a script run, so none can upload before):

    - uploads from sessions that have not passed the gate are refused before their body is read:
      Streamlit's upload route asks ``Runtime.is_active_session`` about the session in the URL first,
      and nothing else asks it, so the answer now also requires the gate;
    - what a session was shown (thumbnails, overlays: ``/media/…`` files) is dropped as soon as its
      websocket goes: Streamlit keeps a disconnected session for reconnecting and never shuts one down
      when that wait expires, so its media would stay readable by anyone with the address. A session that
      comes back reruns its page, which makes them again.
    """
    from streamlit.runtime import Runtime

    if getattr(Runtime.is_active_session, "tld_gate", False):
        return
    still_active = Runtime.is_active_session
    disconnect = Runtime.disconnect_session

    def is_active_session(self, session_id: str) -> bool:
        return still_active(self, session_id) and may_upload(session_id)

    def disconnect_session(self, session_id: str, *, client=None) -> None:
        disconnect(self, session_id, client=client)
        if not still_active(self, session_id):
            self.media_file_mgr.clear_session_refs(session_id)
            self.media_file_mgr.remove_orphaned_files()

    is_active_session.tld_gate = True
    Runtime.is_active_session = is_active_session
    Runtime.disconnect_session = disconnect_session


def client_address() -> str:
    try:
        address = st.context.ip_address
    except Exception:  # no request behind this run
        address = None
    return address if isinstance(address, str) and address else "local"  # AppTest hands out a stand-in object


def _passed_gate() -> None:
    st.session_state["authenticated"] = True
    session = _session_id()
    if session is not None:
        with _passed_lock:
            _passed.add(session)


def require_password() -> None:
    """When a password is configured, show only the login form until this session has typed it."""
    expected = configured_password()
    if not expected or st.session_state.get("authenticated"):
        return
    st.title("Transfer-learning dashboard")
    with st.form("login"):
        typed = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Enter")
    if submitted:
        address = client_address()
        wait = _guesses.attempt(address)
        if wait > 0:
            st.error(f"Too many wrong passwords were tried from your address or on this server. Try again in "
                     f"{wait:.0f} s.")
        elif hmac.compare_digest(typed.encode(), expected.encode()):
            _guesses.succeeded(address)
            _passed_gate()
            st.rerun()
        else:
            st.error("That is not the password.")
    st.stop()
