"""Broker building blocks on a small in-memory recording: frames, noise, clock, registry, state."""
from __future__ import annotations

import json
import math
from pathlib import Path

import msgpack
import numpy as np
import pytest

from broker import state
from broker.frames import PacketEncoder, restamp
from broker.metrics import RING_SIZE, Stat
from broker.noise import PRESETS, from_saved, parse_noise
from broker.perturb.engine import Perturber, UnitStats
from broker.recording import Recording, Trial
from broker.registry import Registry
from broker.session import ENDED, PAUSED, PLAYING, Playlist, Session
from protocol import CommandError


def tiny_recording(n_bins: int = 40, n_units: int = 5) -> Recording:
    rng = np.random.default_rng(0)
    observed = np.zeros(n_bins, bool)
    trial_index = np.full(n_bins, -1, np.int32)
    trials = []
    for k, (a, b) in enumerate(((2, 12), (15, 25), (28, 38))):
        observed[a:b] = True
        trial_index[a:b] = k
        trials.append(Trial(trial_id=10 + k, start_time=a * 0.025, stop_time=b * 0.025, split="train",
                            first_bin=a, stop_bin=b, target_id=k % 2, target_x=1.0 * k, target_y=-1.0))
    nan2 = np.full((n_bins, 2), np.nan)
    cursor, velocity, target_pos = nan2.copy(), nan2.copy(), nan2.copy()
    cursor[observed] = rng.normal(size=(observed.sum(), 2))
    velocity[observed] = rng.normal(size=(observed.sum(), 2))
    target_pos[observed] = 3.0
    trial_time = np.full(n_bins, np.nan)
    for t in trials:
        trial_time[t.first_bin:t.stop_bin] = np.arange(t.stop_bin - t.first_bin) * 25.0
    return Recording(
        name="tiny", path=Path("tiny.nwb"), content_key="x", bin_ms=25, t0=0.0,
        unit_ids=np.array([1001, 1002, 2001, 2002, 2003][:n_units]), heldout=np.zeros(n_units, bool),
        counts=rng.poisson(2, size=(n_bins, n_units)).astype(np.uint8), observed=observed,
        trial_index=trial_index, trial_time_ms=trial_time, cursor=cursor, velocity=velocity,
        target_id=np.where(observed, trial_index % 2, -1).astype(np.int16), target_pos=target_pos,
        distance=np.where(observed, 1.5, np.nan), trials=tuple(trials),
        events={2: ("trial_start",), 11: ("trial_end",)},
        event_offsets_ms={2: (12.5,), 11: (0.0,)})


