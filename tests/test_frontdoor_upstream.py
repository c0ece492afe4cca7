"""How the front door talks to control: kept-alive HTTP/1.1 connections, answers passed through
whole. Real broker, control and nginx processes; connections counted from the kernel's table."""
from __future__ import annotations

import http.client
from urllib.parse import urlparse

from control_support import create, start_control
from processes import base_env

TIME_WAIT, ESTABLISHED = "06", "01"


def connections_to(port: int) -> dict[tuple[str, str], str]:
    """Every IPv4 TCP connection whose remote end is 127.0.0.1:``port``: (local, remote) -> state."""
    found = {}
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            local, remote, state = line.split()[1:4]
            if remote == f"0100007F:{port:04X}":
                found[(local, remote)] = state
    return found


def test_the_door_keeps_one_connection_to_control_for_many_requests(spawn, start_broker):
    broker = start_broker()
    _, control = start_control(spawn, broker.ready["control"])
    create(control, "door-keepalive", paused=True)
    door = spawn("frontdoor", base_env(PHANTOM_PORT="0",
                                       PHANTOM_CONTROL_UPSTREAMS=f"127.0.0.1:{control.port}",
                                       PHANTOM_WS_UPSTREAMS="127.0.0.1:1"))
    url = urlparse(door.wait_ready(30)["url"])
    before = set(connections_to(control.port))
    answers = []
    for i in range(60):                     # 6 client connections of 10 requests each
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            for _ in range(10):
                conn.request("GET", "/api/sessions")
                reply = conn.getresponse()
                answers.append((reply.status, len(reply.read())))
        finally:
            conn.close()
    assert all(status == 200 and size > 100 for status, size in answers), answers[:3]
    opened = {key: state for key, state in connections_to(control.port).items() if key not in before}
    # One connection per request would leave ~60 in TIME_WAIT; kept alive, nginx reuses one or two.
    assert len(opened) <= 2, f"{len(opened)} connections to control for 60 requests: {opened}"
    assert all(state == ESTABLISHED for state in opened.values()), opened
