"""Session limits no client can break: eviction only of sessions idle for a grace period (429 with
Retry-After otherwise) and sessions created per remote subscriber bounded (real broker and control)."""
from __future__ import annotations

import socket
import time

import pytest
import zmq

from control_support import start_control
from processes import wait_for
from protocol import CommandError, session_topic


def _external_ip() -> str | None:
    """This machine's address on a non-loopback interface, if it has one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))        # no packet is sent for a UDP connect
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def test_creating_sessions_never_evicts_one_used_within_the_grace_period(start_broker, spawn, clients):
    broker = start_broker(PHANTOM_MAX_SESSIONS="2", PHANTOM_EVICT_GRACE_S="60")
    c = clients(broker)
    c.call("create", code="grace-a")
    c.call("create", code="grace-b")
    with pytest.raises(CommandError) as info:
        c.call("create", code="grace-c")
    assert info.value.code.value == "limit" and 55 <= info.value.retry_after_s <= 60
    assert {s["code"] for s in c.call("list")["sessions"]} == {"grace-a", "grace-b"}
    _, http = start_control(spawn, broker.ready["control"])
    reply = http.post("/api/sessions/create", {"custom_code": "grace-c"})
    assert reply.status == 429 and reply.error_code() == "limit"
    assert 55 <= int(reply.headers["retry-after"]) <= 60


def test_a_session_idle_past_the_grace_period_is_evicted(start_broker, clients):
    c = clients(start_broker(PHANTOM_MAX_SESSIONS="2", PHANTOM_EVICT_GRACE_S="0.5"))
    c.call("create", code="stale-a")
    c.call("create", code="stale-b")
    time.sleep(0.6)                         # the grace period itself is what is tested
    c.call("get", code="stale-b")           # touched: not evictable for another 0.5 s
    c.call("create", code="stale-c")
    assert {s["code"] for s in c.call("list")["sessions"]} == {"stale-b", "stale-c"}


def test_a_remote_subscriber_creates_a_bounded_number_of_sessions(start_broker, clients):
    address = _external_ip()
    if address is None:
        pytest.skip("no non-loopback interface to connect from")
    broker = start_broker(PHANTOM_PUB_ENDPOINT="tcp://0.0.0.0:*", PHANTOM_MAX_SESSIONS_PER_CLIENT="2")
    port = broker.ready["pub"].rsplit(":", 1)[1]
    c = clients(broker)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    try:
        sub.connect(f"tcp://{address}:{port}")
        for code in ("remote-1", "remote-2", "remote-3"):
            sub.setsockopt(zmq.SUBSCRIBE, session_topic(code))
        wait_for(lambda: {"remote-1", "remote-2"} <= {s["code"] for s in c.call("list")["sessions"]},
                 5, "the first two sessions to be created")
        broker.wait_line("remote-3 from", timeout=5)
        assert "remote-3" not in {s["code"] for s in c.call("list")["sessions"]}
        c.call("delete", code="remote-1")           # gives that client one creation back
        sub.setsockopt(zmq.SUBSCRIBE, session_topic("remote-4"))
        wait_for(lambda: "remote-4" in {s["code"] for s in c.call("list")["sessions"]}, 5,
                 "a creation to be given back")
        c.session("local-a")                        # loopback clients: only the broker's limit
        c.session("local-b")
        c.session("local-c")
    finally:
        sub.close()
        ctx.term()


def test_a_prefix_no_session_code_can_start_with_is_not_a_wildcard(start_broker, clients):
    c = clients(start_broker())
    c.call("create", code="quiet-one")
    sub = c.subscribe(b"session/" + b"a" * 100, b"session/NOPE", b"session/-x", b"session/\xff",
                      session_topic("sync-after"))
    sub.wait_meta("sync-after")             # the same socket's earlier subscriptions were handled
    metrics = c.call("metrics")
    assert metrics["wildcard_subscribers"] == 0
    assert metrics["sessions"]["quiet-one"]["publishing"] is False