def test_spliced_packet_decodes_like_a_plain_dict():
    rec = tiny_recording()
    enc = PacketEncoder(rec)
    payload = enc.packet(enc.session_prefix("abc"), 5, 77, None, 100.5, 100.75, 7.25)
    msg = msgpack.unpackb(payload)
    assert msg["v"] == 1 and msg["type"] == "data" and msg["session"] == "abc"
    data = msg["data"]
    assert len(data) == 17
    assert data["perturbations"] == [] and data["duplicate"] is False
    assert data["packet_id"] == 5 and data["sequence_number"] == 77
    assert data["scheduled_at"] == 100.5 and data["sent_at"] == 100.75 and data["noise"] is False
    assert data["scheduled_mono"] == 7.25
    assert data["events"] == [] and data["event_offsets_ms"] == []
    assert data["spikes"] == {"spike_counts": rec.counts[5].tolist(), "bin_size_ms": 25}
    assert data["trial_id"] == 10 and data["observed"] is True
    assert data["kinematics"]["x"] == rec.cursor[5, 0]
    gap = msgpack.unpackb(enc.packet(enc.session_prefix("abc"), 0, 0, None, 0.0, 0.0, 0.0))["data"]
    assert gap["trial_id"] is None and gap["kinematics"] == {"x": None, "y": None, "vx": None, "vy": None}
    assert gap["intention"]["target_id"] is None and gap["trial_time_ms"] is None
    started = msgpack.unpackb(enc.packet(enc.session_prefix("abc"), 2, 0, None, 0, 0, 0))["data"]
    assert started["events"] == ["trial_start"] and started["event_offsets_ms"] == [12.5]
    noisy = enc.spikes_fragment([9, 9, 9, 9, 9])
    data = msgpack.unpackb(enc.packet(enc.session_prefix("abc"), 5, 1, noisy, 0.0, 0.0, 0.0))["data"]
    assert data["noise"] is True and data["spikes"]["spike_counts"] == [9] * 5
    marked = enc.packet(enc.session_prefix("abc"), 5, 1, None, 1.0, 2.0, 9.5,
                        perturbations=("drop-0", "noise-1"))
    assert msgpack.unpackb(marked)["data"]["perturbations"] == ["drop-0", "noise-1"]
    copy = msgpack.unpackb(restamp(marked, 3.5, duplicate=True))["data"]
    assert copy["duplicate"] is True and copy["sent_at"] == 3.5 and copy["scheduled_at"] == 1.0
    assert copy["scheduled_mono"] == 9.5
    assert copy["sequence_number"] == 1 and copy["perturbations"] == ["drop-0", "noise-1"]
    held = msgpack.unpackb(restamp(marked, 4.0))["data"]
    assert held["duplicate"] is False and held["sent_at"] == 4.0


def legacy_engine(rec: Recording, settings, code: str = "abc") -> Perturber:
    return Perturber(code, UnitStats.of(rec.counts, rec.observed), rec.n_bins, rec.bin_ms,
                     rec.trial_index, rec.observed, [(settings.seed, settings.items())])


def test_noise_is_seeded_non_negative_and_parsed_strictly():
    rec = tiny_recording()
    rec.counts[5] = [0, 1, 2, 5, 40]
    settings = parse_noise({"preset": "extreme", "seed": 42})
    assert (settings.noise_std, settings.drift_amplitude) == PRESETS["extreme"]
    engine = legacy_engine(rec, settings)
    a = engine.counts(5, rec.counts[5]).tolist()
    assert a == legacy_engine(rec, settings).counts(5, rec.counts[5]).tolist()
    assert a != legacy_engine(rec, parse_noise({"preset": "extreme", "seed": 43})).counts(5, rec.counts[5]).tolist()
    assert all(isinstance(v, int) and v >= 0 for v in a) and a[0] == 0   # zero stays zero
    assert engine.active(5) == ("legacy-noise", "legacy-drift")
    assert engine.counts(0, rec.counts[0]) is None                       # a gap: not measured
    off = parse_noise({"noise_std": 1.0, "drift_amplitude": 0.5, "enable_noise": False, "enable_drift": False})
    assert not off.active and off.items() == []
    drift_only = parse_noise({"drift_amplitude": 0.5, "drift_period_seconds": 1.0, "seed": 1})
    rec.counts[10] = 10                      # t = 0.25 s: slow sine at its crest, fast one at 0: x1.5 +- 5 %
    quarter = [legacy_engine(rec, drift_only, f"s{k}").counts(10, rec.counts[10]).tolist() for k in range(40)]
    assert all(14 <= v <= 16 for row in quarter for v in row)
    assert abs(np.mean(quarter) - 15.0) < 0.3
    assert parse_noise(None) is None and parse_noise(False) is None
    assert isinstance(parse_noise("light").seed, int)
    assert from_saved(settings.to_dict()) == settings
    for bad, code in (("loud", "bad_request"), ({"noise_std": -0.1}, "out_of_range"),
                      ({"drift_amplitude": 1.5}, "out_of_range"), ({"seed": -1}, "out_of_range"),
                      ({"noise_std": "x"}, "bad_request"), ({"enable_noise": 1}, "bad_request"),
                      ({"what": 1}, "bad_request"), (7, "bad_request"), ({"noise_std": math.nan}, "out_of_range")):
        with pytest.raises(CommandError) as info:
            parse_noise(bad)
        assert info.value.code.value == code, bad


