"""The password gate in front of the server: who may reach Streamlit at all.

``streamlit_app.py`` serves the app through ``st.App`` with ``PasswordGate`` as its first middleware
and ``login_routes()`` as extra routes. With a password set (``TLD_PASSWORD``, or ``password`` in
``.streamlit/secrets.toml``) the middleware checks every HTTP request and every websocket handshake
before Streamlit sees it (pages, ``/_stcore/stream``, uploads, ``/media``, static files, health):
without a valid session cookie a browser asking for a page is sent to ``/login``, anything else gets
401, and a websocket handshake is refused (HTTP 403). ``/login`` is a plain HTML form (no script, no
Streamlit); the right password sets a signed, HttpOnly, SameSite=Strict session cookie, and
``/logout`` revokes it. No Streamlit internal is touched.

The cookie is ``v1.<issued>.<id>.<hmac>``: HMAC-SHA256 over the rest, keyed by a secret drawn when
the server starts and by the password, so a restart or a new password logs everyone out. It lasts
``SESSION_HOURS``. Guesses are limited by ``core.platform.guard.GuessLimiter`` per client (a signed client id
the form hands out), per address (a short back-off only) and across the server; see there why.

With no password the middleware passes everything through unchanged: a local user notices nothing.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from core.platform.guard import GuessLimiter
from core.platform.settings import password_setting

SESSION_COOKIE = "tld_session"
CLIENT_COOKIE = "tld_client"
SESSION_HOURS = 12
CLIENT_DAYS = 30
LOGIN_PATH, LOGOUT_PATH = "/login", "/logout"
MAX_LOGIN_BODY = 4096  # a password and a return path: anything bigger is not a login
MAX_COOKIE = 512  # our cookies are under 150 characters
_served_through_gate = threading.Event()  # set once the middleware is built: the script checks it


def configured_password() -> str | None:
    """The password, or None when the app is open: ``TLD_PASSWORD``, else the secret ``password``."""
    if password_setting():
        return password_setting()
    try:
        import streamlit as st

        return st.secrets.get("password") or None
    except Exception:  # no secrets file, or one that cannot be read: no password from it
        return None


def served_through_gate() -> bool:
    """Whether this process serves the app behind ``PasswordGate`` (``streamlit run streamlit_app.py``)."""
    return _served_through_gate.is_set()


def client_address(connection: HTTPConnection) -> str:
    return connection.client.host if connection.client else "unknown"


@dataclass
class Gate:
    """What the middleware and the login routes share: the signing secret, revoked sessions, the guesses."""

    guesses: GuessLimiter = field(default_factory=GuessLimiter)
    clock: object = time.time
    wait_out_s: float = 5.0  # a back-off up to this long is waited out here, so a real user need not retry
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _revoked: dict[str, float] = field(default_factory=dict, repr=False)  # session id → when its cookie expires
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------------ signed values
    def _sign(self, text: str, password: str) -> str:
        key = hmac.new(self._secret, b"tld-gate\0" + password.encode(), hashlib.sha256).digest()
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()

    def _signed(self, text: str, password: str) -> str:
        return f"{text}.{self._sign(text, password)}"

    def _unsigned(self, value: str | None, password: str) -> list[str] | None:
        """The dot-separated fields of a value this server signed, or None for anything else."""
        if not value or len(value) > MAX_COOKIE:
            return None
        text, _, signature = value.rpartition(".")
        if not text or not hmac.compare_digest(signature.encode(), self._sign(text, password).encode()):
            return None
        return text.split(".")

    def new_session(self, password: str) -> str:
        return self._signed(f"v1.{int(self.clock())}.{secrets.token_hex(16)}", password)

    def new_client(self, password: str) -> str:
        return self._signed(f"c1.{secrets.token_hex(16)}", password)

    def session_id(self, connection: HTTPConnection, password: str) -> str | None:
        """The id of the valid, unexpired, unrevoked session this request carries, else None."""
        fields = self._unsigned(connection.cookies.get(SESSION_COOKIE), password)
        if not fields or len(fields) != 3 or fields[0] != "v1" or not fields[1].isdigit():
            return None
        age = self.clock() - int(fields[1])
        if not 0 <= age < SESSION_HOURS * 3600:
            return None
        with self._lock:
            return None if fields[2] in self._revoked else fields[2]

    def client_id(self, connection: HTTPConnection, password: str) -> str | None:
        fields = self._unsigned(connection.cookies.get(CLIENT_COOKIE), password)
        return fields[1] if fields and len(fields) == 2 and fields[0] == "c1" else None

    def revoke(self, session: str) -> None:
        with self._lock:
            now = self.clock()
            for old in [s for s, until in self._revoked.items() if until < now]:
                del self._revoked[old]  # an expired cookie is refused anyway: the list stays small
            self._revoked[session] = now + SESSION_HOURS * 3600

    # ------------------------------------------------------------------ the routes
    def routes(self) -> list[Route]:
        return [Route(LOGIN_PATH, self.login, methods=["GET", "POST"]),
                Route(LOGOUT_PATH, self.logout, methods=["GET", "POST"])]

    async def login(self, request: Request) -> Response:
        password = configured_password()
        target = safe_return_path(request.query_params.get("next"))
        if password is None or self.session_id(request, password):
            return RedirectResponse(target, status_code=303)
        client = self.client_id(request, password)
        if request.method == "GET":
            return self._form(request, password, client, target, "", 200)
        if not same_origin(request):
            return PlainTextResponse("A login must come from this app's own page.", status_code=403)
        body = await bounded_body(request, MAX_LOGIN_BODY)
        if body is None:
            return PlainTextResponse("That is not a login form.", status_code=413)
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        typed = (fields.get("password") or [""])[0]
        target = safe_return_path((fields.get("next") or [target])[0])
        address = client_address(request)
        wait = await self._turn(address, client)
        if wait > 0:
            return self._form(request, password, client, target,
                              f"Too many wrong passwords were tried. Try again in {wait:.0f} s.", 429)
        if not hmac.compare_digest(typed.encode(), password.encode()):
            return self._form(request, password, client, target, "That is not the password.", 401)
        self.guesses.succeeded(address, client)
        reply = RedirectResponse(target, status_code=303)
        set_cookie(reply, request, SESSION_COOKIE, self.new_session(password), SESSION_HOURS * 3600)
        return reply

    async def _turn(self, address: str, client: str | None) -> float:
        """Wait out a short back-off (the address's or the server's spacing, a client's first waits) so a
        real user's guess goes through without typing again; a longer one is answered at once."""
        deadline = time.monotonic() + 2 * self.wait_out_s
        while True:
            wait = self.guesses.attempt(address, client)
            if wait <= 0 or wait > self.wait_out_s or time.monotonic() + wait > deadline:
                return wait
            await asyncio.sleep(wait)  # no thread is held while waiting

    async def logout(self, request: Request) -> Response:
        password = configured_password()
        if password is not None:
            session = self.session_id(request, password)
            if session:
                self.revoke(session)
        reply = RedirectResponse(LOGIN_PATH if password else "/", status_code=303)
        reply.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return reply

    def _form(self, request: Request, password: str, client: str | None, target: str, message: str,
              status: int) -> Response:
        reply = HTMLResponse(login_page(target, message), status_code=status,
                             headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})
        if client is None:
            set_cookie(reply, request, CLIENT_COOKIE, self.new_client(password), CLIENT_DAYS * 86400)
        return reply


