"""Fresh servers of the app, as a visitor meets them: the shipped config listens on this machine only, and with a
password the st.App gate refuses every route (media included) from the first request; a scripted client that
logs in through the form gets in, and one without a password uploads as before."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_until
from tests.e2e.test_browser import serving

APP = str(ROOT / "dashboard.py")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_exposure_the_shipped_config_listens_on_localhost_only(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TLD_WORKSPACE": str(tmp_path / "ws")}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", APP, "--server.port", str(port),
                             "--server.headless", "true"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_until(lambda: _listening_addresses(port), 60)
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing on 0.0.0.0 or ::
    finally:
        proc.terminate()
        proc.wait(timeout=20)


class RawSession:
    """A websocket client that speaks Streamlit's protocol without a browser, as a hostile script would."""

    def __init__(self, url: str, password: str | None = None):
        import requests
        from websockets.sync.client import connect

        self.url, self.http = url, requests.Session()
        if password is not None:  # through the gate's form, as a browser would
            self.http.get(f"{url}/login", timeout=10)
            self.http.post(f"{url}/login", data={"password": password}, timeout=10)
        self.http.get(f"{url}/_stcore/health", timeout=10)  # the XSRF cookie, as the browser gets it
        cookies = "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())
        self.ws = connect(url.replace("http", "ws", 1) + "/_stcore/stream", subprotocols=["streamlit"],
                          open_timeout=30, additional_headers={"Cookie": cookies} if cookies else None)
        self.session_id = None

    def run_page(self, page_name: str) -> str:
        """Ask for one script run of ``page_name``; every message the server sent back, as text."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        msg = BackMsg()
        msg.rerun_script.page_name = page_name
        msg.rerun_script.query_string = ""
        self.ws.send(msg.SerializeToString())
        texts, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline:
            reply = ForwardMsg.FromString(self.ws.recv(timeout=120))
            kind = reply.WhichOneof("type")
            if kind == "new_session":
                self.session_id = reply.new_session.initialize.session_id
            texts.append(str(reply))
            if kind == "script_finished":
                break
        return "\n".join(texts)

    def upload(self, data: bytes) -> int:
        """PUT a file as this session's uploader would; the HTTP status."""
        token = self.http.cookies.get("_streamlit_xsrf")
        reply = self.http.put(f"{self.url}/_stcore/upload_file/{self.session_id}/probe",
                              files={"file": ("probe.pth", data)}, headers={"X-Xsrftoken": token}, timeout=60)
        return reply.status_code

    def close(self):
        self.ws.close()
        self.http.close()


PAGE_TEXTS = ["1 · Dataset", "2 · Check the data", "3 · Model surgery", "4 · Training", "5 · Prediction",
              "Start training", "Current dataset", "Where the weights come from"]


GATED_ROUTES = ["/", "/dataset", "/training?run=x", "/nope", "/_stcore/health", "/_stcore/host-config",
                "/_stcore/upload_file/0/0", "/media/0123456789abcdef.png", "/static/js/index.js", "/favicon.png"]


def _refused_without_the_cookie(url: str, cookies=None) -> None:
    """Every route of the server, and the websocket handshake, refused before Streamlit sees it."""
    import requests
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    for path in GATED_ROUTES:
        for method in ("GET", "PUT", "POST"):
            reply = requests.request(method, url + path, allow_redirects=False, cookies=cookies, timeout=10,
                                     headers={"Accept": "text/html"}, data=b"x" * 1000 if method != "GET" else None)
            expected = {303} if method == "GET" and not path.startswith(("/_stcore", "/media", "/static")) else {401}
            assert reply.status_code in expected, (method, path, reply.status_code)
            if reply.status_code == 303:
                assert reply.headers["location"].startswith("/login?next=")
    with pytest.raises(InvalidStatus, match="403"):
        connect(url.replace("http", "ws", 1) + "/_stcore/stream", subprotocols=["streamlit"], open_timeout=30,
                additional_headers={"Cookie": "; ".join(f"{k}={v}" for k, v in (cookies or {}).items())} or None)


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="Chromium is not installed")
def test_gate_a_fresh_st_app_server_refuses_every_route_without_the_cookie_media_included(tmp_path, small_root):
    import requests
    from playwright.sync_api import sync_playwright

    paths = ["", "dataset", "check", "surgery", "training", "prediction", "home", "common", "charts", "gate", "nope"]
    with serving(tmp_path, TLD_PASSWORD="correct horse") as (url, workspace):
        _refused_without_the_cookie(url)  # the first requests of a fresh server
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page()
            for path in paths:
                page.goto(f"{url}/{path}")
                page.locator("input[type=password]").wait_for(timeout=60_000)
                body = page.locator("body").inner_text()
                assert not any(text in body for text in PAGE_TEXTS), (path, body[:500])
            page.goto(f"{url}/dataset")
            page.locator("input[type=password]").fill("correct horse")
            page.get_by_role("button", name="Enter").click()
            page.get_by_text("Samples").wait_for(timeout=60_000)  # the right password opens the app,
            assert page.url == f"{url}/dataset"  # back on the page the visitor was going to
            page.locator("img[src*='/media/']").first.wait_for(timeout=60_000)
            media = page.locator("img[src*='/media/']").first.get_attribute("src")
            media = media if media.startswith("http") else url + media
            assert page.request.get(media).status == 200  # the browser, with its cookie, sees its thumbnail
            assert requests.get(media, timeout=10).status_code == 401  # anyone else with the address does not
            cookies = {c["name"]: c["value"] for c in page.context.cookies()}
            assert {c["name"]: c["httpOnly"] and c["sameSite"] == "Strict" for c in page.context.cookies()
                    if c["name"].startswith("tld_")} == {"tld_client": True, "tld_session": True}
            page.get_by_text("Log out").click()
            page.locator("input[type=password]").wait_for(timeout=60_000)
            browser.close()
        _refused_without_the_cookie(url, cookies)  # the cookie the browser held, after it logged out
        raw = RawSession(url, password="correct horse")  # a script that logs in through the form gets in
        try:
            assert "Current dataset" in raw.run_page("")
            assert raw.upload(b"x" * 1000) == 204
        finally:
            raw.close()
        assert not (workspace / "runs").exists() or not list((workspace / "runs").iterdir())


@pytest.mark.slow
def test_uploads_are_kept_without_a_password_so_the_refusal_above_is_the_gate(tmp_path, small_root):
    with serving(tmp_path) as (url, _):
        raw = RawSession(url)
        try:
            assert "Current dataset" in raw.run_page("")
            assert raw.upload(b"x" * 1000) == 204
        finally:
            raw.close()
