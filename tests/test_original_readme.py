"""The original PhantomLink README, typed as written against the Procfile stack's front door.

tests/data/original-README.md is that README, unchanged. Its curl commands, its Python websockets
snippet, its four use-case scripts and its JavaScript snippet (in a real headless Chromium) run
through the door; the only edit is the port (the stack's door listens on a port the OS chose where
the README says 8000) and the README's placeholders ({session_code}, {target_id}, {trial_id}).
The sessions the long-running use cases read are created beforehand at 20x speed, so 1000 packets
take about a second instead of 25.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import requests

from processes import wait_for

README = (Path(__file__).parent / "data" / "original-README.md").read_text(encoding="utf-8")
BLOCK_RE = re.compile(r"```(\w+)\n(.*?)```", re.S)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK_RE.findall(README) if kind == lang]


def curl_commands() -> list[str]:
    """Every curl command of the README's bash blocks (continuation lines joined)."""
    out = []
    for body in blocks("bash"):
        text = body.replace("\\\n", " ")
        out += [line.split("#")[0].strip() for line in text.splitlines() if line.startswith("curl ")]
    return out


def on_door(text: str, port: int) -> str:
    return text.replace("localhost:8000", f"localhost:{port}")


@pytest.fixture(scope="module")
def door(honcho_stack):
    return honcho_stack


def post(door, path: str, body: dict | None = None) -> dict:
    reply = requests.post(door.door + path, json=body, timeout=5)
    assert reply.status_code == 200, reply.text
    return reply.json()


# -- curl ------------------------------------------------------------------------------------
def test_the_readme_lists_its_curl_commands():
    commands = curl_commands()
    assert len(commands) == 16, commands     # the cleanup twice (API and Troubleshooting)
    assert any("DELETE" in c for c in commands) and any("/metrics" in c for c in commands)


def test_every_curl_command_works_through_the_door(door):
    if shutil.which("curl") is None:
        pytest.skip("needs the curl command (Debian's curl package)")
    post(door, "/api/sessions/create", {"custom_code": "readme-curl"})
    commands = curl_commands()
    # The delete goes last, so the commands before it find the session.
    for command in sorted(commands, key=lambda c: "DELETE" in c):
        line = on_door(command, door.port).replace("{session_code}", "readme-curl")
        line = line.replace("{target_id}", "0").replace("{trial_id}", "0")
        done = subprocess.run(["sh", "-c", line + " -sS -w '\\n%{http_code}'"], capture_output=True,
                              text=True, timeout=15)
        assert done.returncode == 0, (line, done.stderr)
        body, status = done.stdout.rsplit("\n", 1)
        assert status == "200", (line, status, body)
        doc = json.loads(body)
        assert "error" not in doc, (line, doc)
        check_documented_shape(line, doc, door.port)


def check_documented_shape(line: str, doc: dict, port: int) -> None:
    """The fields the README shows for the commands it gives a response for."""
    if line.endswith("/health"):
        assert doc["status"] == "healthy" and doc["version"] and doc["timestamp"]
    elif "/api/sessions/create" in line:
        code = doc["session_code"]
        assert doc["stream_url"] == f"ws://localhost:{port}/stream/{code}", "stream_url names the door"
        assert doc["created_at"]
        if "my-experiment-1" in line:
            assert code == "my-experiment-1"
    elif line.endswith("/api/sessions"):
        assert doc["total_sessions"] == len(doc["sessions"]) >= 1
        one = next(iter(doc["sessions"].values()))
        assert {"created_at", "last_accessed", "active_connections", "is_running",
                "current_packet"} <= set(one)
    elif line.endswith("/metrics"):
        assert doc["service"] == "PhantomLink Core" and "sessions" in doc["metrics"]
    elif "/api/stats/" in line:
        assert {"session_code", "is_running", "current_packet", "total_packets", "elapsed_seconds",
                "active_connections"} <= set(doc)
    elif line.endswith("/api/trials"):
        assert doc["total_trials"] == len(doc["trials"]) == 100
        assert {"trial_id", "start_time", "stop_time", "target_x", "target_y",
                "target_id"} <= set(doc["trials"][0])


# -- Python ----------------------------------------------------------------------------------
def python_blocks(needle: str) -> list[str]:
    return [b for b in blocks("python") if needle in b]


def run_async_snippet(snippet: str, port: int, namespace: dict) -> dict:
    """A README snippet with top-level ``async with``, run as the body of a coroutine."""
    body = textwrap.indent(on_door(snippet, port), "    ")
    code = f"async def _snippet():\n{body}\n    return locals()\n"
    exec(compile(code, "<README snippet>", "exec"), namespace)
    return asyncio.run(namespace["_snippet"]())


def test_python_msgpack_snippet_reads_a_packet_through_the_door(door):
    snippets = python_blocks('websockets.connect("ws://localhost:8000/stream/swift-neural-42")')
    assert len(snippets) == 2 and snippets[0] == snippets[1]   # Data Format and API Reference
    got = run_async_snippet(snippets[0], door.port, {})
    assert len(got["spike_counts"]) == 142
    assert set(got["kinematics"]) == {"x", "y", "vx", "vy"}
    assert {"target_id", "target_x", "target_y"} <= set(got["intention"])


