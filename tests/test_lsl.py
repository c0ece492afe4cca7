"""The LSL bridge against the real broker: real processes, real pylsl inlets in this process.

Every test gives its bridge a unique stream name prefix and source id, so runs on the same machine
(LSL discovery is machine-wide) never see each other's streams.
"""
from __future__ import annotations

import math
import os
import signal
import statistics
import time
import re
import uuid
from pathlib import Path

import pylsl
import pytest
from pylsl.util import LostError
import zmq

from broker_client import command
from processes import base_env, wait_for
from protocol import decode, encode, encode_ok

KINDS = ("Neural", "Kinematics", "Intention", "Markers")
EVENT_ORDER = ("trial_start", "target_on", "go_cue", "move_onset", "trial_end")


@pytest.fixture
def names():
    token = uuid.uuid4().hex[:8]
    return {"PHANTOM_LSL_STREAM_NAME": f"LslTest{token}", "PHANTOM_LSL_SOURCE_ID": f"lsltest-{token}"}


@pytest.fixture
def start_bridge(spawn, names):
    """Factory: `python -m bridges.lsl` on a broker's endpoints; waits for its READY line."""
    def start(broker=None, ready: bool = True, **env: str):
        endpoints = {} if broker is None else {"PHANTOM_PUB_ENDPOINT": broker.ready["pub"],
                                               "PHANTOM_CONTROL_ENDPOINT": broker.ready["control"]}
        proc = spawn("bridges.lsl", base_env(**{**names, **endpoints, **env}))
        if ready:
            proc.wait_ready(timeout=30)
        return proc
    return start


def stream_name(names, kind: str, code: str) -> str:
    return f"{names['PHANTOM_LSL_STREAM_NAME']}-{kind}-{code}"


def resolve(name: str, timeout: float = 15.0) -> pylsl.StreamInfo:
    found = pylsl.resolve_byprop("name", name, 1, timeout)
    assert found, f"no LSL stream named {name!r} within {timeout} s"
    return found[0]


def all_streams(names, kind: str = "", wait: float = 1.5) -> set[str]:
    """Names of this test's bridge's streams (of one kind, if given) that answer within ``wait`` s."""
    prefix = stream_name(names, kind, "") if kind else names["PHANTOM_LSL_STREAM_NAME"] + "-"
    found = pylsl.resolve_bypred(f"starts-with(name,'{prefix}')", 1000, wait)
    return {info.name() for info in found}


def inlet_for(info: pylsl.StreamInfo) -> pylsl.StreamInlet:
    inlet = pylsl.StreamInlet(info, max_buflen=60, recover=False)
    inlet.open_stream(10)
    return inlet


def pull(inlet: pylsl.StreamInlet, n: int, timeout: float = 15.0):
    """``n`` samples as (sample, timestamp, local_clock at pull); fails after ``timeout`` s."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {n} LSL samples within {timeout} s"
        sample, stamp = inlet.pull_sample(min(left, 1.0))
        if sample is not None:
            out.append((sample, stamp, pylsl.local_clock()))
    return out


def wait_lost(inlet: pylsl.StreamInlet, timeout: float = 10.0) -> None:
    """Wait until the inlet's outlet is gone (LostError); a re-resolve could take seconds more."""
    deadline = time.monotonic() + timeout
    with pytest.raises(LostError):
        while time.monotonic() < deadline:
            inlet.pull_sample(0.2)


def same(a: float, b: float | None) -> bool:
    return math.isnan(a) if b is None else math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-4)


