"""The dashboard in a real headless Chromium against real broker, WS bridge and control processes.

Skipped (with the reason) only when no Chromium is installed; `.ci/run` installs Debian's.
"""
from __future__ import annotations

import json
import os
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from browser import close, find_chromium, launch
from dashboard_stack import Stack
from eval_support import ZmqDecoder, answer, truth
from processes import REPO_ROOT, wait_for

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install chromium, or set "
                                                 "PLAYWRIGHT_CHROMIUM): the dashboard's browser tests need one"),
]
# The screenshot people look at; `make dashboard-screenshot` writes the README's copy.
SCREENSHOT = Path(os.environ.get("DASHBOARD_SCREENSHOT", REPO_ROOT / "build" / "dashboard.png"))


# -- processes and browser ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("dashboard"))
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        context, profile = launch(playwright, CHROMIUM)
        yield context
        close(context, profile)


class Page:
    """One tab, with every console error and uncaught exception it produced."""

    def __init__(self, context, url: str):
        self.errors: list[str] = []
        self.sockets: list[str] = []
        self.requests: list[tuple[str, dict]] = []
        self.page = context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(
            f"{m.text} at {m.location.get('url')}"))
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        self.page.on("websocket", lambda ws: self.sockets.append(ws.url))
        self.page.on("request", lambda r: self.requests.append((r.url, r.headers)))
        self.page.goto(url)

    def events(self) -> "Page":
        """Let Playwright deliver pending events (its sync API does so only inside its calls)."""
        self.page.evaluate("0")
        return self

    def text(self, selector: str) -> str:
        return self.page.text_content(selector) or ""

    def number(self, selector: str) -> int:
        return int(self.text(selector))

    def canvas(self, selector: str) -> str:
        return self.page.eval_on_selector(selector, "c => c.toDataURL()")

    def spike_pixels(self) -> int:
        """Raster pixels showing at least one spike (not the 0-count, gap or empty colours)."""
        return self.page.eval_on_selector("#raster", """c => {
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            const blank = new Set(["0,0,0", "11,11,20", "48,48,48"]);
            let n = 0;
            for (let i = 0; i < d.length; i += 4) if (!blank.has(`${d[i]},${d[i+1]},${d[i+2]}`)) n++;
            return n;
        }""")

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def open_page(browser):
    pages: list[Page] = []

    def opener(url: str) -> Page:
        page = Page(browser, url)
        pages.append(page)
        return page

    yield opener
    for page in pages:
        page.close()


