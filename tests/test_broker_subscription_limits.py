"""Bounds on the data socket, from outside: a real broker process and real SUB sockets.

- one connection holds at most PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION counted subscriptions;
  the rest are refused (not counted, create nothing, make nothing publish), counted in `metrics`
  and logged on one rate-limited line, and other connections are unaffected;
- a subscription that names no topic the broker publishes is ignored (counted, never a wildcard)
  and takes no slot;
- a slot is given back exactly when that connection lets the prefix go, even while another
  connection still holds the same prefix, and a connection that reuses a closed one's file
  descriptor starts with no slot taken;
- a subscription frame longer than any topic could need drops only the connection that sent it.
"""
from __future__ import annotations

import re
import time

import pytest
import zmq

from broker_client import BrokerClient, Subscriber
from control_support import start_control
from processes import wait_for
from protocol.wire import session_topic

LIMIT = 5


@pytest.fixture
def limited(start_broker, clients):
    # a limit below the LSL bridge's needs (PHANTOM_LSL_MAX_SESSIONS + 1) needs LSL off
    broker = start_broker(PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION=str(LIMIT),
                          PHANTOM_LSL_ENABLED="false")
    return broker, clients(broker)


def _codes(client: BrokerClient) -> set[str]:
    return {s["code"] for s in client.call("list")["sessions"]}


def _subscribers(client: BrokerClient, code: str) -> int:
    return client.call("get", code=code)["subscribers"]


def _counter(client: BrokerClient, name: str) -> int:
    return client.call("metrics").get(name, 0)


def _flooder(client: BrokerClient, **options: int) -> Subscriber:
    """A SUB socket that queues every subscription it is given (no client-side high-water mark:
    with the default 1000, libzmq drops a burst's excess subscriptions before they leave)."""
    sub = Subscriber(client.ctx, client.pub)
    sub.sock.setsockopt(zmq.SNDHWM, 0)
    for option, value in options.items():
        sub.sock.setsockopt(getattr(zmq, option), value)
    client.subs.append(sub)
    return sub


def test_a_connection_holds_at_most_the_limit_and_the_rest_create_nothing(limited):
    broker, c = limited
    sub = _flooder(c)
    for i in range(LIMIT + 3):
        sub.subscribe(session_topic(f"held-{i}"))
    wait_for(lambda: _counter(c, "subscriptions_refused") >= 3, 5,
             f"3 refused subscriptions (sessions now: {sorted(_codes(c))})")
    assert _codes(c) == {f"held-{i}" for i in range(LIMIT)}
    assert _counter(c, "subscriptions_refused") == 3
    assert [_subscribers(c, f"held-{i}") for i in range(LIMIT)] == [1] * LIMIT
    metrics = c.call("metrics")
    assert metrics["subscriptions_held"] == LIMIT and metrics["subscriber_connections"] == 1
    # a repeated subscription takes no new slot and is not refused; nor is it counted twice
    sub.subscribe(session_topic("held-0"))
    sub.wait_meta("held-0")
    assert _counter(c, "subscriptions_refused") == 3 and _subscribers(c, "held-0") == 1
    # one line says so, however many were refused
    lines = [line for line in broker.output().splitlines() if "refused" in line]
    assert len(lines) == 1, lines
    assert str(LIMIT) in lines[0] and "PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION" in lines[0]
    # other connections are unaffected: they subscribe and stream as usual
    other = c.session("bystander")
    assert other.packets("bystander", 3)
    sub.close()
    wait_for(lambda: all(_subscribers(c, f"held-{i}") == 0 for i in range(LIMIT))
             and c.call("metrics")["subscriptions_held"] == 1, 5, "the flooder's counts to go")


def test_a_slot_is_given_back_when_that_connection_lets_go_even_if_others_hold_the_prefix(limited):
    _, c = limited
    a, b = _flooder(c), _flooder(c)
    for sub in (a, b):
        for i in range(LIMIT):
            sub.subscribe(session_topic(f"shared-{i}"))
    wait_for(lambda: c.call("metrics")["subscriptions_held"] == 2 * LIMIT, 5, "both connections full")
    a.subscribe(session_topic("late"))
    wait_for(lambda: _counter(c, "subscriptions_refused") == 1, 5, "a's sixth refused")
    assert "late" not in _codes(c)
    a.unsubscribe(session_topic("shared-0"))           # b still holds shared-0
    a.subscribe(session_topic("late"))
    a.wait_meta("late")                                 # now counted: a had a slot again
    assert _subscribers(c, "late") == 1 and _subscribers(c, "shared-0") == 1
    assert _counter(c, "subscriptions_refused") == 1
    b.close()
    wait_for(lambda: _subscribers(c, "shared-0") == 0, 5, "shared-0 released by its last holder")
    assert [_subscribers(c, f"shared-{i}") for i in range(1, LIMIT)] == [1] * (LIMIT - 1)
    a.close()
    wait_for(lambda: c.call("metrics")["subscriptions_held"] == 0, 5, "no subscription left")
    assert all(_subscribers(c, code) == 0 for code in _codes(c))


def test_a_new_connection_on_a_closed_ones_descriptor_starts_with_every_slot_free(limited):
    _, c = limited
    for round_ in range(3):         # the kernel hands the closed descriptor to the next connection
        sub = _flooder(c)
        for i in range(LIMIT):
            sub.subscribe(session_topic(f"reuse-{round_}-{i}"))
        wait_for(lambda: c.call("metrics")["subscriptions_held"] == LIMIT, 5,
                 f"round {round_}: {LIMIT} counted")
        assert _counter(c, "subscriptions_refused") == 0
        sub.close()
        c.subs.remove(sub)
        wait_for(lambda: c.call("metrics")["subscriptions_held"] == 0, 5, "released")
    assert all(_subscribers(c, code) == 0 for code in _codes(c))


