"""The whole Procfile stack started as a user would (honcho), driven through every front door."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

import msgpack
import pylsl
import pytest
import simple_websocket
import zmq

from processes import REPO_ROOT, wait_for
from stack_support import PROCESSES, READY_NAMES, start_honcho


@pytest.fixture(scope="module")
def stack(honcho_stack):
    """(honcho process, READY fields by Procfile name) of the shared stack."""
    return honcho_stack.proc, honcho_stack.ready


def rest(ready: dict, method: str, path: str, body: dict | None = None):
    url = urlparse(ready["control"]["url"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def ws_messages(ws: simple_websocket.Client, n: int, timeout: float = 5.0) -> list[dict]:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        frame = ws.receive(timeout=max(0.0, deadline - time.monotonic()))
        if frame is None:
            raise AssertionError(f"only {len(out)} of {n} WebSocket messages within {timeout} s")
        out.append(json.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame))
    return out


def packets_only(messages: list[dict]) -> list[dict]:
    return [m["data"] for m in messages if m["type"] == "data"]


def test_rest_websocket_zmq_and_lsl_serve_one_session(stack):
    _, ready = stack
    status, created = rest(ready, "POST", "/api/sessions/create", {"custom_code": "stack-one"})
    assert status == 200, created
    assert created["session_code"] == "stack-one"
    assert created["stream_url"].endswith("/stream/stack-one")

    ws = simple_websocket.Client.connect(f"{ready['ws']['url']}/stream/stack-one?format=msgpack")
    try:
        first = ws_messages(ws, 1)[0]
        assert first["type"] == "metadata"
        assert first["data"]["num_channels"] == 142
        packets = packets_only(ws_messages(ws, 40))
        seqs = [p["sequence_number"] for p in packets]
        assert seqs == sorted(set(seqs)), f"out of order or repeated: {seqs}"
        # Gaps only where the broker skipped packets as too late (counted), none lost on the way.
        skipped = rest(ready, "GET", "/api/stats/stack-one")[1]["packets_skipped"]
        assert seqs[-1] - seqs[0] + 1 - len(seqs) <= skipped, (seqs, skipped)
        assert all(len(p["spikes"]["spike_counts"]) == 142 for p in packets)

        status, paused = rest(ready, "POST", "/api/control/stack-one/pause")
        assert status == 200, paused
        # Drain what was in flight, then the stream must stay silent while paused.
        while ws.receive(timeout=0.2) is not None:
            pass
        assert ws.receive(timeout=0.5) is None, "packets kept coming after pause"
        status, _ = rest(ready, "POST", "/api/control/stack-one/resume")
        assert status == 200
        assert packets_only(ws_messages(ws, 5)), "no packets after resume"
    finally:
        ws.close()

    # An analysis script on ZMQ receives the same session's packets.
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(ready["broker"]["pub"])
    sub.setsockopt(zmq.SUBSCRIBE, b"session/stack-one/packet")
    try:
        assert sub.poll(5000), "no ZMQ packet within 5 s"
        topic, payload = sub.recv_multipart()
        assert topic == b"session/stack-one/packet"
        assert msgpack.unpackb(payload)["session"] == "stack-one"
    finally:
        sub.close()

    # The LSL bridge mirrors the session with its four streams.
    names = {f"PhantomLink-{kind}-stack-one" for kind in ("Neural", "Kinematics", "Intention", "Markers")}
    wait_for(lambda: names <= {s.name() for s in pylsl.resolve_streams(1.0)}, 30,
             "the four LSL streams of stack-one")
    # Mirrored without costing the broker anything: no wildcard, no subscription while no inlet.
    wait_for(lambda: rest(ready, "GET", "/metrics")[1]["metrics"]["sessions"]["stack-one"]
             ["connections"] == 0, 5, "no subscription left on stack-one")
    assert rest(ready, "GET", "/metrics")[1]["metrics"]["wildcard_subscribers"] == 0


def test_two_sessions_stay_isolated(stack):
    _, ready = stack
    for code in ("iso-a", "iso-b"):
        assert rest(ready, "POST", "/api/sessions/create", {"custom_code": code})[0] == 200
    assert rest(ready, "POST", "/api/control/iso-a/pause")[0] == 200
    status, b_before = rest(ready, "GET", "/api/stats/iso-b")
    assert status == 200
    wait_for(lambda: rest(ready, "GET", "/api/stats/iso-b")[1]["current_packet"]
             > b_before["current_packet"] + 4, 5, "iso-b to keep playing")
    a1 = rest(ready, "GET", "/api/stats/iso-a")[1]
    assert a1["is_running"] is False
    b = rest(ready, "GET", "/api/stats/iso-b")[1]
    assert b["is_running"] is True
    assert rest(ready, "GET", "/api/stats/iso-a")[1]["current_packet"] == a1["current_packet"]


def test_shutdown_stops_every_process_and_frees_ports(tmp_path):
    proc, _ = start_honcho(tmp_path)
    try:
        ports = []
        for name in ("control", "ws", "door"):
            line = proc.wait_line(f"READY {READY_NAMES.get(name, name)} ", timeout=90)
            url = next(f for f in line.split() if f.startswith("url="))[4:]
            ports.append(urlparse(url).port)
        proc.wait_line("READY lsl ", timeout=90)
        proc.wait_line("READY broker ", timeout=90)
        os.kill(proc.popen.pid, signal.SIGTERM)
        proc.popen.wait(20)
    finally:
        proc.stop()
    out = proc.output()
    assert "Traceback" not in out, out[-3000:]
    for name in PROCESSES:  # each process handled SIGTERM itself and exited 0
        assert f"{name}.1 stopped (rc=0)" in out, out[-3000:]
    for port in ports:
        with socket.socket() as s:  # the port is free again: binding it succeeds
            s.bind(("127.0.0.1", port))


def run_example(script: str, *args: str, timeout: float = 60) -> str:
    """Run examples/<script> as a newcomer would; it must exit 0. Returns its output."""
    done = subprocess.run([sys.executable, f"examples/{script}", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_example_client_works_against_the_stack(stack):
    _, ready = stack
    ws, http = ready["ws"]["url"], ready["control"]["url"]
    out = run_example("validate_stream.py", "3", "--url", ws, "--control", http)
    assert "Sequence integrity: PASS" in out and "FAIL" not in out, out
    out = run_example("ws_msgpack_client.py", "--url", ws, "--session", "ex-msgpack", "--packets", "5")
    lines = out.strip().splitlines()
    assert lines[0].startswith("metadata: ") and "142 units" in lines[0], out
    assert len(lines) == 6, out  # the metadata line, then one line per packet
    out = run_example("ws_json_client.py", "--url", ws, "--session", "ex-json", "--packets", "5")
    assert '"dataset"' in out, out
    out = run_example("zmq_decoder.py", "--pub", ready["broker"]["pub"], "--control",
                      ready["broker"]["control"], "--packets", "1500", "--speed", "50")
    r2 = float(out.rsplit("R^2 =", 1)[1])
    assert 0.3 < r2 < 0.95, out  # a real fit on real packets, not a constant
    assert rest(ready, "POST", "/api/sessions/create", {"custom_code": "ex-lsl"})[0] == 200
    out = run_example("lsl_client.py", "ex-lsl", "--seconds", "2", "--timeout", "20")
    assert "PhantomLink-Neural-ex-lsl" in out and "spikes" in out, out
    out = run_example("ridge_decoder.py", "--url", http, "--ws-url", ws, "--lockstep",
                      "--calibration-trials", "8", "--trials", "4")
    assert float(out.split("velocity R² ", 1)[1].split(",")[0]) > 0.2, out   # a fit, not noise
    out = run_example("slow_decoder.py", "--url", http, "--ws-url", ws, "--seconds", "1.5")
    misses, answered = out.split("deadline misses: ", 1)[1].split(";")[0].split(" of ")
    assert int(misses) >= 0.9 * int(answered) > 0, out