def _session(size=100, **kw) -> Session:
    return Session("s", Playlist(size), 25, ordinal=0, now=1000.0, **kw)


def test_clock_deadlines_sync_and_reanchor():
    s = _session(speed=2.0)
    assert s.interval == 0.0125 and s.anchor_mono == 1000.0     # the playback clock starts now
    assert s.deadline(0) == pytest.approx(1000.0125)            # bin 0 is due when it closes
    assert s.deadline(10) == pytest.approx(1000.1375)
    s.sync(1000.0 + 0.0125 * 9.5)                               # bins 0..8 have closed
    assert s.next_tick == 9 and s.current_packet() == 9
    s.sync(1000.0 + 0.0125 * 10)                                # bin 9 closes exactly now
    assert s.next_tick == 10 and s.current_packet() == 10
    s.pause(1000.2)
    assert s.state == PAUSED
    s.sync(1010.0)
    assert s.next_tick == 10                                    # paused: the clock stands still
    s.resume(1010.0)
    assert s.state == PLAYING and s.deadline(10) == pytest.approx(1010.0125)
    s.seek(1010.0, 50)
    assert s.current_packet() == 50 and s.next_tick == 10       # sequence numbers keep counting
    s.set_speed(1010.0, 1.0)
    assert s.interval == 0.025 and s.current_packet() == 50


def test_clock_wraps_when_looping_and_ends_otherwise():
    s = _session(size=10)
    s.sync(1000.0 + 0.025 * 15.5)
    assert s.next_tick == 15 and s.current_packet() == 5
    s.set_loop(1000.0 + 0.025 * 15.5, False)
    assert s.deadline(15) == pytest.approx(1000.0 + 0.025 * 16)  # a loop change keeps the grid
    s.sync(1000.0 + 100)
    assert s.state == ENDED and s.current_packet() == 10
    s.resume(1100.0)
    assert s.state == PLAYING and s.current_packet() == 0


def test_stat_ring_is_bounded_and_p99_tracks_recent_values():
    stat = Stat()
    for i in range(RING_SIZE * 3):
        stat.add(1.0 if i < RING_SIZE else 0.001)
    assert len(stat.ring) == RING_SIZE
    summary = stat.summary_ms()
    assert summary["max"] == 1000.0 and summary["p99"] == 1.0 and summary["count"] == RING_SIZE * 3


def test_registry_playlists_eviction_and_ttl():
    reg = Registry(tiny_recording(), max_sessions=2, ttl_s=10)
    by_target = reg.playlist({"target_id": 0})
    assert list(by_target.ids) == list(range(2, 12)) + list(range(28, 38))
    assert by_target.position_of(20) == 10 and by_target.position_of(39) == 0
    assert reg.playlist({"trial_id": 11}).size == 10
    assert reg.playlist({}) is reg.full and reg.playlist(None) is reg.full
    for bad in ({"trial_id": 99}, {"target_id": 7}):
        with pytest.raises(CommandError, match="no trial"):
            reg.playlist(bad)
    for i, code in enumerate(("a", "b")):
        s = Session(code, reg.full, 25, ordinal=i, now=0.0)
        s.last_accessed = 100.0 + i
        reg.add(s)
    reg.set_subscription("a", b"session/a/", True)
    assert reg.make_room().code == "b"                          # "a" has a subscriber
    reg.add(Session("c", reg.full, 25, ordinal=3, now=0.0))
    for _ in range(2):                                          # a repeated report changes nothing
        assert reg.set_subscription("c", b"session/c/", True) == 1
    assert reg.set_subscription("c", b"session/c/packet", True) == 2
    with pytest.raises(CommandError) as info:
        reg.make_room()
    assert info.value.code.value == "limit"
    reg.set_subscription("c", b"session/c/", False)
    assert reg.sessions["c"].subscribers == 1
    reg.set_subscription("c", b"session/c/packet", False)
    assert reg.sessions["c"].subscribers == 0 and "c" not in reg.subscriptions
    reg.sessions["c"].last_accessed = 0.0
    assert [s.code for s in reg.expired(now_wall=50.0)] == ["c"]
    code = reg.new_code()
    assert len(code.split("-")) == 3


