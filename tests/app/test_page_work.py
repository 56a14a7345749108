"""Heavy in-page work waits its turn (core.platform.slots, app_pages.work.run_with_stop): at most
TLD_MAX_PAGE_WORK jobs at once per server, the rest in line, first come first served, each told its place."""
import threading
import time

from core.platform.slots import PAGE_WORK, WorkSlots
from tests.conftest import app_test


def test_the_line_is_first_come_first_served_with_places():
    slots = WorkSlots()
    a, b, c = slots.join(), slots.join(), slots.join()
    assert slots.start(a, 1) == 0  # the first takes the one slot
    assert slots.start(c, 1) == 2 and slots.start(b, 1) == 1  # the others wait, told their place
    slots.leave(a)
    assert slots.start(c, 1) == 2  # not its turn: b is ahead
    assert slots.start(b, 1) == 0 and slots.start(c, 1) == 1
    slots.leave(c)  # Stop while waiting: out of the line
    assert slots.waiting == 0 and slots.running == 1
    slots.leave(b)
    assert slots.running == 0


def test_many_threads_never_run_more_than_the_limit():
    slots, busy, most = WorkSlots(), [0], [0]
    lock = threading.Lock()

    def job():
        ticket = slots.join()
        while slots.start(ticket, 3):
            time.sleep(0.001)
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.01)
        with lock:
            busy[0] -= 1
        slots.leave(ticket)

    threads = [threading.Thread(target=job) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 3 and slots.running == slots.waiting == 0


def test_a_full_line_asks_the_visitor_to_come_back():
    slots = WorkSlots(max_waiting=2)
    assert slots.join() is not None and slots.join() is not None
    assert slots.join() is None


def test_the_check_page_waits_for_a_slot_and_then_runs(small_root, monkeypatch):
    """Another visitor's job holds the only slot: the Check page's job waits until it ends, then runs."""
    monkeypatch.setenv("TLD_MAX_PAGE_WORK", "1")
    at = app_test("app_pages/check.py")
    holder = PAGE_WORK.join()
    assert PAGE_WORK.start(holder, 1) == 0
    threading.Timer(3.0, PAGE_WORK.leave, args=(holder,)).start()
    started = time.monotonic()
    at.button(key="ck_run").click().run(timeout=300)
    assert time.monotonic() - started >= 2.5  # it waited for the other job
    assert not at.exception and not [e.value for e in at.error]
    assert PAGE_WORK.running == PAGE_WORK.waiting == 0  # its slot was given back


def test_a_busy_server_says_so_instead_of_queueing_without_end(small_root, monkeypatch):
    monkeypatch.setattr(PAGE_WORK, "max_waiting", 0)
    at = app_test("app_pages/check.py")
    at.button(key="ck_run").click().run(timeout=120)
    assert [w.value for w in at.warning if "server is busy" in w.value] == [
        "The server is busy: 0 jobs are waiting already. Try again in a few minutes."]
