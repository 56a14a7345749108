"""The password gate in front of the server (app_pages/gate.py), driven as an ASGI app without a network.

The gate wraps a stand-in app that answers every request it is let through, so each test sees exactly
what gets past the middleware: pages, Streamlit's own routes, media, uploads, websocket handshakes.
A fresh real server (st.App) refusing every route without the cookie is in tests/e2e/test_servers.py.
"""
import asyncio
import threading
import time
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from streamlit.testing.v1 import AppTest

from app_pages.gate import CLIENT_COOKIE, SESSION_COOKIE, Gate, PasswordGate, safe_return_path
from core.platform.guard import GuessLimiter
from tests.conftest import ROOT

STREAMLIT_PATHS = ["/", "/dataset", "/training?run=x", "/_stcore/health", "/_stcore/host-config",
                   "/_stcore/upload_file/abc/def", "/media/0123abcd.png", "/static/js/main.js",
                   "/component/x/index.html", "/made-up", "/favicon.ico"]


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


class Client:
    """A browser's cookie jar over one ASGI app: requests in-process, cookies kept as a browser would."""

    def __init__(self, app, address="10.0.0.5"):
        self.app, self.address, self.cookies = app, address, {}

    def _scope(self, kind, method, path, headers):
        raw_path, _, query = path.partition("?")
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        headers = {"host": "dash.example", **({"cookie": cookie} if cookie else {}), **headers}
        return {"type": kind, "method": method, "path": raw_path, "raw_path": raw_path.encode(),
                "query_string": query.encode(), "scheme": "http" if kind == "http" else "ws", "root_path": "",
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
                "client": (self.address, 50000), "server": ("dash.example", 80), "http_version": "1.1",
                "asgi": {"version": "3.0"}}

    def request(self, method, path, body=b"", headers=None):
        headers = dict(headers or {})
        if body:
            headers.setdefault("content-type", "application/x-www-form-urlencoded")
            headers.setdefault("content-length", str(len(body)))
        sent, messages = [], [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        asyncio.run(self.app(self._scope("http", method, path, headers), receive, send))
        start = next(m for m in sent if m["type"] == "http.response.start")
        reply_headers = [(k.decode(), v.decode()) for k, v in start["headers"]]
        for name, value in reply_headers:
            if name == "set-cookie":
                for morsel in SimpleCookie(value).values():
                    if morsel["max-age"] == "0" or morsel["expires"].startswith("Thu, 01 Jan 1970"):
                        self.cookies.pop(morsel.key, None)
                    else:
                        self.cookies[morsel.key] = morsel.value
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], dict(reply_headers), body.decode(), reply_headers

    def get(self, path, **headers):
        return self.request("GET", path, headers={"accept": "text/html", **headers})

    def login(self, password, next_path="/"):
        return self.request("POST", "/login", urlencode({"password": password, "next": next_path}).encode(),
                            headers={"origin": "http://dash.example"})

    def websocket(self, path="/_stcore/stream"):
        """The first thing the app sends to a websocket handshake: accepted, or closed before accepting (403)."""
        sent = []

        async def receive():
            return {"type": "websocket.connect"} if not sent else {"type": "websocket.disconnect", "code": 1000}

        async def send(message):
            sent.append(message)

        asyncio.run(self.app(self._scope("websocket", "GET", path, {}), receive, send))
        return sent[0]["type"]


async def _answer(request):
    return PlainTextResponse(f"app: {request.url.path}")


async def _accept(websocket):
    await websocket.accept()
    await websocket.close()


def gated_app(gate: Gate) -> Starlette:
    """Streamlit's place taken by an app that answers everything: what reaches it got past the gate."""
    return Starlette(routes=[*gate.routes(), WebSocketRoute("/_stcore/stream", _accept),
                             Route("/{path:path}", _answer, methods=["GET", "HEAD", "POST", "PUT", "DELETE"])],
                     middleware=[Middleware(PasswordGate, gate=gate)])


@pytest.fixture
def gate(monkeypatch):
    monkeypatch.setenv("TLD_PASSWORD", "correct horse")
    return Gate(guesses=GuessLimiter(clock=FakeClock()), clock=FakeClock(1_800_000_000.0))


def test_without_the_cookie_every_route_is_refused_and_pages_go_to_the_login_form(gate):
    client = Client(gated_app(gate))
    for path in STREAMLIT_PATHS:
        for method in ("GET", "HEAD", "POST", "PUT"):
            status, headers, body, _ = client.request(method, path, headers={"accept": "text/html"})
            assert "app:" not in body, (method, path)
            if method in ("GET", "HEAD") and not path.startswith(("/_stcore/", "/media/", "/static/", "/component/")):
                assert status == 303 and headers["location"].startswith("/login?next="), (method, path)
            else:
                assert status == 401, (method, path, status)
    assert client.websocket() == "websocket.close"  # the handshake is refused before Streamlit sees it
    status, _, body, _ = client.get("/login")
    assert status == 200 and 'type="password"' in body and "<script" not in body