def _entry(**changes):
    entry = {"code": "a", "created_at": 1.0, "last_accessed": 2.0, "anchor_wall": 3.0, "speed": 1.0,
             "state": "playing", "loop": True, "next_tick": 5, "anchor_tick": 5, "anchor_pos": 7,
             "packets_sent": 5, "packets_skipped": 0, "filter": None, "noise": None}
    entry.update(changes)
    return entry


def test_state_file_round_trip_and_corruption(tmp_path):
    path = tmp_path / "deep" / "state.json"
    state.write(path, state.assemble([state.serialise_session(_entry())], {"name": "tiny"}))
    snapshot = state.read(path)
    assert snapshot.entries == [_entry()] and snapshot.dataset == {"name": "tiny"}
    assert json.loads(path.read_text())["version"] == 2
    assert not list(path.parent.glob(".*.tmp"))
    path.write_text("{not json")
    with pytest.raises(state.StateFileError, match="not JSON"):
        state.read(path)
    assert state.read(tmp_path / "absent.json") is None


@pytest.mark.parametrize("change, field", [
    ({"code": None}, "code"), ({"code": "Bad Code"}, "code"), ({"speed": math.inf}, "speed"),
    ({"created_at": "yesterday"}, "created_at"), ({"next_tick": -1}, "next_tick"),
    ({"next_tick": 2 ** 60}, "next_tick"), ({"anchor_pos": 1.5}, "anchor_pos"),
    ({"loop": 1}, "loop"), ({"state": "running"}, "state"), ({"filter": [1]}, "filter"),
    ({"packets_sent": True}, "packets_sent")])
def test_every_hostile_entry_is_rejected_with_its_field(change, field):
    with pytest.raises(ValueError, match=field):
        state.parse_entry(_entry(**change))


def test_a_missing_field_is_rejected():
    entry = _entry()
    del entry["anchor_wall"]
    with pytest.raises(ValueError, match="anchor_wall is missing"):
        state.parse_entry(entry)
    assert state.parse_entry(_entry()) == _entry()


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError):
        state.write(blocker / "state.json", "{}")           # its directory is a file
    target = tmp_path / "dir-instead"
    (target / "x").mkdir(parents=True)
    with pytest.raises(OSError):
        state.write(target, "{}")                           # rename over a non-empty directory
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_a_handler_bug_becomes_an_internal_error_reply(monkeypatch, caplog, tmp_path):
    from broker.handlers import HANDLERS
    from broker.server import Broker
    from protocol import encode_request, parse_reply
    from protocol.config import load_config

    def broken(b, args):
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(HANDLERS, "ping", broken)
    b = Broker(load_config({}, state_path=tmp_path / "s.json"), tiny_recording())
    with pytest.raises(CommandError) as info:
        parse_reply(b.handle_request([encode_request("ping")]))
    assert info.value.code.value == "internal" and "boom" in info.value.message
    assert "internal error in command ping" in caplog.text
    assert parse_reply(b.handle_request([encode_request("dataset")]))["dataset"] == "tiny"