def test_a_prefix_naming_no_topic_is_ignored_and_takes_no_slot(limited):
    _, c = limited
    c.call("create", code="quiet-two")
    sub = _flooder(c)
    junk = [b"session/" + b"a" * 100, b"session/NOPE", b"session/-x", b"session/\xff",
            b"session/quiet-two/nope", b"events/sessions", b"nothing-at-all"]
    for prefix in junk:
        sub.subscribe(prefix)
    for i in range(LIMIT):
        sub.subscribe(session_topic(f"after-junk-{i}"))
    wait_for(lambda: _counter(c, "subscriptions_ignored") == len(junk), 5, "the junk counted")
    wait_for(lambda: {f"after-junk-{i}" for i in range(LIMIT)} <= _codes(c), 5,
             "every slot still free for real subscriptions")
    metrics = c.call("metrics")
    assert metrics["subscriptions_refused"] == 0 and metrics["wildcard_subscribers"] == 0
    assert metrics["sessions"]["quiet-two"]["publishing"] is False


def test_ten_thousand_prefixes_from_one_socket_create_at_most_the_default_limit(start_broker, clients):
    broker = start_broker()
    c = clients(broker)
    bystander = c.session("bystander")
    default = 64
    sub = _flooder(c)
    for i in range(5000):
        sub.subscribe(session_topic(f"flood-{i}"))             # valid codes: each would create one
        sub.subscribe(f"flood/{i}/".encode().ljust(79, b"x"))  # names no topic
    expected = 10_000 - default

    def handled():
        m = c.call("metrics")
        return m if m.get("subscriptions_refused", 0) + m.get("subscriptions_ignored", 0) >= expected else None

    m = wait_for(handled, 60, f"{expected} subscriptions refused or ignored", interval=0.2)
    assert m["subscriptions_refused"] == 5000 - default
    assert m["subscriptions_ignored"] == 5000
    assert m["total_sessions"] == default + 1                   # the flooder's 64 and the bystander
    assert m["subscriptions_held"] == default + 1
    packets = bystander.packets("bystander", 10)
    assert [p["sequence_number"] for p in packets] == list(range(packets[0]["sequence_number"],
                                                                 packets[0]["sequence_number"] + 10))
    newcomer = c.session("newcomer")                            # subscribes and streams as usual
    assert newcomer.packets("newcomer", 2)
    refusals = [line for line in broker.output().splitlines()
                if re.search(r"refused|ignored|cannot create", line)]
    assert len(refusals) <= 6, refusals[:10]


def test_a_subscription_frame_longer_than_any_topic_drops_only_its_connection(start_broker, clients):
    c = clients(start_broker())
    bystander = c.session("bystander")
    sub = _flooder(c, RECONNECT_IVL=60_000)                     # stays away once dropped
    sub.subscribe(session_topic("short"))
    sub.wait_meta("short")
    sub.subscribe(b"x" * 500)                                   # long, but under the frame limit
    assert sub.packets("short", 2)
    assert _counter(c, "subscriptions_ignored") == 1 and _subscribers(c, "short") == 1
    sub.subscribe(b"y" * 600)                                   # over it: the connection goes
    wait_for(lambda: _subscribers(c, "short") == 0, 5, "the long frame's connection dropped")
    # packets the broker sent before the drop may still be queued in this socket: take those
    # (a pause of 0.2 s ends them; a connection still being fed never pauses), then nothing comes
    deadline = time.monotonic() + 3
    while sub.recv(0.2) is not None:
        assert time.monotonic() < deadline, "packets kept coming after the connection dropped"
    assert sub.silent(session_topic("short", "packet"), 0.5)
    assert bystander.packets("bystander", 3)


def test_refusals_reach_prometheus(start_broker, clients, spawn):
    broker = start_broker(PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION="1", PHANTOM_LSL_ENABLED="false")
    c = clients(broker)
    sub = _flooder(c)
    for code in ("prom-a", "prom-b", "prom-c"):
        sub.subscribe(session_topic(code))
    sub.subscribe(b"not-a-topic")
    wait_for(lambda: _counter(c, "subscriptions_refused") == 2
             and _counter(c, "subscriptions_ignored") == 1, 5, "2 refused, 1 ignored")
    _, http = start_control(spawn, broker.ready["control"])
    text = http.get("/metrics/prometheus").body.decode()
    assert "phantomlink_broker_subscriptions_refused_total 2.0" in text
    assert "phantomlink_broker_subscriptions_ignored_total 1.0" in text
    assert "phantomlink_broker_subscriptions_held 1.0" in text
    assert "phantomlink_broker_subscriber_connections 1.0" in text


def test_subscribers_over_ipc_are_counted_and_released(start_broker, clients, tmp_path):
    c = clients(start_broker(PHANTOM_PUB_ENDPOINT=f"ipc://{tmp_path}/data"))
    sub = c.session("over-ipc")
    assert sub.packets("over-ipc", 2)
    assert c.call("metrics")["subscriptions_held"] == 1 and _subscribers(c, "over-ipc") == 1
    sub.close()
    wait_for(lambda: _subscribers(c, "over-ipc") == 0, 5, "the ipc subscriber released")
