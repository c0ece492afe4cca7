"""Replies over every session never stall the stream: 1000 sessions, 20 consumed, four clients
polling `list` and `metrics` back to back: no consumed packet held up enough to be skipped.
(benchmarks/bench_scale.py measures the lateness figures of the same load.)"""
from __future__ import annotations

import threading
import time

import zmq

from broker_client import BrokerClient
from processes import wait_for
from protocol import encode_request, parse_reply
from protocol.wire import session_topic

SESSIONS, CONSUMED, POLLERS, SECONDS = 1000, 20, 4, 4.0
LATE_SKIP_MS = "20"


def _poll(endpoint: str, stop: threading.Event, counts: list[int], sizes: set[int]) -> None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        while not stop.is_set():
            for cmd in ("list", "metrics"):
                sock.send(encode_request(cmd))
                assert sock.poll(10_000), f"no {cmd} reply within 10 s"
                result = parse_reply(sock.recv())
                sizes.add(len(result["sessions"]))
                counts.append(1)
    finally:
        sock.close()


def test_polling_every_session_does_not_skip_consumed_packets(start_broker):
    # realtime priority (CI runs as root) so that other processes on the machine cannot stall the
    # broker: what is left is the broker's own work, which is what this test is about. A packet
    # held up by more than 20 ms is skipped and counted.
    broker = start_broker(PHANTOM_MAX_SESSIONS=str(SESSIONS), PHANTOM_BROKER_PRIORITY="realtime",
                          PHANTOM_LATE_SKIP_MS=LATE_SKIP_MS)
    c = BrokerClient(broker.ready)
    try:
        for i in range(SESSIONS):
            c.call("create", code=f"load-{i}")
        watched = [f"load-{i}" for i in range(0, SESSIONS, SESSIONS // CONSUMED)]
        sub = c.subscribe(*(session_topic(code, "packet") for code in watched))
        sub.packets(watched[-1], 2)                    # every subscription is live by now
        before = {code: c.call("get", code=code)["packets_skipped"] for code in watched}
        stop, counts, sizes = threading.Event(), [], set()
        pollers = [threading.Thread(target=_poll, args=(c.control, stop, counts, sizes))
                   for _ in range(POLLERS)]
        for t in pollers:
            t.start()
        seqs: dict[bytes, list[int]] = {}
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            got = sub.recv(1.0)
            assert got is not None, "the stream stopped"
            seqs.setdefault(got[0], []).append(got[1]["data"]["sequence_number"])
        stop.set()
        for t in pollers:
            t.join(15)
        assert len(counts) >= 2 * POLLERS and sizes == {SESSIONS}   # the load really ran
        assert len(seqs) == CONSUMED
        for topic, numbers in seqs.items():
            numbers = numbers[1:]       # the first may predate a seek-free start; all contiguous after
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), f"gap in {topic!r}"
        skipped = {code: c.call("get", code=code)["packets_skipped"] - before[code] for code in watched}
        assert sum(skipped.values()) == 0, skipped
    finally:
        c.close()


def test_a_reused_list_reply_never_hides_a_change(broker):
    c = BrokerClient(broker.ready)
    try:
        c.call("create", code="first", paused=True)
        once = c.call("metrics")
        assert c.call("metrics")["timestamp"] == once["timestamp"]        # reused: nothing changed
        c.call("create", code="second", paused=True)
        assert [s["code"] for s in c.call("list")["sessions"]] == ["first", "second"]
        assert set(c.call("metrics")["sessions"]) == {"first", "second"}
        c.call("pause", code="first")                                     # a change, even a no-op
        c.call("resume", code="first")
        assert c.call("list")["sessions"][0]["state"] == "playing"
        c.call("delete", code="second")
        assert [s["code"] for s in c.call("list")["sessions"]] == ["first"]
        began = time.monotonic()                # older than 1 s, a reply is built afresh
        wait_for(lambda: c.call("metrics")["timestamp"] > once["timestamp"], 3, "a fresh metrics reply")
        assert time.monotonic() - began < 1.5
    finally:
        c.close()