def test_every_session_has_four_described_streams(broker, start_bridge, names):
    dataset = command(broker, "dataset")
    command(broker, "create", code="lsl-before", lsl=True)  # learned from `list` at start
    bridge = start_bridge(broker)
    assert bridge.ready["max_sessions"] == "32"
    command(broker, "create", code="lsl-after", lsl=True)   # learned from the `created` event
    rate = 1000.0 / dataset["bin_size_ms"]
    for code in ("lsl-before", "lsl-after"):
        infos = {kind: resolve(stream_name(names, kind, code)) for kind in KINDS}
        expected = {"Neural": ("EEG", dataset["num_channels"], rate, pylsl.cf_int32),
                    "Kinematics": ("Kinematics", 4, rate, pylsl.cf_float32),
                    "Intention": ("Intention", 4, rate, pylsl.cf_float32),
                    "Markers": ("Markers", 1, pylsl.IRREGULAR_RATE, pylsl.cf_string)}
        for kind, info in infos.items():
            got = (info.type(), info.channel_count(), info.nominal_srate(), info.channel_format())
            assert got == expected[kind], kind
            assert info.source_id() == f"{names['PHANTOM_LSL_SOURCE_ID']}-{kind.lower()}-{code}"

    inlet = inlet_for(resolve(stream_name(names, "Neural", "lsl-after")))
    desc = inlet.info(10).desc()
    channel = desc.child("channels").child("channel")
    labels, regions = [], []
    while not channel.empty():
        labels.append(channel.child_value("label"))
        regions.append(channel.child_value("region"))
        channel = channel.next_sibling()
    assert labels == [str(u) for u in dataset["unit_ids"]]
    assert regions == dataset["regions"]
    assert desc.child("binning").child_value("bin_width_ms") == str(dataset["bin_size_ms"])
    assert desc.child("binning").child_value("alignment") == "right"
    assert desc.child_value("session") == "lsl-after"
    # The bridge subscribes by name to the session whose outlet has a consumer, and only to it.
    wait_for(lambda: command(broker, "get", code="lsl-after")["subscribers"] == 1, 5,
             "the bridge subscribed to the consumed session")
    assert command(broker, "get", code="lsl-before")["subscribers"] == 0
    assert command(broker, "metrics")["wildcard_subscribers"] == 0
    inlet.close_stream()
    del inlet
    wait_for(lambda: command(broker, "get", code="lsl-after")["subscribers"] == 0, 10,
             "the bridge unsubscribed once the inlet left")


def stall(bridge, broker, code: str, bins: int) -> None:
    """Freeze the bridge (SIGSTOP) while the broker sends ``bins`` packets of ``code``."""
    first = command(broker, "get", code=code)["sequence_number"]
    os.kill(bridge.popen.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: command(broker, "get", code=code)["sequence_number"] >= first + bins,
                 10, f"{bins} packets sent while the bridge is stopped")
    finally:
        os.kill(bridge.popen.pid, signal.SIGCONT)


