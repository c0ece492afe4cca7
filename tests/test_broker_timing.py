"""Causal delivery and the packet clocks: a bin goes out once it has closed, on the clocks the
protocol names (measured from outside, on the same host's clocks)."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from broker_client import BrokerClient
from processes import wait_for
from protocol.commands import encode_request
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



def _send_times(sub, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """For every data packet in ``seconds``: how late it went out (``sent_at - scheduled_at``,
    s) and when, on the monotonic clock (``scheduled_mono`` + lateness), sorted."""
    late, sent = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = sub.recv(1.0)
        if got is None or not got[0].endswith(b"/packet"):
            continue
        data = got[1]["data"]
        late.append(data["sent_at"] - data["scheduled_at"])
        sent.append(data["scheduled_mono"] + late[-1])
    return np.array(late), np.sort(np.array(sent))


@pytest.mark.parametrize("batch_us", ["2000", "0"])
def test_heavy_load_batches_sends_and_never_sends_early(start_broker, clients, batch_us):
    """Above 10,000 packets/s the broker sends the packets due within PHANTOM_SEND_BATCH_US
    together (several per wake-up), never before they are due; with 0 it never batches."""
    c = clients(start_broker(PHANTOM_SEND_BATCH_US=batch_us))
    codes = [f"load{i}" for i in range(10)]
    for code in codes:
        c.call("create", code=code)
    sub = c.subscribe(*(session_topic(code, "packet") for code in codes))
    _send_times(sub, 1.2)                            # 400 packets/s: far below the threshold
    assert c.call("metrics")["send_batching"] is False
    # about 12,000 packets/s; speeds that differ, so that the sessions' deadlines interleave
    for i, code in enumerate(codes):
        c.call("speed", code=code, speed=28 + 0.43 * i)
    wait_for(lambda: c.call("metrics")["send_batching"] is (batch_us != "0"), 10,
             "send_batching to reflect the load", interval=0.05)
    late, sent = _send_times(sub, 2.0)
    assert len(late) > 5000, f"only {len(late)} packets in 2 s at 12,000 packets/s"
    assert late.min() >= 0, f"a packet went out {-1e3 * late.min():.3f} ms before its bin closed"
    if batch_us == "0":
        assert c.call("metrics")["send_batching"] is False
        return
    # batched, most packets go out right after the previous one (same wake-up): the median gap
    # between sends is a few µs; sent one at a time at 12,000 packets/s it is tens of µs
    gap = float(np.median(np.diff(sent)))
    assert gap < 30e-6, f"median gap between sends {1e6 * gap:.1f} µs: not batched"
    # a packet waits for its batch: on average about half the batch period
    assert float(np.median(late)) > 0.0005, f"median lateness {1e3 * np.median(late):.3f} ms"


def _until(t: float) -> None:
    """Return at monotonic time ``t``: sleep most of the way, then spin (a test client may spin)."""
    if t - time.monotonic() > 0.002:
        time.sleep(t - time.monotonic() - 0.002)
    while time.monotonic() < t:
        pass


def test_a_request_is_answered_without_waiting_for_the_next_packet(start_broker):
    """The loop waits for a packet's deadline in a ``select`` on its sockets, so a request that
    arrives during the wait is served at once, wherever in the bin it arrives. Requests are sent
    at 25 phases spread over the bins of a playing, consumed session (down to 0.2 ms before a
    packet is due, on this host's monotonic clock, the one ``scheduled_mono`` is on); their
    median round trip must stay under a fifth of the bin period. A loop that does not watch its
    sockets while it waits answers each one when it next wakes for a packet: half a period late
    on average. (A blind spell shorter than a wake-up of this VM's CPUs cannot be told apart from
    outside: both add a few hundred µs.) The broker and this client run at realtime priority
    (CI runs as root) so that other processes on the machine do not decide when requests
    arrive."""
    broker = start_broker(PHANTOM_BROKER_PRIORITY="realtime")
    try:                          # this thread, and the ZeroMQ I/O thread of the context below
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except PermissionError:
        pass
    try:
        client = BrokerClient(broker.ready)
        try:
            rtts = _answer_times(client, [0.0002 + 0.001 * i for i in range(25)])
        finally:
            client.close()
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    assert len(rtts) >= 50, "too few bins in time to test"
    median = float(np.median(rtts))
    assert median < 0.025 / 5, (
        f"median answer {1e3 * median:.2f} ms for requests sent across the bin (p90 "
        f"{1e3 * float(np.percentile(rtts, 90)):.2f} ms): the loop does not serve them while it waits")


def _answer_times(client: BrokerClient, leads: list[float]) -> list[float]:
    """Round trips of `get` requests sent ``lead`` seconds before a packet is due, each lead three
    times (in turn, one per bin)."""
    client.call("create", code="phase")
    sub = client.session("phase")
    topic = session_topic("phase", "packet")
    get = encode_request("get", {"code": "phase"})
    rtts = []
    for lead in leads * 3:
        _, msg = sub.wait(lambda t, m: t == topic, 2, "a packet")
        send_at = msg["data"]["scheduled_mono"] + 0.025 - lead
        if time.monotonic() > send_at - 0.002:
            continue              # this test client was late for this bin: take the next one
        _until(send_at)
        client.send_raw(get)
        rtts.append(time.monotonic() - send_at)
    return rtts


def _due_times(sub, codes: list[str], per_session: int) -> dict[str, list[dict]]:
    """Each session's next ``per_session`` packets (their data), from one subscriber."""
    got: dict[str, list[dict]] = {code: [] for code in codes}
    deadline = time.monotonic() + 10
    while any(len(v) < per_session for v in got.values()):
        left = deadline - time.monotonic()
        msg = sub.recv(left) if left > 0 else None
        assert msg is not None, f"packets missing: {[(k, len(v)) for k, v in got.items()]}"
        topic, body = msg
        code = topic.decode().split("/")[1]
        if topic.endswith(b"/packet") and code in got and len(got[code]) < per_session:
            got[code].append(body["data"])
    return got


def _grid_point(due: float, grid_s: float) -> int | None:
    """The grid point (mod 25 ms) a monotonic due time is on, None if it is not on the grid."""
    steps = due / grid_s
    return round(steps) % round(0.025 / grid_s) if abs(steps - round(steps)) < 1e-5 else None


@pytest.mark.parametrize("grid_ms", ["5", "0"])
def test_sessions_consumed_mid_playback_share_wake_up_points(start_broker, grid_ms):
    """Twelve sessions created back to back close their bins at twelve moments a few ms apart;
    once consumed (well after their first bin), they close them on the 5 ms grid, at most four to
    a point (so on at least three points), every packet still due when its bin closes and sent after that. With the grid off
    (PHANTOM_WAKE_GRID_MS=0) they keep their own phases."""
    c = BrokerClient(start_broker(PHANTOM_WAKE_GRID_MS=grid_ms).ready)
    try:
        codes = [f"g{i}" for i in range(12)]
        for code in codes:                         # back to back: their bins close close together
            c.call("create", code=code)
        wait_for(lambda: all(c.call("get", code=code)["current_packet"] >= 3 for code in codes),
                 5, "every session past its first bins")
        sub = c.subscribe(*(session_topic(code) for code in codes))
        got = _due_times(sub, codes, 6)
        points: dict[int, list[str]] = {}
        for code, packets in got.items():
            due = [p["scheduled_mono"] for p in packets[1:]]     # after the subscription took
            assert np.allclose(np.diff(due), 0.025, atol=1e-6), f"{code} is off its 25 ms period"
            assert np.all(np.diff([p["packet_id"] for p in packets]) == 1), f"{code} lost a bin"
            point = _grid_point(due[-1], 0.005)
            if grid_ms == "0":
                points.setdefault(point, []).append(code)
                continue
            assert point is not None, f"{code}'s bins close off the 5 ms grid: {due[-1]:.6f}"
            points.setdefault(point, []).append(code)
            for p in packets:
                assert p["sent_at"] >= p["scheduled_at"], f"{code} sent a bin before it closed"
        if grid_ms == "0":
            assert len(points.get(None, ())) >= 10, f"phases moved with the grid off: {points}"
            assert c.call("metrics")["wake_group_joins"] == 0
            return
        assert max(len(v) for v in points.values()) <= 4, f"a point holds more than 4: {points}"
        assert 3 <= len(points) <= 5, points          # 12 sessions, 4 to a point, 5 points
        assert c.call("metrics")["wake_group_joins"] == 12
    finally:
        c.close()


def test_a_session_consumed_in_its_first_bin_keeps_its_clock(client):
    """The first bin after create is never moved onto the grid: subscribed at once, a session at
    speed 0.1 (a 250 ms bin, a whole number of grid steps) sends its first packet when that bin
    closes, 250 ms after create."""
    before = time.monotonic()
    client.call("create", code="first", speed=0.1)
    sub = client.session("first")
    first = sub.packets("first", 1, timeout=3)[0]
    assert before + 0.25 <= first["scheduled_mono"] < before + 0.25 + 0.010
    assert client.call("metrics")["wake_group_joins"] == 0