def test_the_right_password_sets_a_signed_http_only_strict_cookie_and_opens_everything(gate):
    client = Client(gated_app(gate))
    client.get("/login?next=/training%3Frun%3Dx")
    status, headers, _, raw = client.login("correct horse", "/training?run=x")
    assert status == 303 and headers["location"] == "/training?run=x"
    session_header = next(v for k, v in raw if k == "set-cookie" and v.startswith(SESSION_COOKIE))
    assert "HttpOnly" in session_header and "SameSite=strict" in session_header and "Path=/" in session_header
    assert "correct horse" not in session_header
    for path in STREAMLIT_PATHS:
        status, _, body, _ = client.get(path)
        assert status == 200 and body == f"app: {path.partition('?')[0]}", path
    assert client.websocket() == "websocket.accept"


def test_forged_altered_expired_or_revoked_cookies_are_refused(gate):
    client = Client(gated_app(gate))
    client.get("/login")
    client.login("correct horse")
    good = client.cookies[SESSION_COOKIE]
    version, issued, session, signature = good.split(".")
    forged = [f"{version}.{issued}.{'0' * 32}.{signature}",  # another id under the same signature
              f"{version}.{int(issued) + 3600}.{session}.{signature}",  # a later issue time
              f"{version}.{issued}.{session}.{'0' * 64}", "v1.1.2", "", "x" * 5000, good + ".extra"]
    for value in forged:
        client.cookies[SESSION_COOKIE] = value
        assert client.get("/_stcore/health")[0] == 401, value
    client.cookies[SESSION_COOKIE] = good
    assert client.get("/_stcore/health")[0] == 200
    other_server = Client(gated_app(Gate(clock=gate.clock)))  # another server (or a restart): its own secret
    other_server.cookies = {SESSION_COOKIE: good}
    assert other_server.get("/_stcore/health")[0] == 401
    gate.clock.now += 12 * 3600  # 12 hours later the cookie has expired
    assert client.get("/_stcore/health")[0] == 401
    gate.clock.now -= 12 * 3600
    stolen = dict(client.cookies)
    status, headers, _, _ = client.get("/logout")
    assert status == 303 and headers["location"] == "/login" and SESSION_COOKIE not in client.cookies
    thief = Client(gated_app(gate))
    thief.cookies = stolen  # a copy taken before logging out no longer works
    assert thief.get("/_stcore/health")[0] == 401 and thief.websocket() == "websocket.close"


def test_a_new_password_logs_everyone_out(gate, monkeypatch):
    client = Client(gated_app(gate))
    client.get("/login")
    client.login("correct horse")
    assert client.get("/_stcore/health")[0] == 200
    monkeypatch.setenv("TLD_PASSWORD", "another one")
    assert client.get("/_stcore/health")[0] == 401


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x",
                                    "/login", "/logout", "/a\nb", "/" + "a" * 3000, ""])
def test_after_login_the_return_path_never_leaves_this_server(gate, target):
    assert safe_return_path(target) == "/"
    client = Client(gated_app(gate))
    client.get("/login")
    status, headers, _, _ = client.login("correct horse", target)
    assert status == 303 and headers["location"] == "/"


def test_a_login_posted_from_another_site_or_too_big_is_refused_without_a_guess(gate):
    client = Client(gated_app(gate))
    client.get("/login")
    body = urlencode({"password": "correct horse"}).encode()
    assert client.request("POST", "/login", body, headers={"origin": "https://evil.example"})[0] == 403
    assert client.request("POST", "/login", b"password=" + b"x" * 10_000)[0] == 413
    assert SESSION_COOKIE not in client.cookies
    assert gate.guesses._server == type(gate.guesses._server)()  # nothing was counted or compared


def test_wrong_passwords_are_answered_with_the_form_and_never_echoed(gate):
    client = Client(gated_app(gate))
    client.get("/login")
    status, _, body, _ = client.login("my other password")
    assert status == 401 and "That is not the password." in body and "my other password" not in body
    assert SESSION_COOKIE not in client.cookies


def test_no_password_changes_nothing_for_a_local_user(monkeypatch):
    monkeypatch.delenv("TLD_PASSWORD", raising=False)
    client = Client(gated_app(Gate()), address="127.0.0.1")
    for path in STREAMLIT_PATHS:
        status, _, body, _ = client.get(path)
        assert status == 200 and body.startswith("app:"), path
    assert client.websocket() == "websocket.accept"
    assert client.get("/login")[1]["location"] == "/"  # nothing to log in to


def test_the_script_alone_shows_nothing_when_a_password_is_set(monkeypatch, tmp_path):
    """`streamlit run dashboard.py` has no gate: with a password it says how to start it, and shows no page."""
    import app_pages.gate

    monkeypatch.setenv("TLD_PASSWORD", "pw")
    monkeypatch.setattr(app_pages.gate, "_served_through_gate", threading.Event())
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120).run()
    assert [e.value for e in at.error] == ["A password is set, but this server was started without its gate. Start it "
                                           "with `streamlit run streamlit_app.py` (or scripts/run-app.sh)."]
    assert not at.subheader and not at.text_input


