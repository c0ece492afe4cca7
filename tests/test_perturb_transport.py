"""Transport faults seen from a subscriber: sequence numbers, timing fields and the metrics that
count them, on a real broker."""
from __future__ import annotations

import numpy as np
import pytest

from broker_client import BrokerClient
from processes import Proc, base_env
from protocol.wire import EVENTS_TOPIC, session_topic

TICKS = 3000


@pytest.fixture(scope="module")
def fault_broker(tmp_path_factory):
    """One broker for the module (each test plays its own session at high speed)."""
    state = tmp_path_factory.mktemp("faults") / "state.json"
    proc = Proc.module("broker", base_env(PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*",
                                          PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                                          PHANTOM_STATE_PATH=str(state),
                                          PHANTOM_LATE_SKIP_MS="60000"))
    try:
        proc.wait_ready(timeout=60)
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(fault_broker):
    c = BrokerClient(fault_broker.ready)
    yield c
    c.close()


def stream(client, code: str, items, speed: float = 100, ticks: int = TICKS, seed: int = 9):
    """Arrival-ordered `data` of every packet a session sent from its start until it was paused
    after sequence number ``ticks``, its fault counters and how many ticks it played."""
    client.call("create", code=code, speed=speed, paused=True,
                perturbations={"seed": seed, "items": items})
    sub = client.session(code)
    client.call("resume", code=code)
    topic = session_topic(code, "packet")
    got, played = [], None
    while True:
        message = sub.recv(timeout=10 if played is None else 0.3)
        if message is None:
            assert played is not None, f"stream of {code} stopped after {len(got)} packets"
            break                                  # paused and drained (held packets included)
        if message[0] == topic:
            got.append(message[1]["data"])
            if played is None and got[-1]["sequence_number"] >= ticks:
                played = client.call("pause", code=code)["sequence_number"]
    sub.close()
    counts = client.call("metrics")["sessions"][code]["perturbations"]
    return got, counts, played


def originals(packets):
    return [p for p in packets if not p["duplicate"]]


def missing(packets, played: int) -> np.ndarray:
    """Sequence numbers played but never received."""
    seen = {p["sequence_number"] for p in packets}
    return np.array(sorted(set(range(played)) - seen))


def test_random_drops_leave_counted_gaps(client):
    packets, counts, played = stream(client, "t-drop", [{"kind": "drop", "rate": 0.1}])
    gone = missing(packets, played)
    assert abs(len(gone) / played - 0.1) < 0.02
    assert counts["dropped"] == len(gone)
    runs = np.diff(np.flatnonzero(np.diff(gone) != 1))
    assert runs.mean() < 1.5 if len(runs) else True                # independent: short runs


def test_bursty_drops_come_in_runs(client):
    packets, counts, played = stream(client, "t-burst", [{"kind": "burst_drop", "p_enter": 0.02, "p_exit": 0.25}])
    gone = missing(packets, played)
    starts = np.flatnonzero(np.diff(np.concatenate(([-10], gone))) != 1)
    lengths = np.diff(np.concatenate((starts, [len(gone)])))
    assert 2.8 < lengths.mean() < 5.5, lengths.mean()             # mean burst 1 / p_exit = 4
    assert counts["burst_dropped"] == len(gone)


def test_duplicates_are_marked_and_sequence_numbers_never_repeat_otherwise(client):
    packets, counts, played = stream(client, "t-dup", [{"kind": "duplicate", "rate": 0.05}])
    seqs = [p["sequence_number"] for p in originals(packets)]
    assert len(seqs) == len(set(seqs))
    copies = [p for p in packets if p["duplicate"]]
    assert abs(len(copies) / len(seqs) - 0.05) < 0.015
    index = {p["sequence_number"]: p for p in originals(packets)}
    for copy in copies:
        first = index[copy["sequence_number"]]
        assert copy["spikes"] == first["spikes"] and copy["scheduled_at"] == first["scheduled_at"]
        assert copy["sent_at"] >= first["sent_at"]
    assert counts["duplicated"] == len(copies) and sorted(seqs) == list(range(played))


def test_reordering_delivers_a_packet_after_its_successor(client):
    packets, counts, played = stream(client, "t-reorder", [{"kind": "reorder", "rate": 0.05}],
                                     speed=20, ticks=1500)
    seqs = [p["sequence_number"] for p in packets]
    late = [b for a, b in zip(seqs, seqs[1:]) if b < a]
    assert abs(len(late) / len(seqs) - 0.05) < 0.02
    assert sorted(seqs) == list(range(played))                     # nothing lost
    # two reordered neighbours keep their order (both held alike): about p^2 of the packets
    assert len(late) <= counts["reordered"] <= len(late) + 0.01 * played + 3


