"""Playback commands against a real broker: pause, resume, seek, speed, loop, filter, noise."""
from __future__ import annotations

import numpy as np
import pytest

from broker_client import BrokerClient
from protocol import CommandError
from protocol.wire import session_topic


@pytest.fixture
def broker(start_broker):
    return start_broker()          # the default late-skip


@pytest.fixture
def client(broker):
    c = BrokerClient(broker.ready)
    yield c
    c.close()


def _error(client, cmd, **args) -> str:
    with pytest.raises(CommandError) as info:
        client.call(cmd, **args)
    return info.value.code.value


def test_pause_freezes_and_resume_continues(client):
    client.call("create", code="pp", speed=4)
    sub = client.session("pp")
    before = sub.packets("pp", 5)
    paused = client.call("pause", code="pp")
    assert paused["state"] == "paused"
    # packets sent before the pause reply may still be in flight: drain, then expect silence
    sub.silent(session_topic("pp", "packet"), 0.2)          # drain packets sent before the pause
    assert sub.silent(session_topic("pp", "packet"), 0.3)
    frozen = client.call("get", code="pp")
    assert frozen["current_packet"] == paused["current_packet"]
    resumed = client.call("resume", code="pp")
    assert resumed["state"] == "playing"
    after = sub.packets("pp", 3)
    assert after[0]["packet_id"] == frozen["current_packet"]
    assert after[0]["sequence_number"] == frozen["sequence_number"]
    assert after[0]["sequence_number"] > before[-1]["sequence_number"]


def test_seek_moves_to_the_packet(client):
    client.call("create", code="sk", speed=2)
    sub = client.session("sk")
    client.call("pause", code="sk")
    assert client.call("seek", code="sk", packet_id=5000)["current_packet"] == 5000
    client.call("resume", code="sk")
    packet = sub.wait(lambda t, m: t == session_topic("sk", "packet") and m["data"]["packet_id"] >= 5000,
                      3, "packet after seek")[1]["data"]
    assert packet["packet_id"] == 5000
    # seek while playing: the stream jumps straight there
    client.call("seek", code="sk", packet_id=100)
    packet = sub.wait(lambda t, m: t == session_topic("sk", "packet") and m["data"]["packet_id"] < 5000,
                      3, "packet after the second seek")[1]["data"]
    assert packet["packet_id"] == 100
    total = client.call("dataset")["total_packets"]
    assert _error(client, "seek", code="sk", packet_id=total) == "out_of_range"
    assert _error(client, "seek", code="sk", packet_id=-1) == "out_of_range"


def test_speed_changes_the_interval_while_playing(client):
    client.call("create", code="spd")
    sub = client.session("spd")
    client.call("speed", code="spd", speed=4)
    packets = sub.wait(lambda t, m: t == session_topic("spd", "packet") and m["data"]["scheduled_at"] > 0, 3)
    packets = sub.packets("spd", 20)
    gaps = np.diff([p["scheduled_at"] for p in packets])
    assert np.allclose(gaps, 0.025 / 4, atol=1e-6)
    assert client.call("get", code="spd")["speed"] == 4
    for bad in (0, 0.05, 1000.5, -1):
        assert _error(client, "speed", code="spd", speed=bad) == "out_of_range"
    assert _error(client, "speed", code="spd", speed="fast") == "bad_request"
    assert _error(client, "create", speed=0.01) == "out_of_range"


def test_loop_off_ends_and_loop_on_wraps(client):
    total = client.call("dataset")["total_packets"]
    client.call("create", code="lp", speed=10, paused=True)
    sub = client.session("lp")
    client.call("seek", code="lp", packet_id=total - 3)
    client.call("resume", code="lp")
    wrapped = sub.packets("lp", 5)
    assert [p["packet_id"] for p in wrapped] == [total - 3, total - 2, total - 1, 0, 1]
    client.call("loop", code="lp", loop=False)
    client.call("seek", code="lp", packet_id=total - 3)
    sub.wait(lambda t, m: t == session_topic("lp", "meta") and m["data"]["session"]["state"] == "ended",
             5, "meta saying ended")
    ended = client.call("get", code="lp")
    assert ended["loop"] is False and ended["current_packet"] == total
    assert sub.silent(session_topic("lp", "packet"), 0.2)
    restarted = client.call("resume", code="lp")
    assert restarted["state"] == "playing" and restarted["current_packet"] == 0