GATE = Gate()  # process-wide: every request and address of this server together


class PasswordGate:
    """ASGI middleware: with a password set, nothing but ``/login`` and ``/logout`` reaches the app
    without a valid session cookie: HTTP requests and websocket handshakes alike."""

    def __init__(self, app, gate: Gate = GATE):
        self.app, self.gate = app, gate
        _served_through_gate.set()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        password = configured_password()
        if password is None or scope.get("path") in (LOGIN_PATH, LOGOUT_PATH):
            return await self.app(scope, receive, send)
        connection = HTTPConnection(scope)
        if self.gate.session_id(connection, password):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            # Closing before accepting makes the server answer the handshake with 403.
            return await send({"type": "websocket.close", "code": 1008})
        await refusal(connection)(scope, receive, send)


def refusal(connection: HTTPConnection) -> Response:
    """A page a browser asked for goes to the login form (and back afterwards); anything else is 401."""
    path = connection.url.path
    wants_page = (connection.scope.get("method") in ("GET", "HEAD") and not path.startswith(("/_stcore/", "/media/",
                  "/static/", "/component/")) and "text/html" in connection.headers.get("accept", ""))
    if wants_page:
        back = path + (f"?{connection.url.query}" if connection.url.query else "")
        return RedirectResponse(f"{LOGIN_PATH}?next={quote(safe_return_path(back), safe='')}", status_code=303)
    return PlainTextResponse(f"Log in first: {LOGIN_PATH}", status_code=401, headers={"Cache-Control": "no-store"})


def safe_return_path(target: str | None) -> str:
    """Where to go after logging in: a path on this server only (never another site, ``//host`` included)."""
    if not target or len(target) > 2048 or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(ord(c) < 32 for c in target):
        return "/"
    return target if parts.path not in (LOGIN_PATH, LOGOUT_PATH) else "/"


def same_origin(request: Request) -> bool:
    """A form posted from another site's page is refused (browsers send Origin with every POST)."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


async def bounded_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes (declared or actually sent)."""
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > limit:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return body


def set_cookie(reply: Response, request: Request, name: str, value: str, max_age: int) -> None:
    https = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    reply.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict", secure=https)


def login_page(target: str, message: str) -> str:
    """The login form: plain HTML with its own style, nothing fetched from anywhere."""
    note = f'<p class="note" role="alert">{html.escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · Transfer-learning dashboard</title>
<style>
body {{font-family: system-ui, sans-serif; background: #f7f7f9; color: #262730; display: flex;
      justify-content: center; margin: 0; padding-top: 12vh;}}
main {{background: white; border: 1px solid #e0e0e6; border-radius: 10px; padding: 2rem 2.5rem; width: 22rem;}}
h1 {{font-size: 1.4rem; margin: 0 0 1.2rem;}}
label {{display: block; margin-bottom: .4rem;}}
input[type=password] {{width: 100%; box-sizing: border-box; padding: .55rem; font-size: 1rem;
      border: 1px solid #c9c9d2; border-radius: 6px;}}
button {{margin-top: 1rem; padding: .5rem 1.4rem; font-size: 1rem; border-radius: 6px; border: 1px solid #ff4b4b;
      background: #ff4b4b; color: white; cursor: pointer;}}
.note {{color: #b00020; margin: 0 0 1rem;}}
</style></head>
<body><main>
<h1>Transfer-learning dashboard</h1>
{note}
<form method="post" action="{LOGIN_PATH}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" autofocus required>
<input type="hidden" name="next" value="{html.escape(target, quote=True)}">
<button type="submit">Enter</button>
</form>
</main></body></html>
"""
