"""How a page does work: a UserError shown as a message instead of a traceback, and heavy work with a progress bar,
Stop, and a place in the server's line for it (TLD_MAX_PAGE_WORK at once)."""
from __future__ import annotations

import time
from contextlib import contextmanager

import streamlit as st

from core.platform.errors import UserError
from core.platform.settings import settings
from core.platform.slots import PAGE_WORK


@contextmanager
def user_errors():
    """Show a UserError as st.error (and stop the page) instead of a traceback."""
    try:
        yield
    except UserError as exc:
        st.error(str(exc))
        st.stop()


@contextmanager
def reported(*leftovers):
    """Show a UserError as st.error and go on with the page (unlike ``user_errors``, which stops it): for an
    action whose failure must not blank what is below. ``leftovers`` (progress bars) are cleared on failure.
    The code after the ``with`` block runs either way: check that what the block made exists."""
    try:
        yield
    except UserError as exc:
        for leftover in leftovers:
            leftover.clear()
        st.error(str(exc))


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def run_with_stop(stream, *, key: str, what: str, describe):
    """Follow ``stream`` under a progress bar and a Stop button; its result, or None when it failed (said
    here). A Stop click ends this script run at once; the ``key`` flag it leaves behind lets the next run say
    so (``was_stopped``). ``describe(record)``: the bar's text for a record with ``done`` and ``total``,
    or None to leave the bar as it is. Bar and button go once the work is done. Heavy work waits its turn in the
    server's line first (core.platform.slots: at most TLD_MAX_PAGE_WORK at once), saying its place."""
    bar = st.progress(0.0, text=f"Preparing the {what}…")
    stop = st.empty()
    stop.button("Stop", key=f"{key}_stop", help=f"Stops the {what} at once.")
    st.session_state[key] = True  # still set on the next run only when Stop cut this one short
    ticket = PAGE_WORK.join()
    if ticket is None:
        bar.empty()
        stop.empty()
        st.session_state.pop(key, None)
        st.warning(f"The server is busy: {PAGE_WORK.waiting} jobs are waiting already. Try again in a few minutes.")
        return None
    try:
        _wait_for_a_slot(ticket, bar, what)
        return _followed(stream, bar, stop, key, describe)
    finally:
        PAGE_WORK.leave(ticket)  # also on Stop (which ends this script run), an error or a closed tab


def _wait_for_a_slot(ticket: int, bar, what: str) -> None:
    """Wait in the server's line for heavy in-page work, saying the place in it (Stop leaves the line)."""
    limit = settings().max_page_work
    shown = None
    while place := PAGE_WORK.start(ticket, limit):
        if place != shown:  # a message only when the place changes
            bar.progress(0.0, text=f"Queued: number {place} in line for the {what}. At most {limit} such job"
                                   f"{'s run' if limit != 1 else ' runs'} at once on this server; yours starts when "
                                   "one ends (Stop leaves the line).")
            shown = place
        time.sleep(0.25)


def _followed(stream, bar, stop, key: str, describe):
    from core.spec.records import follow

    def show(record) -> None:
        text = describe(record)
        if text is not None:
            bar.progress(min(1.0, record.done / max(record.total, 1)), text=text)

    result = None
    with reported(bar):
        result = follow(stream, show)
    st.session_state.pop(key, None)
    bar.empty()
    stop.empty()
    return result


def was_stopped(key: str, what: str) -> None:
    """Say that the last run's work was cut short by its Stop button (see ``run_with_stop``)."""
    if st.session_state.pop(key, False):
        st.info(f"The {what} was stopped.")