def test_filter_by_trial_and_target(client):
    trials = client.call("trials")["trials"]
    trial = trials[3]
    client.call("create", code="flt", speed=50, filter={"trial_id": trial["trial_id"]})
    sub = client.session("flt")
    span = trial["stop_bin"] - trial["first_bin"]
    packets = sub.packets("flt", span + 3)
    assert {p["trial_id"] for p in packets} == {trial["trial_id"]}
    ids = [p["packet_id"] for p in packets]
    # the trial's bins in order, looping; each packet's bin follows from its sequence number,
    # whether or not late packets were skipped (and counted) in between
    cycle = list(range(trial["first_bin"], trial["stop_bin"]))
    seqs = [p["sequence_number"] for p in packets]
    start = cycle.index(ids[0])
    assert ids == [cycle[(start + s - seqs[0]) % span] for s in seqs]
    missing = seqs[-1] - seqs[0] + 1 - len(seqs)
    assert missing <= client.call("get", code="flt")["packets_skipped"]
    target = trials[0]["target_id"]
    same_target = {t["trial_id"] for t in trials if t["target_id"] == target}
    view = client.call("filter", code="flt", target_id=target)
    assert view["filter"] == {"target_id": target}
    assert view["playlist_packets"] == sum(t["stop_bin"] - t["first_bin"] for t in trials
                                           if t["target_id"] == target)
    sub.wait(lambda t, m: t == session_topic("flt", "meta") and m["data"]["session"]["filter"], 3)
    packets = sub.packets("flt", 200)
    assert {p["trial_id"] for p in packets} <= same_target
    assert len({p["trial_id"] for p in packets}) > 1, "trials are played back to back"
    cleared = client.call("filter", code="flt")
    assert cleared["filter"] is None and cleared["playlist_packets"] == cleared["total_packets"]
    assert _error(client, "filter", code="flt", trial_id=10**6) == "not_found"
    assert _error(client, "filter", code="flt", target_id=10**6) == "not_found"
    assert _error(client, "filter", code="flt", target_id=0, trial_id=0) == "bad_request"
    assert _error(client, "create", filter={"trial_id": 10**6}) == "not_found"
    assert _error(client, "create", filter={"colour": 1}) == "bad_request"


def _noisy_packets(client, code: str, count: int = 40) -> dict[int, list[int]]:
    client.call("create", code=code, paused=True, noise={"preset": "extreme", "seed": 1234})
    sub = client.session(code)
    client.call("resume", code=code)
    packets = sub.packets(code, count)
    sub.close()
    for p in packets:
        assert p["noise"] is p["observed"]           # bins outside trials are not measured
        assert all(isinstance(c, int) and c >= 0 for c in p["spikes"]["spike_counts"])
    return {p["packet_id"]: p["spikes"]["spike_counts"] for p in packets}


def test_noise_presets_and_seeded_reproducibility(client):
    """Same seed and session code: the same packets; another session draws other noise."""
    a = _noisy_packets(client, "noisy-a")
    client.call("delete", code="noisy-a")
    again = _noisy_packets(client, "noisy-a")
    common = set(a) & set(again)
    assert common and all(a[i] == again[i] for i in common)
    b = _noisy_packets(client, "noisy-b")
    common = set(a) & set(b)
    assert common and any(a[i] != b[i] for i in common)
    view = client.call("noise", code="noisy-a", noise="light")
    assert view["noise"]["noise_std"] == 0.2 and view["noise"]["drift_amplitude"] == 0.1
    assert isinstance(view["noise"]["seed"], int)
    assert client.call("noise", code="noisy-a", noise=None)["noise"] is None
    assert client.call("noise", code="noisy-a", noise=False)["noise"] is None
    custom = client.call("noise", code="noisy-a", noise={"noise_std": 0.7, "enable_drift": False})
    assert custom["noise"]["noise_std"] == 0.7 and custom["noise"]["enable_drift"] is False
    assert _error(client, "noise", code="noisy-a", noise="deafening") == "bad_request"
    assert _error(client, "noise", code="noisy-a", noise={"noise_std": -1}) == "out_of_range"
    assert _error(client, "noise", code="noisy-a", noise={"volume": 1}) == "bad_request"
    assert _error(client, "noise", code="noisy-a", noise=3) == "bad_request"
    assert _error(client, "noise", code="noisy-a", noise=True) == "bad_request"
    assert _error(client, "create", noise="deafening") == "bad_request"