# -- REST, as the tests' own client ------------------------------------------------------------
def rest(stack: Stack, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(stack.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def session(stack: Stack, code: str) -> dict:
    status, doc = rest(stack, "GET", f"/api/sessions/{code}")
    assert status == 200, doc
    return doc


def create(stack: Stack, code: str, **args) -> dict:
    status, doc = rest(stack, "POST", "/api/sessions/create", {"custom_code": code, **args})
    assert status == 200, doc
    return doc


# -- tests ------------------------------------------------------------------------------------
def test_pages_and_config_are_served_without_a_browser(stack):
    for path, mime in [("/dashboard", "text/html"), ("/dashboard/some-session", "text/html"),
                       ("/dashboard/static/js/session.js", "text/javascript"),
                       ("/dashboard/static/vendor/msgpack/index.mjs", "text/javascript"),
                       ("/dashboard/static/dashboard.css", "text/css")]:
        with urllib.request.urlopen(stack.url + path, timeout=5) as reply:
            assert reply.status == 200 and reply.headers.get_content_type() == mime, path
    status, config = rest(stack, "GET", "/dashboard/config.json")
    assert status == 200 and config["ws_port"] == stack.ws_port and config["front_door"] is False
    assert set(config["features"]) == {"perturbations", "evaluation"}
    assert rest(stack, "GET", "/dashboard/Not_A_Code")[0] == 404
    assert rest(stack, "GET", "/dashboard/static/../../pyproject.toml")[0] == 404


def test_config_sees_the_front_door(stack):
    """Through a reverse proxy the Host's port is the proxy's, not control's: stream same-origin."""
    req = urllib.request.Request(stack.url + "/dashboard/config.json", headers={"Host": "localhost:8000"})
    with urllib.request.urlopen(req, timeout=5) as reply:
        assert json.load(reply)["front_door"] is True


def test_session_list_creates_opens_and_deletes(stack, open_page):
    create(stack, "dash-listed")
    page = open_page(stack.url + "/dashboard")
    page.page.wait_for_selector('tr[data-code="dash-listed"]', timeout=10_000)
    page.page.fill('input[name="code"]', "dash-made-here")
    page.page.fill('input[name="speed"]', "2")
    page.page.select_option('select[name="noise"]', "light")
    page.page.click('button[type="submit"]')
    made = wait_for(lambda: rest(stack, "GET", "/api/sessions/dash-made-here")[1].get("speed"), 10,
                    "the session created by the form")
    assert made == 2
    assert session(stack, "dash-made-here")["noise"]["preset"] == "light"
    page.page.wait_for_selector('tr[data-code="dash-made-here"]', timeout=10_000)
    page.page.click('tr[data-code="dash-listed"] button.danger')
    wait_for(lambda: rest(stack, "GET", "/api/sessions/dash-listed")[0] == 404, 10, "the delete")
    page.page.click('tr[data-code="dash-made-here"] a')
    page.page.wait_for_url(re.compile(r"/dashboard/dash-made-here$"), timeout=10_000)
    assert page.errors == []


def test_live_view_plays_pauses_seeks_and_is_screenshot(stack, open_page):
    create(stack, "dash-live")
    page = open_page(stack.url + "/dashboard/dash-live")
    p = page.page
    wait_for(lambda: page.number("#packets-count") > 10, 15, "packets on the page")
    first_count, first_raster = page.number("#packets-count"), page.canvas("#raster")
    wait_for(lambda: page.number("#packets-count") > first_count + 20, 10, "the counter to move")
    assert page.spike_pixels() > 50, "the raster shows no spikes"
    wait_for(lambda: page.canvas("#raster") != first_raster, 5, "the raster to change while playing")
    assert p.text_content("#connection") == "open"

    p.click("text=Pause")
    wait_for(lambda: session(stack, "dash-live")["state"] == "paused", 5, "the server to pause")
    paused_count = wait_for(lambda: settled(page), 5, "the counter to stop")
    raster = page.canvas("#raster")
    p.wait_for_timeout(500)                  # a window in which nothing may arrive
    assert page.number("#packets-count") == paused_count and page.canvas("#raster") == raster

    p.eval_on_selector("#seek-packet", """(el, v) => { el.value = v;
        el.dispatchEvent(new Event("input")); el.dispatchEvent(new Event("change")); }""", "5000")
    wait_for(lambda: session(stack, "dash-live")["current_packet"] == 5000, 5, "the packet seek")
    trial = rest(stack, "GET", "/api/trials/20")[1]
    p.select_option("#seek-trial", str(trial["first_bin"]))
    wait_for(lambda: session(stack, "dash-live")["current_packet"] == trial["first_bin"], 5, "the trial seek")

    p.click("text=Resume")
    wait_for(lambda: session(stack, "dash-live")["state"] == "playing", 5, "the server to resume")
    wait_for(lambda: int(page.text("#packet-id") or -1) >= trial["first_bin"], 10, "packets from the seek")
    p.fill("#speed", "8")
    p.press("#speed", "Enter")
    wait_for(lambda: session(stack, "dash-live")["speed"] == 8, 5, "the speed change")
    start = page.number("#packets-count")
    wait_for(lambda: page.number("#packets-count") > start + 420, 15, "a full raster window")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    p.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 20_000
    assert page.errors == []


def settled(page: Page):
    """The packet counter once it has not moved for 300 ms (None while it still moves)."""
    before = page.number("#packets-count")
    page.page.wait_for_timeout(300)
    after = page.number("#packets-count")
    return after if after == before else None


def test_speed_100_keeps_the_connection_and_keeps_drawing(stack, open_page):
    create(stack, "dash-fast")
    page = open_page(stack.url + "/dashboard/dash-fast")
    wait_for(lambda: page.number("#packets-count") > 10, 15, "packets on the page")
    page.page.click('.speed-preset[data-speed="100"]')
    wait_for(lambda: session(stack, "dash-fast")["speed"] == 100, 5, "speed 100")
    count, frames = page.number("#packets-count"), page.number("#h-frames")
    raster = page.canvas("#raster")
    wait_for(lambda: page.number("#packets-count") > count + 2000, 20, "packets at speed 100")
    assert page.number("#h-frames") > frames and page.canvas("#raster") != raster
    assert page.text("#connection") == "open" and page.number("#h-reconnects") == 0
    assert page.errors == []


def test_token_goes_on_every_api_call_and_websocket(stack, open_page):
    """Contract 7 from the page's side: Bearer header on fetch, ?token= on the WebSocket URL, and
    the token leaves the address bar (it is kept in sessionStorage)."""
    create(stack, "dash-token")
    page = open_page(stack.url + "/dashboard/dash-token?token=s3cret-t0ken")
    wait_for(lambda: page.events().sockets, 10, "a WebSocket")
    api = [(url, h) for url, h in page.requests if "/api/" in url or url.endswith("config.json")]
    assert api and all(h.get("authorization") == "Bearer s3cret-t0ken" for _, h in api), api
    assert "token=s3cret-t0ken" in page.sockets[0]
    assert "?token=" not in page.page.url
    assert page.page.evaluate("sessionStorage.getItem('phantomlink-token')") == "s3cret-t0ken"


def test_evaluation_panel_hidden_without_a_decoder(stack, open_page):
    create(stack, "dash-eval")
    page = open_page(stack.url + "/dashboard/dash-eval")
    wait_for(lambda: page.number("#packets-count") > 5, 15, "packets on the page")
    assert page.page.is_hidden("#evaluation")
    assert page.errors == []


def test_reconnects_by_itself_when_the_bridge_restarts(stack, open_page):
    create(stack, "dash-reconnect")
    page = open_page(stack.url + "/dashboard/dash-reconnect")
    wait_for(lambda: page.number("#packets-count") > 5, 15, "packets on the page")
    stack.bridge.stop(signal.SIGTERM)
    wait_for(lambda: page.text("#connection") in ("reconnecting", "connecting"), 10, "the page to notice")
    stack.bridge = stack.start_bridge()
    count = page.number("#packets-count")
    wait_for(lambda: page.text("#connection") == "open", 20, "the page to reconnect")
    wait_for(lambda: page.number("#packets-count") > count + 10, 10, "packets after reconnecting")
    assert page.number("#h-reconnects") >= 1
    # While the bridge was down the browser logged failed connection attempts; nothing else.
    assert [e for e in page.errors if "WebSocket connection" not in e] == []



def test_evaluation_panel_shows_an_answering_decoder(stack, open_page):
    """A perfect decoder (it answers every packet with the true velocity, over the broker's feedback
    socket) appears in the panel with its figures: velocity R² 1.000 and its prediction count."""
    create(stack, "dash-eval-shown", speed=4)
    page = open_page(stack.url + "/dashboard/dash-eval-shown")
    decoder = ZmqDecoder(stack.broker, "dash-eval-shown")
    try:
        decoder.wait_meta()
        answered = 0
        while answered < 200:
            msg = decoder.recv()
            if msg["type"] == "data":
                decoder.send(answer(msg, truth(msg["data"], "vx", "vy"), decoder="dash-truth"))
                answered += 1
    finally:
        decoder.close()
    card = '#evaluation .eval-card[data-decoder="dash-truth"]'
    page.page.wait_for_selector(card, timeout=10_000)
    wait_for(lambda: predictions_shown(page, card) >= 200, 10, "the panel to count 200 predictions")
    figures = page.text(card)
    assert "velocity R²1.000" in figures, figures
    assert "latency histogram" in figures and page.page.is_visible("#evaluation")
    assert page.errors == []


def predictions_shown(page: Page, card: str) -> int:
    found = re.search(r"predictions(\d+)", page.text(card))
    return int(found.group(1)) if found else -1