def test_latency_and_jitter_show_in_sent_at(client):
    packets, counts, played = stream(client, "t-late", [{"kind": "latency", "delay_ms": 40, "jitter_ms": 10}],
                                     speed=10, ticks=400)
    delay = np.array([p["sent_at"] - p["scheduled_at"] for p in packets]) * 1000
    q25, q50, q75 = np.percentile(delay, [25, 50, 75])
    spread = (q75 - q25) / 1.349                                    # the SD of a normal
    # quartiles: robust to stalls; the broker's own lateness (normally ~0.1 ms, a few ms on a
    # loaded machine) adds to both, so the jitter is an order of magnitude above it
    assert 39.5 < q50 < 43.5 and 8 < spread < 12.5, (q50, spread)
    assert counts["delayed"] >= 0.99 * played


def test_a_freeze_stalls_then_bursts_or_skips(client):
    item = {"kind": "freeze", "rate_per_min": 60, "duration_ms": 250}
    burst, counts, played = stream(client, "t-freeze-b", [{**item, "mode": "burst"}], speed=20, ticks=1200)
    assert sorted(p["sequence_number"] for p in burst) == list(range(played))
    sent = np.array([p["sent_at"] for p in burst])
    together = np.flatnonzero(np.diff(sent) < 0.0003)              # 1.25 ms apart when playing
    assert counts["frozen_held"] >= 10 and len(together) >= counts["frozen_held"] * 0.8
    skip, counts, played = stream(client, "t-freeze-s", [{**item, "mode": "skip"}], speed=20, ticks=1200)
    gone = missing(skip, played)
    assert len(gone) >= 10 and counts["frozen_skipped"] == len(gone)
    starts = np.flatnonzero(np.diff(np.concatenate(([-10], gone))) != 1)
    runs = np.diff(np.concatenate((starts, [len(gone)])))
    assert np.all(runs[:-1] >= 10)                                  # whole stalls of 250 ms
    assert 0.12 < len(gone) / played < 0.32                           # 1 - exp(-1/s * 0.25 s) = 0.22


def test_clock_drift_runs_the_schedule_fast(client):
    packets, counts, _ = stream(client, "t-clock", [{"kind": "clock_drift", "ppm": 10000}], speed=10, ticks=400)
    sched = np.array([p["scheduled_at"] for p in packets])
    seqs = np.array([p["sequence_number"] for p in packets])
    interval = np.polyfit(seqs, sched, 1)[0]
    assert abs(interval / 0.0025 - 1.01) < 0.001, interval
    assert counts["clock_offset_ms"] > 0.0025 * 0.01 * 300 * 1000


def test_packets_and_events_announce_what_is_active(client):
    events = client.subscribe(EVENTS_TOPIC, session_topic("probe-t", "meta"))
    events.wait_meta("probe-t")
    packets, _, _ = stream(client, "t-gt", [{"kind": "gain", "id": "g", "start_packet": 100, "end_packet": 200},
                                          {"kind": "drop", "id": "d", "rate": 0.0, "start_packet": 150}],
                        ticks=400)
    for p in packets:
        expected = (["g"] if 100 <= p["packet_id"] < 200 else []) + (["d"] if p["packet_id"] >= 150 else [])
        assert p["perturbations"] == expected, p["packet_id"]
        assert p["noise"] is (100 <= p["packet_id"] < 200 and p["observed"])
    seen = []
    while len(seen) < 3:
        message = events.recv(timeout=5)
        assert message is not None, f"perturbation events so far: {seen}"
        msg = message[1]
        if msg.get("event") == "perturbation" and msg["session"]["code"] == "t-gt":
            seen.append(msg["perturbation"])
    assert [(e["packet_id"], e["started"], e["ended"]) for e in seen] == [
        (100, ["g"], []), (150, ["d"], []), (200, [], ["g"])]
    meta = client.call("perturbations", code="t-gt")
    assert [i["id"] for i in meta["items"]] == ["g", "d"] and meta["seed"] == 9


def test_clearing_announces_the_end(client):
    client.call("create", code="t-clear", perturbations=[{"kind": "gain", "id": "g"}])
    # it publishes (and announces) only once subscribed; events are live before its meta is
    events = client.subscribe(EVENTS_TOPIC, session_topic("t-clear", "meta"))
    events.wait_meta("t-clear")

    def perturbation(topic, msg):
        return msg.get("event") == "perturbation" and msg["session"]["code"] == "t-clear"
    assert events.wait(perturbation, 5, "the start")[1]["perturbation"]["started"] == ["g"]
    client.call("clear_perturbations", code="t-clear")
    ended = events.wait(perturbation, 5, "the end")[1]["perturbation"]
    assert ended["ended"] == ["g"] and ended["active"] == []