def test_an_incremental_reply_decodes_like_the_whole_result():
    from broker.replies import Incremental
    from protocol import parse_reply
    items = [{"code": f"s{i}", "n": i} for i in range(40)]          # > 16: array16/map16 headers
    total = {"sum": 0}

    def piece(item):
        total["sum"] += item["n"]
        return msgpack.packb(item["code"]) + msgpack.packb(item)
    reply = Incremental({"fixed": 1, "nested": {"a": [1]}}, "sessions", items, piece,
                        lambda: dict(total), 1, as_map=True)
    assert reply.advance(0.0) is None                              # one piece per call at least
    done = None
    while done is None:
        done = reply.advance(float("inf"))
    assert parse_reply(done) == {"fixed": 1, "nested": {"a": [1]}, "sum": sum(range(40)),
                                 "sessions": {i["code"]: i for i in items}}
    as_list = Incremental({}, "sessions", [], msgpack.packb, dict, 0).advance(float("inf"))
    assert parse_reply(as_list) == {"sessions": []}


def test_wake_groups_hold_four_to_a_point_and_members_leave_by_themselves():
    from broker.wakegroups import GROUP_SIZE, WakeGroups
    current: dict[str, Session] = {}
    groups = WakeGroups(0.005, lambda s: current.get(s.code) is s)

    def consumed(code: str, now: float) -> Session:
        s = Session(code, Playlist(1000), 25, ordinal=0, now=1000.0011)   # off the grid
        current[code] = s
        s.sync(now)                          # played unwatched up to now
        s.published = True
        return s

    first = [consumed(f"a{i}", 1000.2) for i in range(GROUP_SIZE + 1)]
    natural = first[0].deadline(first[0].next_tick)
    shifts = [groups.join(s) for s in first]
    due = [s.deadline(s.next_tick) for s in first]
    assert all(0 <= d - natural < 0.025 for d in due)            # later, by under a bin period
    assert shifts[0] == pytest.approx(1000.205 - natural)        # the next grid point after it
    assert due[:GROUP_SIZE] == pytest.approx([1000.205] * GROUP_SIZE)
    assert due[GROUP_SIZE] == pytest.approx(1000.210)            # that point was full: the next
    first[0].pause(1000.21)                  # paused (its clock moved): it left its group
    current.pop(first[1].code)               # deleted: so did it
    first[2].published = False               # unsubscribed: so did it
    late = [consumed(f"b{i}", 1000.2) for i in range(4)]
    for s in late:
        groups.join(s)
    assert [s.deadline(s.next_tick) for s in late] == pytest.approx([1000.205] * 3 + [1000.210])
    fresh = Session("c", Playlist(1000), 25, ordinal=0, now=1000.2011)
    fresh.published = True                   # consumed in its first bin: keeps its clock
    assert groups.join(fresh) == 0.0 and fresh.anchor_mono == 1000.2011
    off = Session("d", Playlist(1000), 25, ordinal=0, now=1000.0011, speed=3.0)
    off.sync(1000.2)
    off.published = True                     # an 8.33 ms period is not a whole number of steps
    assert groups.join(off) == 0.0
    assert groups.joined == GROUP_SIZE + 1 + 4


def test_wake_groups_pruning_keeps_other_periods_members(monkeypatch):
    """Dropping keys with no live member (past MAX_KEYS) judges each key by its own period."""
    from broker import wakegroups
    monkeypatch.setattr(wakegroups, "MAX_KEYS", 1)
    groups = wakegroups.WakeGroups(0.005, lambda s: True)

    def consumed(code: str, speed: float) -> Session:
        s = Session(code, Playlist(1000), 25, ordinal=0, now=1000.0011, speed=speed)
        s.sync(1000.4)
        s.published = True
        return s

    slow = [consumed(f"h{i}", 0.5) for i in range(2)]      # a 50 ms period: 10 points
    for s in slow:
        groups.join(s)
    fast = consumed("f", 1.0)
    groups.join(fast)                                      # two keys now: pruning runs next
    groups.join(consumed("g", 1.0))
    assert [s for key, ms in groups.members.items() if key[0] == 50_000_000 for s in ms] == slow