class Decoder:
    """The ``decoder`` the use-case scripts assume: fits the mean target, predicts it."""

    def __init__(self):
        self.fitted: list[dict] = []
        self.mean = (0.0, 0.0)

    def fit(self, data: list[dict]) -> None:
        self.fitted = data
        xs, ys = zip(*(d["target"] for d in data))
        self.mean = (sum(xs) / len(xs), sum(ys) / len(ys))

    def predict(self, spikes: list[int]) -> tuple[float, float]:
        assert len(spikes) == 142
        return self.mean


def test_use_cases_run_as_written_through_the_door(door):
    training, validation, calibration, workflow = (python_blocks(n)[0] for n in (
        "def train_decoder", "def validate_decoder", "calibration-{user}", "by-target/0"))
    # The sessions the scripts stream exist beforehand, at 20x so 1000 packets take ~1 s.
    post(door, "/api/sessions/create", {"custom_code": "training-session", "speed": 20})
    post(door, "/api/sessions/create", {"custom_code": "validation", "speed": 20,
                                        "filter": {"target_id": 0}})
    decoder = Decoder()
    namespace: dict = {"decoder": decoder}
    exec(compile(on_door(training, door.port), "<README decoder training>", "exec"), namespace)
    assert len(decoder.fitted) == 1000
    assert {d["target"] for d in decoder.fitted} <= target_positions(door, 0)

    exec(compile(on_door(validation, door.port), "<README validation>", "exec"), namespace)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        asyncio.run(namespace["validate_decoder"](decoder))
    assert re.search(r"Mean Error: \d+\.\d\dmm\nStd Error: \d+\.\d\dmm", printed.getvalue()), printed.getvalue()

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(on_door(calibration, door.port), "<README calibration>", "exec"), namespace)
    for user in ("alice", "bob", "charlie"):
        assert f"{user}: ws://localhost:{door.port}/stream/calibration-{user}" in printed.getvalue()
    stats = {u: requests.get(f"{door.door}/api/stats/calibration-{u}", timeout=5).json()
             for u in ("alice", "bob")}
    assert stats["alice"]["is_running"] is False and stats["bob"]["is_running"] is True

    exec(compile(on_door(workflow, door.port), "<README calibration workflow>", "exec"), namespace)
    assert len(namespace["trials"]) == 77 and namespace["trial_id"] == namespace["trials"][9]["trial_id"]
    first = namespace["trials"][0]["trial_id"]
    url = namespace["stream_url"].replace(f"trial_id={namespace['trial_id']}", f"trial_id={first}")
    got = run_async_snippet(f'async with websockets.connect("{url}") as ws:\n'
                            '    packet = msgpack.unpackb(await ws.recv(), raw=False)\n',
                            door.port, namespace)
    assert got["packet"]["data"]["trial_id"] == first
    for code in ("training-session", "validation"):     # 20x sessions: 800 packets/s each
        assert requests.delete(f"{door.door}/api/sessions/{code}", timeout=5).status_code == 200


def target_positions(door, target_id: int) -> set[tuple[float, float]]:
    trials = requests.get(f"{door.door}/api/trials/by-target/{target_id}", timeout=5).json()["trials"]
    return {(t["target_x"], t["target_y"]) for t in trials}


# -- JavaScript in a browser -----------------------------------------------------------------
def chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("no Chromium found (/usr/bin/chromium): apt-get install chromium (.ci/run does as root)")


def test_javascript_snippet_parses_json_in_a_real_browser(door):
    from playwright.sync_api import sync_playwright

    snippet = next(b for b in blocks("javascript") if "new WebSocket" in b)
    assert "ws://localhost:8000/stream/swift-neural-42" in snippet and "JSON.parse" in snippet
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page()
            logs: list[str] = []
            errors: list[str] = []
            spike_messages = []
            page.on("console", lambda msg: logs.append(msg.text))
            page.on("console", lambda msg: msg.text.startswith("Spikes:") and spike_messages.append(msg))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://localhost:{door.port}/health")       # a page on the door's origin
            page.evaluate(on_door(snippet, door.port) + "\nwindow._readme_ws = ws;")
            # Playwright delivers console events while it waits, so the wait is the page's own.
            wait_for(lambda: page.wait_for_timeout(50) or sum(line.startswith("Target:") for line in logs) >= 5,
                     10, "five packets logged by the snippet")
            page.evaluate("window._readme_ws.close()")
            spikes = spike_messages[0].args[1].json_value()   # the array itself, not its preview
        finally:
            browser.close()
    assert not errors, errors
    ids = [int(line.split()[1]) for line in logs if line.startswith("Packet:")]
    assert len(ids) >= 5 and ids == sorted(ids) and len(set(ids)) == len(ids), logs[:12]
    assert len(spikes) == 142 and all(isinstance(n, int) and n >= 0 for n in spikes), spikes
    assert any(line.startswith("Position: ") and len(line.split()) == 3 for line in logs), logs[:12]
