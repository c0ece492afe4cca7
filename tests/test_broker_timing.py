"""Causal delivery and the packet clocks: a bin goes out once it has closed, on the clocks the
protocol names (measured from outside, on the same host's clocks)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from broker_client import BrokerClient
from protocol.wire import session_topic


@pytest.fixture
def client(broker):
    c = BrokerClient(broker.ready)
    yield c
    c.close()


def _first_packet_after(client, code: str, cmd: str, **args) -> tuple[float, float, dict]:
    """Send ``cmd``; (monotonic before sending, monotonic at arrival, data) of the next packet."""
    sub = client.subs[-1]
    topic = session_topic(code, "packet")
    before = time.monotonic()
    client.call(cmd, code=code, **args)
    _, msg = sub.wait(lambda t, m: t == topic, 3, f"a packet after {cmd}")
    return before, time.monotonic(), msg["data"]


@pytest.mark.parametrize("speed", [1.0, 0.5])
def test_the_first_packet_after_resume_comes_one_bin_period_later(client, speed):
    client.call("create", code="causal", speed=speed, paused=True)
    client.session("causal")
    period = 0.025 / speed
    before, arrived, first = _first_packet_after(client, "causal", "resume")
    assert arrived - before >= period, f"bin delivered {1e3 * (arrived - before):.1f} ms after resume"
    assert first["scheduled_mono"] >= before + period
    assert first["scheduled_mono"] - before < period + 0.010


def test_the_first_packet_after_a_seek_or_speed_change_waits_for_its_bin_to_close(client):
    client.call("create", code="jump")
    sub = client.session("jump")
    sub.packets("jump", 2)
    before, arrived, first = _first_packet_after(client, "jump", "seek", packet_id=4000)
    # packets already in flight before the seek may arrive first: skip to the sought bin
    if first["packet_id"] != 4000:
        first = sub.wait(lambda t, m: t == session_topic("jump", "packet")
                         and m["data"]["packet_id"] == 4000, 2, "the sought bin")[1]["data"]
    assert first["scheduled_mono"] >= before + 0.025
    before = time.monotonic()
    client.call("speed", code="jump", speed=0.5)
    later = sub.wait(lambda t, m: t == session_topic("jump", "packet")
                     and m["data"]["scheduled_mono"] > before, 2, "a packet after the speed change")
    assert later[1]["data"]["scheduled_mono"] >= before + 0.050


def test_clock_fields_are_unix_and_monotonic_seconds(client):
    client.call("create", code="clocks", speed=2)
    sub = client.session("clocks")
    topic = session_topic("clocks", "packet")
    rows = []
    for _ in range(20):
        _, msg = sub.wait(lambda t, m: t == topic, 2, "a packet")
        rows.append((time.time(), time.monotonic(), msg["data"]))
    for wall, mono, p in rows:
        assert 0 <= wall - p["sent_at"] < 0.05, "sent_at is not this host's Unix time"
        assert 0 <= mono - p["scheduled_mono"] < 0.1, "scheduled_mono is not CLOCK_MONOTONIC"
        lateness = p["sent_at"] - p["scheduled_at"]
        assert 0 <= lateness < 0.05
    mono_due = np.array([p["scheduled_mono"] for _, _, p in rows])
    assert np.allclose(np.diff(mono_due), 0.0125, atol=1e-6), "not on the bin grid"


def test_events_carry_their_offset_within_the_bin(client):
    trials = {t["trial_id"]: t for t in client.call("trials")["trials"]}
    client.call("create", code="events", speed=1000, loop=False, paused=True)
    sub = client.session("events")
    client.call("seek", code="events", packet_id=0)
    client.call("resume", code="events")
    packets = sub.packets("events", 1500, timeout=10)
    columns = {"trial_start": "start_time", "target_on": "target_on_time", "go_cue": "go_cue_time",
               "move_onset": "move_onset_time", "trial_end": "stop_time"}
    checked = 0
    for p in packets:
        assert len(p["event_offsets_ms"]) == len(p["events"])
        for name, offset in zip(p["events"], p["event_offsets_ms"]):
            assert 0 <= offset < 25
            at = p["timestamp"] + offset / 1000
            # the event's own time, from the trials table (the trial containing the bin, or the
            # one ending in it)
            times = [t[columns[name]] for t in trials.values() if t[columns[name]] is not None]
            assert min(abs(at - x) for x in times) < 1e-3, (name, p["packet_id"], offset)
            checked += 1
    assert checked >= 20
