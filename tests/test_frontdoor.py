"""`python -m frontdoor` on its own: READY, the one-line reasons it cannot start, and TLS in front
of the running stack's control and WebSocket bridge (a second door on the same processes)."""
from __future__ import annotations

import json
import socket
import ssl
import urllib.request
from urllib.parse import urlparse

import msgpack
import pytest
import simple_websocket

from processes import base_env
from stack_support import free_ports
from test_deploy_files import self_signed


def upstreams(honcho_stack) -> dict[str, str]:
    control = urlparse(honcho_stack.ready["control"]["url"])
    ws = urlparse(honcho_stack.ready["ws"]["url"])
    return {"PHANTOM_CONTROL_UPSTREAMS": f"127.0.0.1:{control.port}",
            "PHANTOM_WS_UPSTREAMS": f"127.0.0.1:{ws.port}"}


def test_a_taken_port_is_one_line_and_exit_1(spawn):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn("frontdoor", base_env(PHANTOM_PORT=str(port)))
        assert proc.popen.wait(20) == 1
    lines = [line for line in proc.output().splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], lines


def test_missing_tls_files_are_one_line_and_exit_1(spawn, tmp_path):
    proc = spawn("frontdoor", base_env(PHANTOM_PORT="0", PHANTOM_TLS_CERT=str(tmp_path / "no.pem"),
                                       PHANTOM_TLS_KEY=str(tmp_path / "no.key")))
    assert proc.popen.wait(20) == 1
    assert "PHANTOM_TLS_CERT=" in proc.output() and "no such file" in proc.output()


def test_tls_door_serves_rest_and_streams_of_the_stack(spawn, honcho_stack, tmp_path):
    cert, key = self_signed(tmp_path)
    (tls_port,) = free_ports(1)
    door = spawn("frontdoor", base_env(PHANTOM_PORT="0", PHANTOM_TLS_PORT=str(tls_port),
                                       PHANTOM_TLS_CERT=str(cert), PHANTOM_TLS_KEY=str(key),
                                       **upstreams(honcho_stack)))
    ready = door.wait_ready(30)
    assert ready["tls"] == f"https://127.0.0.1:{tls_port}" and ready["proxy"].startswith("nginx/")
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False      # the test certificate names localhost, we dial 127.0.0.1
    with urllib.request.urlopen(f"https://127.0.0.1:{tls_port}/health", context=context, timeout=5) as reply:
        assert reply.status == 200 and json.load(reply)["status"] == "healthy"
    ws = simple_websocket.Client.connect(f"wss://127.0.0.1:{tls_port}/stream/door-tls?format=msgpack",
                                         ssl_context=context)
    try:
        assert msgpack.unpackb(ws.receive(timeout=5))["type"] == "metadata"
        assert msgpack.unpackb(ws.receive(timeout=5))["session"] == "door-tls"
    finally:
        ws.close()
    assert door.stop() == 0
    assert "stopped (nginx exit 0)" in door.output()


@pytest.mark.parametrize("path", ["/streamers", "/api/stream/x"])
def test_only_stream_paths_go_to_the_bridge(honcho_stack, path):
    """Paths that merely start with /stream are control's (a JSON 404), not the bridge's."""
    try:
        urllib.request.urlopen(honcho_stack.door + path, timeout=5)
        raise AssertionError(f"{path} answered 200")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404 and "error" in json.loads(exc.read())
