"""Subscriber accounting that cannot be fooled: duplicate subscriptions, a killed subscriber
process and a silent (half-open) peer all bring the counts back to zero."""
from __future__ import annotations

import select
import signal
import subprocess
import sys
import textwrap

import pytest

from broker_client import BrokerClient
from processes import REPO_ROOT, wait_for
from protocol.wire import session_topic

PEER_TIMEOUT_S = "1.5"


@pytest.fixture
def client(start_broker):
    c = BrokerClient(start_broker(PHANTOM_PEER_TIMEOUT_S=PEER_TIMEOUT_S).ready)
    yield c
    c.close()


def _subscribers(client, code):
    return client.call("get", code=code)["subscribers"]


def _wildcards(client):
    return client.call("metrics")["wildcard_subscribers"]


def test_duplicate_subscriptions_from_one_socket_leave_no_count_behind(client):
    sub = client.session("twice")
    sub.subscribe(session_topic("twice"))
    sub.subscribe(session_topic("twice"))
    sub.subscribe(session_topic("twice", "packet"))
    sub.packets("twice", 2)
    assert _subscribers(client, "twice") == 2        # two distinct prefixes name the session
    sub.close()
    wait_for(lambda: _subscribers(client, "twice") == 0, 3, "0 subscribers after close")
    # and with the count at zero the session is idle again: a limit of one lets it be evicted
    assert client.call("metrics")["sessions"]["twice"]["publishing"] is False


def test_one_prefix_held_by_two_sockets_counts_until_the_last_leaves(client):
    first = client.session("shared")
    second = client.session("shared")
    assert _subscribers(client, "shared") == 1       # identical prefixes are merged by ZeroMQ
    first.close()
    assert second.packets("shared", 3)
    assert _subscribers(client, "shared") == 1
    second.close()
    wait_for(lambda: _subscribers(client, "shared") == 0, 3, "0 subscribers")


def test_duplicate_wildcards_return_to_zero(client):
    everything = client.subscribe(b"session/", b"session/", b"")
    wait_for(lambda: _wildcards(client) == 2, 3, "2 wildcard prefixes")
    everything.close()
    wait_for(lambda: _wildcards(client) == 0, 3, "no wildcard after close")


def _subscriber_process(endpoint: str, *prefixes: bytes) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, zmq
        s = zmq.Context().socket(zmq.SUB)
        s.connect({endpoint!r})
        for p in {list(prefixes)!r}:
            s.setsockopt(zmq.SUBSCRIBE, p)
        s.recv_multipart()
        print("receiving", flush=True)
        while True:
            s.recv_multipart()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    if not ready or proc.stdout.readline().strip() != "receiving":
        _end(proc)
        raise AssertionError("the subscriber process received nothing within 10 s")
    return proc


def _end(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(5)
    proc.stdout.close()


def test_a_killed_subscriber_process_is_forgotten(client):
    client.call("create", code="victim")
    proc = _subscriber_process(client.pub, session_topic("victim"), session_topic("victim"), b"session/")
    try:
        wait_for(lambda: _subscribers(client, "victim") == 1 and _wildcards(client) == 1, 3, "counted")
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        wait_for(lambda: _subscribers(client, "victim") == 0 and _wildcards(client) == 0, 3,
                 "the killed subscriber's counts to go")
    finally:
        _end(proc)


def test_a_silent_half_open_peer_is_dropped_by_heartbeats(client):
    client.call("create", code="frozen")
    proc = _subscriber_process(client.pub, session_topic("frozen"), b"session/")
    try:
        wait_for(lambda: _subscribers(client, "frozen") == 1 and _wildcards(client) == 1, 3, "counted")
        proc.send_signal(signal.SIGSTOP)        # its TCP connection stays open; it answers nothing
        wait_for(lambda: _subscribers(client, "frozen") == 0 and _wildcards(client) == 0,
                 3 * float(PEER_TIMEOUT_S) + 2, "the silent peer to be dropped")
    finally:
        _end(proc)