def test_noise_off_matches_the_recording(client):
    client.call("create", code="clean", paused=True)
    client.call("create", code="dirty", paused=True, noise={"noise_std": 1.0, "seed": 7})
    subs = {c: client.session(c) for c in ("clean", "dirty")}
    for code in subs:
        client.call("resume", code=code)
    clean = {p["packet_id"]: p["spikes"]["spike_counts"] for p in subs["clean"].packets("clean", 20)}
    dirty = {p["packet_id"]: p["spikes"]["spike_counts"] for p in subs["dirty"].packets("dirty", 20)}
    common = set(clean) & set(dirty)
    assert common
    assert any(clean[i] != dirty[i] for i in common)


def test_create_get_list_delete(client):
    auto = client.call("create")
    code = auto["code"]
    parts = code.split("-")
    assert len(parts) == 3 and parts[2].isdigit()
    assert auto["state"] == "playing" and auto["loop"] is True and auto["speed"] == 1
    custom = client.call("create", code="my-experiment-1", speed=2.5, loop=False, paused=True)
    assert custom["code"] == "my-experiment-1" and custom["state"] == "paused"
    assert custom["speed"] == 2.5 and custom["loop"] is False
    codes = {s["code"] for s in client.call("list")["sessions"]}
    assert codes == {code, "my-experiment-1"}
    assert client.call("get", code=code)["code"] == code
    assert client.call("delete", code=code) == {"code": code, "deleted": True}
    assert _error(client, "get", code=code) == "not_found"
    assert _error(client, "create", code="my-experiment-1") == "conflict"
    for bad in ("Upper", "-dash", "dash-", "a" * 65, "sp ace", ""):
        assert _error(client, "create", code=bad) == "bad_request"


def test_trials_and_trial(client):
    everything = client.call("trials")
    assert everything["total_trials"] == len(everything["trials"]) > 0
    first = everything["trials"][0]
    assert client.call("trial", trial_id=first["trial_id"])["trial_id"] == first["trial_id"]
    target = first["target_id"]
    by_target = client.call("trials", target_id=target)["trials"]
    assert by_target and all(t["target_id"] == target for t in by_target)
    assert _error(client, "trial", trial_id=10**6) == "not_found"
    assert _error(client, "trials", target_id=10**6) == "not_found"
    assert _error(client, "trial") == "bad_request"


def test_every_session_command_answers_not_found(client):
    for cmd, extra in (("get", {}), ("delete", {}), ("pause", {}), ("resume", {}),
                       ("seek", {"packet_id": 0}), ("speed", {"speed": 1}), ("loop", {"loop": True}),
                       ("filter", {}), ("noise", {"noise": None})):
        assert _error(client, cmd, code="ghost", **extra) == "not_found", cmd
        assert _error(client, cmd, **extra) == "bad_request", cmd
        assert _error(client, cmd, code=5, **extra) == "bad_request", cmd
        assert _error(client, cmd, code="ghost", bogus=1, **extra) == "bad_request", cmd


def test_metrics_shape(client):
    client.call("create", code="measured", speed=10)
    sub = client.session("measured")
    sub.packets("measured", 20)
    m = client.call("metrics")
    assert m["total_sessions"] == 1 and m["active_sessions"] == 1 and m["total_connections"] == 1
    s = m["sessions"]["measured"]
    assert s["packets_sent"] >= 20 and s["dropped_packets"] == 0
    assert s["is_running"] is True and s["is_paused"] is False and s["connections"] == 1
    for key in ("network_latency_ms", "timing_error_ms"):
        assert set(s[key]) >= {"mean", "std", "max", "p99"}
        assert 0 <= s[key]["mean"] <= s[key]["max"]
    assert s["memory_usage_mb"] > 0
    assert m["process"]["rss_mb"] > 10 and m["process"]["cpu_seconds"] > 0


def test_every_command_rejects_unknown_and_mistyped_arguments(client):
    from protocol import COMMANDS
    samples = {"int": "x", "number": "x", "str": 1, "bool": 1, "map": 1, "noise": 1, "lsl": "on",
               "perturbations": "x"}
    for name, command in COMMANDS.items():
        assert _error(client, name, bogus=1) == "bad_request", name
        for arg, spec in command.args.items():
            assert _error(client, name, **{arg: samples[spec.type]}) == "bad_request", (name, arg)
