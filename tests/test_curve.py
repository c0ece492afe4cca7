"""ZeroMQ CURVE: certificates from our command, a broker that serves only authorized CURVE clients,
and control and the WebSocket bridge working through it (real processes, real sockets)."""
from __future__ import annotations

import subprocess
import sys

import msgpack
import pytest
import zmq

from control_support import Http
from processes import REPO_ROOT, base_env
from protocol import curve, encode_request, parse_reply, session_topic
from test_ws import Stream


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A certificate directory made by `python -m protocol.curve keygen`, plus a stranger's keys."""
    root = tmp_path_factory.mktemp("curve")
    done = subprocess.run([sys.executable, "-m", "protocol.curve", "keygen", str(root / "certs")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    stranger = root / "stranger"
    curve.keygen(stranger)               # a valid pair the broker has never authorized
    return root / "certs", stranger


def test_keygen_writes_the_documented_files_and_never_overwrites(certs):
    directory, _ = certs
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret",
                 "authorized/client.key"):
        assert (directory / name).is_file(), name
    assert (directory / "client.key_secret").stat().st_mode & 0o077 == 0
    again = subprocess.run([sys.executable, "-m", "protocol.curve", "keygen", str(directory)],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "already exists" in again.stderr


def _request(ctx: zmq.Context, endpoint: str, cmd: str, timeout_ms: int = 1500):
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(encode_request(cmd, {}))
        return parse_reply(sock.recv()) if sock.poll(timeout_ms) else None
    finally:
        sock.close()


def test_the_broker_answers_authorized_curve_clients_only(start_broker, certs):
    directory, stranger = certs
    broker = start_broker(PHANTOM_CURVE_DIR=str(directory))
    assert broker.ready["curve"] == "on"
    plain, ours = zmq.Context(), curve.client_context(directory)
    strange = zmq.Context()
    keys = curve.client_keys(stranger)
    strange = curve.client_context(None, strange)
    strange.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    strange.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    strange.setsockopt(zmq.CURVE_SERVERKEY, curve.client_keys(directory).server_public)
    try:
        assert _request(plain, broker.ready["control"], "ping") is None
        assert _request(strange, broker.ready["control"], "ping") is None
        assert _request(ours, broker.ready["control"], "ping")["protocol"] == 1
        assert _received(plain, broker.ready["pub"]) is None
        meta = _received(ours, broker.ready["pub"])
        assert meta is not None and meta["type"] == "metadata"
    finally:
        for ctx in (plain, ours, strange):
            ctx.destroy(linger=0)


def _received(ctx: zmq.Context, endpoint: str):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    try:
        sub.connect(endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, session_topic("curve-sub", "meta"))
        return msgpack.unpackb(sub.recv_multipart()[1]) if sub.poll(2000) else None
    finally:
        sub.close()


def test_control_and_the_websocket_bridge_work_over_curve(start_broker, spawn, certs):
    directory, _ = certs
    broker = start_broker(PHANTOM_CURVE_DIR=str(directory))
    env = dict(PHANTOM_CURVE_DIR=str(directory), PHANTOM_PUB_ENDPOINT=broker.ready["pub"],
               PHANTOM_CONTROL_ENDPOINT=broker.ready["control"])
    control = spawn("control", base_env(PHANTOM_CONTROL_PORT="0", **env))
    bridge = spawn("bridges.ws", base_env(PHANTOM_WS_PORT="0", **env))
    http = Http(control.wait_ready(30)["url"])
    bridge.wait_ready(30)
    created = http.post("/api/sessions/create", {"custom_code": "curve-ws", "speed": 10})
    assert created.status == 200, created.body
    stream = Stream(bridge, "/stream/curve-ws")
    try:
        assert stream.message()["type"] == "metadata"
        assert stream.data()["packet_id"] >= 0
    finally:
        stream.close()


def test_a_process_without_its_certificate_files_stops_with_exit_2(spawn, tmp_path, certs):
    empty = tmp_path / "empty"
    empty.mkdir()
    for module, env in [("broker", {"PHANTOM_PUB_ENDPOINT": "tcp://127.0.0.1:*",
                                    "PHANTOM_CONTROL_ENDPOINT": "tcp://127.0.0.1:*",
                                    "PHANTOM_STATE_PATH": str(tmp_path / "s.json")}),
                        ("control", {"PHANTOM_CONTROL_PORT": "0"}), ("bridges.ws", {"PHANTOM_WS_PORT": "0"})]:
        proc = spawn(module, base_env(PHANTOM_CURVE_DIR=str(empty), **env))
        assert proc.popen.wait(60) == 2, proc.output()
        assert "PHANTOM_CURVE_DIR" in proc.output() and "keygen" in proc.output()


def test_the_zmq_example_reads_the_curve_directory_from_the_environment(start_broker, certs):
    directory, _ = certs
    broker = start_broker(PHANTOM_CURVE_DIR=str(directory))
    args = [sys.executable, "examples/zmq_decoder.py", "--pub", broker.ready["pub"], "--control",
            broker.ready["control"], "--packets", "400", "--speed", "50"]
    done = subprocess.run(args, cwd=REPO_ROOT, env=base_env(PHANTOM_CURVE_DIR=str(directory)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "R^2 =" in done.stdout, done.stdout + done.stderr


def test_the_prediction_socket_answers_curve_clients_only(start_broker, certs):
    directory, _ = certs
    broker = start_broker(PHANTOM_CURVE_DIR=str(directory))
    prediction = msgpack.packb({"type": "prediction", "session": "no-such-session", "packet_id": 0,
                                "sequence_number": 0, "velocity": [0.0, 0.0]})
    replies = {}
    for name, ctx in (("plain", zmq.Context()), ("curve", curve.client_context(directory))):
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        try:
            dealer.connect(broker.ready["feedback"])
            dealer.send(prediction)
            replies[name] = msgpack.unpackb(dealer.recv()) if dealer.poll(2000) else None
        finally:
            dealer.close()
            ctx.destroy(linger=0)
    assert replies["plain"] is None
    assert replies["curve"]["type"] == "prediction_error"
    assert replies["curve"]["error"]["code"] == "not_found"