def require_clock_fields(broker) -> None:
    """Skip (saying why) when the broker predates contract 2's packet clock fields, which these
    tests check the bridge's timestamps against; they run as soon as the broker sends them."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(broker.ready["pub"])
    sub.setsockopt(zmq.SUBSCRIBE, b"session/lsl-probe/packet")
    try:
        assert sub.poll(10_000), "no packet of the probe session within 10 s"
        data = decode(sub.recv_multipart()[1])["data"]
    finally:
        sub.close()
        command(broker, "delete", code="lsl-probe")
    missing = {"scheduled_mono", "event_offsets_ms"} - set(data)
    if missing:
        pytest.skip(f"the broker sends no {', '.join(sorted(missing))} yet (contract 2)")


def test_samples_carry_each_packet_at_its_scheduled_time(broker, start_bridge, names):
    require_clock_fields(broker)
    bridge = start_bridge(broker)
    command(broker, "create", code="lsl-samples", lsl=True)
    inlets = {kind: inlet_for(resolve(stream_name(names, kind, "lsl-samples")))
              for kind in ("Neural", "Kinematics", "Intention")}
    # A side channel: the broker's own packets, to compare values and scheduled times with.
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(broker.ready["pub"])
    sub.setsockopt(zmq.SUBSCRIBE, b"session/lsl-samples/")
    try:
        messages = []
        wait_for(lambda: sub.poll(100) and messages.append(decode(sub.recv_multipart()[1]))
                 or messages, 10, "the side channel's first message")
        live = {kind: pull(inlet, 40) for kind, inlet in inlets.items()}
        # Packets the bridge catches up on after a stall reach it late, yet must keep their
        # scheduled times (stamping the time of arrival would bunch them up).
        stall(bridge, broker, "lsl-samples", bins=8)
        late = {kind: pull(inlet, 20) for kind, inlet in inlets.items()}
        while sub.poll(0):          # everything queued since the subscription took effect
            messages.append(decode(sub.recv_multipart()[1]))
        packets = [m["data"] for m in messages if m["type"] == "data"]
    finally:
        sub.close()

    for _, stamp, at in live["Neural"]:
        assert -0.001 < at - stamp < 0.25, (at, stamp)                   # LSL clock, barely late
    pulled = {kind: live[kind] + late[kind] for kind in live}
    stamps = [stamp for _, stamp, _ in pulled["Neural"]]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert abs(statistics.median(gaps) - 0.025) < 0.0005, gaps         # speed 1: 25 ms apart
    # On the 25 ms deadline grid: never bunched (a packet the broker skipped as too late would
    # leave a whole-bin gap).
    assert all(round(g / 0.025) >= 1 and abs(g - 0.025 * round(g / 0.025)) < 0.0005
               for g in gaps), gaps

    # Each sample's timestamp is its packet's scheduled_mono (the moment its bin closed, on
    # CLOCK_MONOTONIC, which is local_clock()'s), exactly: no detour through the wall clock.
    by_mono = {p["scheduled_mono"]: p for p in packets}

    def packet_at(stamp: float):
        return by_mono.get(stamp)

    matched = {kind: [(s, packet_at(t)) for s, t, _ in samples if packet_at(t) is not None]
               for kind, samples in pulled.items()}
    for kind, pairs in matched.items():
        assert len(pairs) >= 50, f"{kind}: only {len(pairs)} of 60 samples match a packet"
    for sample, packet in matched["Neural"]:
        assert sample == packet["spikes"]["spike_counts"]
    for sample, packet in matched["Kinematics"]:
        kin = packet["kinematics"]
        assert all(same(v, kin[k]) for v, k in zip(sample, ("vx", "vy", "x", "y"))), (sample, kin)
    for sample, packet in matched["Intention"]:
        intent = packet["intention"]
        ids = [-1 if v is None else v for v in (intent["target_id"], packet["trial_id"])]
        assert [sample[0], sample[3]] == ids
        assert same(sample[1], intent["target_x"]) and same(sample[2], intent["target_y"])


def test_markers_carry_a_trials_events_in_order(broker, start_bridge, names):
    require_clock_fields(broker)
    start_bridge(broker)
    trials = command(broker, "trials")["trials"]
    trial = next(t for t in trials[1:] if t["go_cue_time"] is not None
                 and t["move_onset_time"] is not None and t["target_on_time"] is not None)
    speed = 5.0
    command(broker, "create", code="lsl-marks", paused=True, speed=speed, lsl=True)
    markers = inlet_for(resolve(stream_name(names, "Markers", "lsl-marks")))
    # The bridge subscribes once it sees the consumer (within 0.1 s): play only after that.
    wait_for(lambda: command(broker, "get", code="lsl-marks")["subscribers"] == 1, 5,
             "the bridge subscribed to the consumed session")
    # trial_start falls in the bin holding start_time, which is before the trial's first bin.
    command(broker, "seek", code="lsl-marks", packet_id=max(0, trial["first_bin"] - 2))
    command(broker, "resume", code="lsl-marks")
    ours: list[tuple[str, float]] = []
    deadline = time.monotonic() + 20
    while not ours or ours[-1][0] != "trial_end":
        assert time.monotonic() < deadline, f"markers of trial {trial['trial_id']} so far: {ours}"
        sample, stamp = markers.pull_sample(1.0)
        if sample is not None and sample[0].endswith(f" trial={trial['trial_id']}"):
            ours.append((sample[0].split()[0], stamp))
    assert [name for name, _ in ours] == list(EVENT_ORDER)
    # Each marker carries its event's own time (not its bin's): the trial's own timing,
    # compressed by the speed, to the millisecond the recording gives its events in.
    at = dict(ours)
    for name, field in (("target_on", "target_on_time"), ("go_cue", "go_cue_time"),
                        ("move_onset", "move_onset_time"), ("trial_end", "stop_time")):
        expected = (trial[field] - trial["start_time"]) / speed
        assert abs((at[name] - at["trial_start"]) - expected) < 0.0002, name


def test_outlets_go_when_their_session_is_deleted(broker, start_bridge, names):
    bridge = start_bridge(broker)
    command(broker, "create", code="lsl-gone", lsl=True)
    command(broker, "create", code="lsl-stays", lsl=True)
    inlets = [inlet_for(resolve(stream_name(names, kind, "lsl-gone"))) for kind in KINDS[:3]]
    for inlet in inlets:
        pull(inlet, 1)      # connected for good (see docs/lsl.md, Known issues)
    resolve(stream_name(names, "Markers", "lsl-gone"))
    resolve(stream_name(names, "Neural", "lsl-stays"))
    command(broker, "delete", code="lsl-gone")
    bridge.wait_line("session lsl-gone no longer mirrored", timeout=10)
    for inlet in inlets:
        wait_lost(inlet)
    stays = {stream_name(names, kind, "lsl-stays") for kind in KINDS}
    wait_for(lambda: all_streams(names, wait=1.0) == stays, 15, "only lsl-stays' streams left")
    assert bridge.popen.poll() is None


def test_outlets_of_sessions_a_restarted_broker_lacks_go_without_an_event(
        broker, start_broker, start_bridge, names, tmp_path):
    bridge = start_bridge(broker)
    command(broker, "create", code="lsl-orphan", lsl=True)
    resolve(stream_name(names, "Neural", "lsl-orphan"))
    broker.stop(signal.SIGKILL)          # no `deleted` event can be sent
    # Same endpoints, no saved state: the broker comes back without lsl-orphan but with a new one.
    again = start_broker(PHANTOM_PUB_ENDPOINT=broker.ready["pub"],
                         PHANTOM_CONTROL_ENDPOINT=broker.ready["control"],
                         PHANTOM_STATE_PATH=str(tmp_path / "empty-state.json"))
    command(again, "create", code="lsl-after", lsl=True)
    bridge.wait_line("session lsl-orphan is gone from the broker", timeout=20)
    expected = {stream_name(names, kind, "lsl-after") for kind in KINDS}
    wait_for(lambda: all_streams(names, wait=1.0) == expected, 20, "only lsl-after's streams left")


def test_the_bound_on_mirrored_sessions_holds(broker, start_bridge, names):
    bridge = start_bridge(broker, PHANTOM_LSL_MAX_SESSIONS="2")
    assert bridge.ready["max_sessions"] == "2"
    for code in ("lsl-one", "lsl-two", "lsl-three"):
        command(broker, "create", code=code, lsl=True)
    bridge.wait_line("LSL bound reached", timeout=10)
    for code in ("lsl-one", "lsl-two"):
        resolve(stream_name(names, "Neural", code))
    assert all_streams(names, "Neural") == {stream_name(names, "Neural", c) for c in ("lsl-one", "lsl-two")}
    assert sum("LSL bound reached" in line for line in bridge.lines) == 1
    # A freed slot goes to the session that waited.
    command(broker, "delete", code="lsl-one")
    resolve(stream_name(names, "Neural", "lsl-three"))
    wait_for(lambda: all_streams(names, "Neural", 1.0) == {stream_name(names, "Neural", c)
                                                    for c in ("lsl-two", "lsl-three")},
             15, "lsl-one's streams to go and lsl-three's to stay")


def test_sigterm_destroys_outlets_and_exits_zero(broker, start_bridge, names):
    bridge = start_bridge(broker)
    command(broker, "create", code="lsl-end", lsl=True)
    inlet = inlet_for(resolve(stream_name(names, "Neural", "lsl-end")))
    assert bridge.stop() == 0
    assert "LSL bridge stopped: sockets closed" in bridge.output()
    wait_lost(inlet)


def test_waits_for_a_broker_that_starts_later(start_broker, start_bridge, names, tmp_path):
    endpoints = {"PHANTOM_PUB_ENDPOINT": f"ipc://{tmp_path}/pub",
                 "PHANTOM_CONTROL_ENDPOINT": f"ipc://{tmp_path}/control"}
    bridge = start_bridge(ready=False, PHANTOM_CONTROL_TIMEOUT_MS="200", **endpoints)
    bridge.wait_line("does not answer", timeout=15)
    broker = start_broker(**endpoints)
    bridge.wait_ready(timeout=30)
    assert sum("does not answer" in line for line in bridge.lines) == 1
    command(broker, "create", code="lsl-late", lsl=True)
    resolve(stream_name(names, "Neural", "lsl-late"))


def test_disabled_idles_until_sigterm(start_bridge, names):
    bridge = start_bridge(PHANTOM_LSL_ENABLED="false", PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:9",
                          PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:7")
    assert bridge.ready == {"enabled": "false"}
    assert "LSL is disabled" in bridge.output()
    assert bridge.popen.poll() is None
    assert bridge.stop() == 0


def test_bad_configuration_exits_2_naming_the_setting(start_bridge):
    bridge = start_bridge(ready=False, PHANTOM_LSL_MAX_SESSIONS="0")
    assert bridge.popen.wait(20) == 2
    bridge.wait_line("PHANTOM_LSL_MAX_SESSIONS", timeout=5)


def test_malformed_messages_are_logged_and_skipped(start_bridge, names):
    """The real broker never sends these, so this test is the broker: a REP and an XPUB of its own."""
    ctx = zmq.Context.instance()
    rep, pub = ctx.socket(zmq.REP), ctx.socket(zmq.XPUB)
    for sock in (rep, pub):
        sock.setsockopt(zmq.LINGER, 0)
    rep.bind("tcp://127.0.0.1:*")
    pub.bind("tcp://127.0.0.1:*")
    dataset = {"dataset": "fake", "source": "none", "bin_size_ms": 25, "num_channels": 3,
               "unit_ids": [1011, 2022, 1033], "regions": ["PMd", "M1", "PMd"]}
    answers = {"ping": {"uptime_s": 1.0, "sessions": 1}, "dataset": dataset, "trials": {"trials": []},
               "list": {"sessions": [{"code": "fake-a", "lsl": True, "speed": 1.0}]}}
    try:
        bridge = start_bridge(ready=False, PHANTOM_PUB_ENDPOINT=pub.last_endpoint.decode(),
                              PHANTOM_CONTROL_ENDPOINT=rep.last_endpoint.decode())
        subscriptions = set()
        deadline = time.monotonic() + 15
        while not subscriptions or answers:
            assert time.monotonic() < deadline and bridge.popen.poll() is None, bridge.output()
            if pub.poll(20):
                subscriptions.add(pub.recv())
            if rep.poll(20):
                rep.send(encode_ok(answers.pop(decode(rep.recv())["cmd"])))
        assert subscriptions == {b"\x01events/session"}       # never the wildcard session/
        bridge.wait_ready(10)
        # A consumer makes the bridge subscribe to fake-a by name.
        inlet = inlet_for(resolve(stream_name(names, "Neural", "fake-a")))
        assert pub.poll(5000) and pub.recv() == b"\x01session/fake-a/"
        good = {"timestamp": 0.0, "spikes": {"spike_counts": [1, 2, 3]},
                "kinematics": {"x": 1.0, "y": 2.0, "vx": None, "vy": 3.0},
                "intention": {"target_id": 1, "target_x": 5.0, "target_y": None},
                "trial_id": None, "events": [], "event_offsets_ms": [],
                "scheduled_at": time.time(), "scheduled_mono": time.monotonic()}
        bad = [
            [b"session/fake-a/packet"],
            [b"session/fake-a/packet", b"\xc1"],
            [b"session/fake-a/packet", encode({"type": "data", "data": {
                **good, "events": ["go_cue"], "event_offsets_ms": []}})],
            [b"session/fake-a/meta", encode({"type": "metadata", "data": {"session": {"speed": 0}}})],
            [b"events/session", encode([1, 2])],
            [b"events/session", encode({"type": "session_event", "event": "created",
                                        "session": {"code": "-bad-"}})],
            [b"events/session", encode({"type": "session_event", "event": "exploded",
                                        "session": {"code": "fake-a"}})],
            [b"session/fake-a/packet", encode({"type": "data", "data": {**good, "spikes": {
                "spike_counts": [1, 2]}}})],
            [b"session/fake-a/packet", encode({"type": "data", "data": {**good, "spikes": {
                "spike_counts": [1, 2, "x"]}}})],
            [b"session/fake-a/packet", encode({"type": "data", "data": {**good, "kinematics": {
                "x": "far"}}})],
        ]
        for frames in bad:
            pub.send_multipart(frames)
        wait_for(lambda: bridge.output().count("skipped a malformed message") >= len(bad), 10,
                 "one warning per malformed message")
        # Still serving: a well-formed packet of the session reaches its inlet unchanged.
        sample = None
        deadline = time.monotonic() + 10
        while sample is None:
            assert time.monotonic() < deadline, "the well-formed packet never arrived"
            pub.send_multipart([b"session/fake-a/packet", encode({"type": "data", "data": {
                **good, "scheduled_at": time.time(), "scheduled_mono": time.monotonic()}})])
            sample, _ = inlet.pull_sample(0.2)
        assert sample == [1, 2, 3]
        assert bridge.popen.poll() is None
    finally:
        rep.close()
        pub.close()


def test_local_clock_is_the_monotonic_clock_of_scheduled_mono():
    """What stamping samples with `scheduled_mono` rests on (Linux: both are CLOCK_MONOTONIC)."""
    gaps = []
    for _ in range(200):
        before = time.monotonic()
        lsl = pylsl.local_clock()
        after = time.monotonic()
        gaps.append(max(before - lsl, lsl - after))
    assert max(gaps) < 0.0005, max(gaps)


def test_only_sessions_with_the_lsl_flag_are_mirrored(broker, start_bridge, names):
    bridge = start_bridge(broker)
    command(broker, "create", code="lsl-flag-off")                 # over ZMQ: off by default
    command(broker, "create", code="lsl-flag-on", lsl=True)
    resolve(stream_name(names, "Neural", "lsl-flag-on"))
    assert all_streams(names, "Neural") == {stream_name(names, "Neural", "lsl-flag-on")}
    assert command(broker, "get", code="lsl-flag-off")["lsl"] is False
    # Switched on: mirrored; switched off: its outlets go.
    assert command(broker, "lsl", code="lsl-flag-off", enabled=True)["lsl"] is True
    resolve(stream_name(names, "Neural", "lsl-flag-off"))
    command(broker, "lsl", code="lsl-flag-on", enabled=False)
    bridge.wait_line("session lsl-flag-on no longer mirrored", timeout=10)
    wait_for(lambda: all_streams(names, "Neural", 1.0) == {stream_name(names, "Neural", "lsl-flag-off")},
             15, "only lsl-flag-off's Neural stream")


def test_auto_flag_is_on_while_under_the_bound_and_survives_a_restart(start_broker, tmp_path):
    state = str(tmp_path / "lsl-state.json")
    broker = start_broker(PHANTOM_LSL_MAX_SESSIONS="2", PHANTOM_STATE_PATH=state)
    flags = [command(broker, "create", code=f"lsl-auto-{i}", lsl="auto")["lsl"] for i in range(3)]
    assert flags == [True, True, False]
    command(broker, "lsl", code="lsl-auto-0", enabled=False)
    assert command(broker, "create", code="lsl-auto-3", lsl="auto")["lsl"] is True
    broker.stop()
    again = start_broker(PHANTOM_LSL_MAX_SESSIONS="2", PHANTOM_STATE_PATH=state)
    restored = {s["code"]: s["lsl"] for s in command(again, "list")["sessions"]}
    assert restored == {"lsl-auto-0": False, "lsl-auto-1": True, "lsl-auto-2": False,
                        "lsl-auto-3": True}


def test_a_consumed_outlet_keeps_its_session_alive(start_broker, start_bridge, names):
    broker = start_broker(PHANTOM_SESSION_TTL_S="3")
    start_bridge(broker)
    command(broker, "create", code="lsl-recorded", lsl=True)
    command(broker, "create", code="lsl-unwatched", lsl=True)
    inlet = inlet_for(resolve(stream_name(names, "Neural", "lsl-recorded")))
    pull(inlet, 1)
    # The broker expires idle sessions about once a second after the 3 s TTL.
    wait_for(lambda: "lsl-unwatched" not in {s["code"] for s in command(broker, "list")["sessions"]},
             15, "the unconsumed session to expire")
    pull(inlet, 40)                       # a second more of samples: still alive and streaming
    assert command(broker, "get", code="lsl-recorded")["subscribers"] == 1


def test_markers_announce_perturbations_at_their_packet(broker, start_bridge, names):
    """A gain change from packet 40 to 80: start and end markers at those packets' times."""
    start_bridge(broker)
    speed = 4.0
    command(broker, "create", code="lsl-pert", paused=True, speed=speed, lsl=True, perturbations=[
        {"kind": "gain", "id": "g1", "start_packet": 40, "end_packet": 80}])
    markers = inlet_for(resolve(stream_name(names, "Markers", "lsl-pert")))
    command(broker, "resume", code="lsl-pert")
    ours: dict[str, float] = {}
    deadline = time.monotonic() + 20
    while len(ours) < 2:
        assert time.monotonic() < deadline, f"perturbation markers so far: {ours}"
        sample, stamp = markers.pull_sample(1.0)
        if sample is not None and sample[0].startswith("perturbation_"):
            ours[sample[0]] = stamp
    assert set(ours) == {"perturbation_start id=g1", "perturbation_end id=g1"}
    gap = ours["perturbation_end id=g1"] - ours["perturbation_start id=g1"]
    assert abs(gap - 40 * 0.025 / speed) < 0.003, gap


def test_the_original_readmes_inlet_snippet_runs_as_docs_lsl_md_prints_it(broker, start_bridge):
    """docs/lsl.md gives the original README's pylsl snippet for pylsl >= 1.17 (resolve_byprop for
    the removed resolve_stream); run it as printed: it gets a Neural sample of every unit."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "lsl.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    assert "resolve_byprop('type', 'EEG')" in snippet
    command(broker, "create", code="lsl-readme", lsl=True)
    start_bridge(broker)
    scope: dict = {}
    exec(compile(snippet, "docs/lsl.md", "exec"), scope)   # noqa: S102 (the doc's own code)
    assert len(scope["sample"]) == command(broker, "dataset")["num_channels"]
    assert abs(scope["timestamp"] - pylsl.local_clock()) < 5