def test_the_launcher_is_an_st_app_with_the_gate_first():
    """`streamlit run streamlit_app.py` finds an st.App named `app` (Streamlit's own discovery) with the gate."""
    from streamlit.web.server.app_discovery import discover_asgi_app

    found = discover_asgi_app(ROOT / "streamlit_app.py")
    assert found.is_asgi_app and found.app_name == "app"
    import streamlit_app

    assert streamlit_app.app._user_middleware[0].cls is PasswordGate
    assert {r.path for r in streamlit_app.app._user_routes} == {"/login", "/logout"}


# ============================================================================= guessing
def test_guessing_32_parallel_requests_of_one_client_get_five_guesses():
    limiter = GuessLimiter(clock=FakeClock())
    allowed, barrier = [], threading.Barrier(32)

    def guess():
        barrier.wait()
        allowed.append(limiter.attempt("10.0.0.66", "client-a") == 0)

    threads = [threading.Thread(target=guess) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 5


def test_guessing_a_clients_waits_grow_and_age_out():
    clock = FakeClock()
    limiter = GuessLimiter(clock=clock)
    assert [limiter.attempt("a", "c") for _ in range(5)] == [0.0] * 5
    assert limiter.attempt("a", "c") == 2.0  # the sixth waits, counted from the fifth
    clock.now += 2
    assert limiter.attempt("a", "c") == 0.0
    assert limiter.attempt("a", "c") == 4.0
    assert [limiter.attempt("a", None) for _ in range(5)] == [0.0] * 5  # requests without a client id: their own
    assert limiter.attempt("a", None) == 2.0
    clock.now += 901  # a quarter of an hour later the old guesses no longer count
    assert limiter.attempt("a", "c") == 0.0


def test_guessing_an_attacker_at_the_users_address_slows_the_user_by_seconds_not_minutes():
    """The attacker takes a fresh client id every five guesses; the real user, at the same address, is only
    ever spaced by the address's short back-off and gets their right password compared."""
    clock = FakeClock()
    limiter = GuessLimiter(clock=clock)
    compared = 0
    for i in range(2000):  # an hour of guessing as fast as the limiter allows
        if limiter.attempt("10.0.0.7", f"attacker-{compared // 5}") == 0:
            compared += 1
        clock.now += 0.1
        if clock.now - 1000 > 200:
            break
    assert compared <= 20 + 200 / 3 + 1  # 20 free, then one per 3 s
    waits = [limiter.attempt("10.0.0.7", "the-user") for _ in range(1)]
    assert waits[0] <= limiter.address_spacing_s
    clock.now += waits[0]
    assert limiter.attempt("10.0.0.7", "the-user") == 0.0  # compared: the user is in


def test_guessing_a_real_users_typo_costs_nothing_and_success_clears():
    limiter = GuessLimiter(clock=FakeClock())
    assert limiter.attempt("u", "c") == 0.0  # the typo
    assert limiter.attempt("u", "c") == 0.0  # the right one, at once
    limiter.succeeded("u", "c")
    assert [limiter.attempt("u", "c") for _ in range(5)] == [0.0] * 5


def test_guessing_many_addresses_together_are_spaced_after_the_per_minute_allowance():
    clock = FakeClock()
    limiter = GuessLimiter(clock=clock, server_per_minute=30)
    results = [limiter.attempt(f"10.0.{i // 250}.{i % 250}", f"c{i}") for i in range(100)]
    assert results.count(0.0) == 30 and all(0 < r <= limiter.server_spacing_s for r in results[30:])
    clock.now += 61
    assert limiter.attempt("10.9.9.9", "c") == 0.0


def test_guessing_the_login_route_refuses_a_locked_client_without_comparing(gate):
    gate.wait_out_s = 0  # answer every wait at once (the fake clock would never get there)
    client = Client(gated_app(gate))
    client.get("/login")
    for _ in range(5):
        assert client.login("wrong")[0] == 401
    status, _, body, _ = client.login("correct horse")  # the client is locked out: not even compared
    assert status == 429 and "Try again in 2 s." in body and SESSION_COOKIE not in client.cookies
    newcomer = Client(gated_app(gate))  # another browser at the same address: its own count
    newcomer.get("/login")
    assert CLIENT_COOKIE in newcomer.cookies
    assert newcomer.login("correct horse")[0] == 303 and SESSION_COOKIE in newcomer.cookies


def test_guessing_the_login_route_waits_out_a_short_back_off_for_the_real_user(monkeypatch):
    """Under attack an address's guesses are spaced: the user's right password is held a moment, then let in."""
    monkeypatch.setenv("TLD_PASSWORD", "correct horse")
    gate = Gate(guesses=GuessLimiter(address_free=0, address_spacing_s=0.5))
    attacker, user = Client(gated_app(gate)), Client(gated_app(gate))
    attacker.get("/login")
    user.get("/login")
    assert attacker.login("guess")[0] == 401
    started = time.monotonic()
    assert user.login("correct horse")[0] == 303 and SESSION_COOKIE in user.cookies
    assert 0.3 < time.monotonic() - started < 3
