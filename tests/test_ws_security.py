"""WebSocket bridge access rules and limits: token, Origin, Host, message size, connection slots,
sessions created per client, stalled peers and the Close frame (real broker, real bridge processes)."""
from __future__ import annotations

import base64
import os
import socket
import time
from importlib.metadata import version

import msgpack
import pytest

from broker_client import command
from processes import Proc, wait_for
from protocol import CommandError
from test_ws import Stream, bridge_env, broker_env, health, parse_frames

TOKEN = "ws-token-for-the-tests-0123456789"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A broker and a bridge with a token, small limits and a short send timeout."""
    procs: list[Proc] = []
    try:
        broker = Proc.module("broker", broker_env(tmp_path_factory.mktemp("wssec")))
        procs.append(broker)
        broker.wait_ready(60)
        bridge = Proc.module("bridges.ws", bridge_env(
            broker, PHANTOM_AUTH_TOKEN=TOKEN, PHANTOM_WS_MAX_PER_ADDRESS="2",
            PHANTOM_WS_MAX_CLIENTS="6", PHANTOM_MAX_SESSIONS_PER_CLIENT="2",
            PHANTOM_WS_MAX_MESSAGE_BYTES="4096", PHANTOM_WS_SEND_TIMEOUT_S="1",
            PHANTOM_ALLOWED_ORIGINS="https://lab.example.org"))
        procs.append(bridge)
        bridge.wait_ready(30)
        yield broker, bridge
    finally:
        for proc in reversed(procs):
            proc.stop()


def handshake(bridge: Proc, path: str, headers: dict[str, str] | None = None,
              rcvbuf: int | None = None) -> tuple[socket.socket, int, str]:
    """A raw WebSocket handshake: (socket, HTTP status, response head)."""
    host, port = bridge.ready["url"].removeprefix("ws://").split(":")
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect((host, int(port)))
    fields = {"Host": f"{host}:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
              "Sec-WebSocket-Version": "13", **(headers or {})}
    sock.sendall((f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
                  + "\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    status = int(head.split(b" ", 2)[1])
    return sock, status, head.decode("latin-1")


def first_frame(bridge: Proc, path: str, headers: dict[str, str] | None = None) -> tuple[int, int | None]:
    """(HTTP status, opcode of the first frame or None); the connection is closed afterwards."""
    sock, status, _ = handshake(bridge, path, headers)
    try:
        if status != 101:
            return status, None
        sock.settimeout(5)
        data = sock.recv(4096)
        return status, (data[0] & 0x0F) if data else None
    finally:
        sock.close()


def authed(path: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}token={TOKEN}"


def masked(opcode: int, payload: bytes) -> bytes:
    """One client frame (clients must mask, RFC 6455 5.3)."""
    key = os.urandom(4)
    n = len(payload)
    head = bytes((0x80 | opcode,)) + (bytes((0x80 | n,)) if n < 126 else
                                      bytes((0x80 | 126,)) + n.to_bytes(2, "big") if n < 65536 else
                                      bytes((0x80 | 127,)) + n.to_bytes(8, "big"))
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_the_token_is_needed_before_the_upgrade(stack):
    broker, bridge = stack
    for headers, path in [({}, "/stream/wss-tok"), ({}, "/stream/wss-tok?token=wrong-0123456789abc"),
                          ({"Authorization": "Bearer nope-0123456789abcdef"}, "/stream/wss-tok")]:
        sock, status, head = handshake(bridge, path, headers)
        sock.close()
        assert status == 401, head
    with pytest.raises(CommandError, match="no session"):
        command(broker, "get", code="wss-tok")       # a refused client created nothing
    for headers, path in [({}, authed("/stream/wss-tok")),
                          ({"Authorization": f"Bearer {TOKEN}"}, "/stream/wss-tok")]:
        assert first_frame(bridge, path, headers) == (101, 0x2)       # metadata
    assert TOKEN not in bridge.output()
    command(broker, "delete", code="wss-tok")


@pytest.mark.parametrize("origin, status", [
    (None, 101), ("http://localhost:3000", 101), ("http://127.0.0.1:8000", 101),
    ("https://lab.example.org", 101), ("https://evil.example", 403), ("null", 403),
    ("http://localhost.evil.example", 403)])
def test_origin_is_checked_and_scripts_without_one_pass(stack, origin, status):
    broker, bridge = stack
    headers = {"Origin": origin} if origin else {}
    got, opcode = first_frame(bridge, authed("/stream/wss-origin"), headers)
    assert got == status
    if status == 101:
        assert opcode in (0x1, 0x2)
        command(broker, "delete", code="wss-origin")


def test_a_foreign_host_is_refused(stack):
    _, bridge = stack
    sock, status, head = handshake(bridge, authed("/stream/wss-host"), {"Host": "rebind.evil.example"})
    sock.close()
    assert status == 403, head


def test_compression_is_not_negotiated_and_a_big_message_closes_1009(stack):
    broker, bridge = stack
    sock, status, head = handshake(bridge, authed("/stream/wss-big"),
                                   {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"})
    assert status == 101 and "sec-websocket-extensions" not in head.lower(), head
    sock.sendall(masked(0x2, b"x" * 1000))              # small messages are fine
    sock.sendall(masked(0x2, b"x" * 5000))              # over PHANTOM_WS_MAX_MESSAGE_BYTES=4096
    buf, frames, deadline = bytearray(), [], time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        buf += chunk
        frames += parse_frames(buf)
    sock.close()
    closes = [i for i, (op, _) in enumerate(frames) if op == 0x8]
    assert closes, f"no Close frame among {[op for op, _ in frames]}"
    assert int.from_bytes(frames[closes[0]][1][:2], "big") == 1009
    assert all(op != 0x2 for op, _ in frames[closes[0] + 1:]), "a data frame followed the Close"
    command(broker, "delete", code="wss-big")


def test_connections_are_bounded_per_address_and_per_worker(stack):
    broker, bridge = stack
    held = []
    try:
        for n in range(2):
            sock, status, _ = handshake(bridge, authed("/stream/wss-slots"), {"X-Forwarded-For": "203.0.113.7"})
            assert status == 101
            held.append(sock)
        sock, status, head = handshake(bridge, authed("/stream/wss-slots"), {"X-Forwarded-For": "203.0.113.7"})
        sock.close()
        assert status == 429 and "retry-after:" in head.lower(), head
        for n in range(4):                  # other addresses, up to the worker's 6
            sock, status, _ = handshake(bridge, authed("/stream/wss-slots"),
                                        {"X-Forwarded-For": f"198.51.100.{n}"})
            assert status == 101
            held.append(sock)
        sock, status, head = handshake(bridge, authed("/stream/wss-slots"), {"X-Forwarded-For": "192.0.2.1"})
        sock.close()
        assert status == 503 and "retry-after:" in head.lower(), head
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: health(bridge)["clients"] == 0, 10, "the slots to be given back")
    assert first_frame(bridge, authed("/stream/wss-slots"), {"X-Forwarded-For": "203.0.113.7"}) == (101, 0x2)
    command(broker, "delete", code="wss-slots")


def test_sessions_created_by_one_client_are_bounded(stack):
    broker, bridge = stack
    who = {"X-Forwarded-For": "203.0.113.99"}
    for code in ("wss-own-1", "wss-own-2"):
        assert first_frame(bridge, authed(f"/stream/{code}"), who) == (101, 0x2)
    wait_for(lambda: health(bridge)["clients"] == 0, 10, "the clients to leave")
    sock, status, _ = handshake(bridge, authed("/stream/wss-own-3"), who)
    sock.settimeout(5)
    data = sock.recv(4096)
    sock.close()
    assert status == 101 and data[0] & 0x0F == 0x8 and int.from_bytes(data[2:4], "big") == 4429
    with pytest.raises(CommandError, match="no session"):
        command(broker, "get", code="wss-own-3")
    command(broker, "delete", code="wss-own-1")          # gives the client one creation back
    wait_for(lambda: first_frame(bridge, authed("/stream/wss-own-3"), who) == (101, 0x2), 5,
             "a creation to be given back")
    command(broker, "delete", code="wss-own-2")
    command(broker, "delete", code="wss-own-3")


def test_a_peer_that_stops_reading_is_released_within_the_send_timeout(stack):
    broker, bridge = stack
    command(broker, "create", code="wss-stall", speed=200.0)
    sock, status, _ = handshake(bridge, authed("/stream/wss-stall"), rcvbuf=4096)
    assert status == 101
    try:
        wait_for(lambda: command(broker, "get", code="wss-stall")["subscribers"] == 1, 5,
                 "the stalled client to subscribe")
        # 8,000 packets/s fill the socket buffers at once; the 1 s send timeout then cuts it
        wait_for(lambda: command(broker, "get", code="wss-stall")["subscribers"] == 0, 10,
                 "the stalled client's subscription to go")
        wait_for(lambda: "wss-stall" not in health(bridge)["sessions"], 5, "its handler to end")
    finally:
        sock.close()
        command(broker, "delete", code="wss-stall")


def test_a_healthy_client_streams_with_the_token(stack):
    broker, bridge = stack
    stream = Stream(bridge, authed("/stream/wss-ok"))
    try:
        assert stream.message()["type"] == "metadata"
        assert stream.data()["packet_id"] >= 0
    finally:
        stream.close()
        command(broker, "delete", code="wss-ok")


def test_the_websocket_library_versions_are_the_pinned_ones():
    """bridges/ws/client.py replaces simple-websocket's `sock` and `event` attributes: only the
    versions pinned in pyproject.toml are known to work so (every test here exercises that use)."""
    major, minor = (int(x) for x in version("simple-websocket").split(".")[:2])
    assert (major, minor) == (1, 1)
    import simple_websocket
    server_init = simple_websocket.ws.Base.__init__.__code__.co_names
    assert "sock" in server_init and "event" in server_init
    assert msgpack  # the bridge's payloads stay msgpack


def test_a_fan_out_thread_that_fails_reports_its_death_instead_of_freezing():
    """The bridge passes on_death=stop this worker (gunicorn then starts a fresh one)."""
    import threading

    import zmq

    from bridges.ws.fanout import FanOut

    died = threading.Event()
    ctx = zmq.Context()
    fanout = FanOut(ctx, "tcp://127.0.0.1:9", on_death=died.set)
    try:
        fanout.start()
        fanout.add(object())            # a bug: not a Client; the thread's round fails
        assert died.wait(5), "on_death was not called"
        assert not fanout.alive()
    finally:
        fanout.stop()
        ctx.destroy(linger=0)


def test_the_example_client_reads_the_token_from_the_environment(stack):
    import subprocess
    import sys

    from processes import REPO_ROOT, base_env

    broker, bridge = stack
    args = [sys.executable, "examples/ws_msgpack_client.py", "--url", bridge.ready["url"],
            "--session", "wss-example", "--packets", "3"]
    without = subprocess.run(args, cwd=REPO_ROOT, env=base_env(), capture_output=True, text=True,
                             timeout=30)
    assert without.returncode != 0 and "401" in without.stdout + without.stderr
    done = subprocess.run(args, cwd=REPO_ROOT, env=base_env(PHANTOM_AUTH_TOKEN=TOKEN),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("\n") >= 4          # metadata + 3 packets
    command(broker, "delete", code="wss-example")
