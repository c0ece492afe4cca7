"""Broker process lifecycle: limits, eviction, TTL, restart with saved sessions, bad input, start-up
failures and signals."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from processes import base_env, wait_for
from protocol import CommandError
from protocol.wire import session_topic


def _code(exc_info) -> str:
    return exc_info.value.code.value


def test_limit_evicts_the_least_recently_used_idle_session(start_broker, clients):
    c = clients(start_broker(PHANTOM_MAX_SESSIONS="3", PHANTOM_EVICT_GRACE_S="0.001"))
    c.call("create", code="old")
    c.call("create", code="mid")
    c.session("busy")                        # auto-created, has a subscriber
    c.call("get", code="old")                # touch: now mid is the least recently used
    c.call("create", code="new")
    codes = {s["code"] for s in c.call("list")["sessions"]}
    assert codes == {"old", "busy", "new"}


def test_limit_error_when_every_session_is_busy(start_broker, clients):
    c = clients(start_broker(PHANTOM_MAX_SESSIONS="2"))
    c.session("one")
    c.session("two")
    with pytest.raises(CommandError) as info:
        c.call("create", code="three")
    assert _code(info) == "limit"
    # a subscription cannot create it either; the broker keeps streaming the others
    extra = c.subscribe(session_topic("three"))
    assert extra.silent(session_topic("three", "meta"), 0.3)
    assert c.subs[0].packets("one", 3)
    assert {s["code"] for s in c.call("list")["sessions"]} == {"one", "two"}


def test_idle_sessions_expire_after_the_ttl(start_broker, clients):
    c = clients(start_broker(PHANTOM_SESSION_TTL_S="1"))
    c.call("create", code="idle")
    c.session("watched")
    wait_for(lambda: {s["code"] for s in c.call("list")["sessions"]} == {"watched"}, 5,
             "the idle session to expire by itself")
    assert c.call("cleanup") == {"removed": []}
    assert c.call("get", code="watched")["subscribers"] == 1


def test_cleanup_removes_expired_sessions(start_broker, clients, tmp_path):
    # A state file whose session was last used long ago: cleanup (or the housekeeping that may
    # run first) removes it, for the TTL.
    state = tmp_path / "old-state.json"
    proc = start_broker(PHANTOM_STATE_PATH=str(state))
    clients(proc).call("create", code="ancient", paused=True)
    assert proc.stop(signal.SIGTERM) == 0
    data = json.loads(state.read_text())
    data["sessions"][0]["last_accessed"] = 2.0
    state.write_text(json.dumps(data))
    second = start_broker(PHANTOM_STATE_PATH=str(state), PHANTOM_SESSION_TTL_S="3600")
    c = clients(second)
    c.call("cleanup")
    assert c.call("list")["sessions"] == []
    assert "session ancient deleted: idle for more than 3600 s (TTL)" in second.output()


def test_restart_restores_sessions(start_broker, clients, tmp_path):
    state = str(tmp_path / "state.json")
    first = start_broker(PHANTOM_STATE_PATH=state)
    c = clients(first)
    trial = c.call("trials")["trials"][2]["trial_id"]
    c.call("create", code="kept", speed=3, loop=False, paused=True, perturbations={"seed": 5, "items": [
        {"kind": "dropout", "id": "d", "fraction": 0.2, "start_s": 60, "ramp_s": 30, "mode": "noise"},
        {"kind": "latency", "delay_ms": 3}]})
    c.call("seek", code="kept", packet_id=4321)
    c.call("create", code="filtered", filter={"trial_id": trial}, noise={"preset": "moderate", "seed": 99})
    c.call("create", code="running", speed=2)
    before = {s["code"]: s for s in c.call("list")["sessions"]}
    assert first.stop(signal.SIGTERM) == 0
    assert "broker stopped" in first.output()
    saved = json.loads(Path(state).read_text())
    assert {s["code"] for s in saved["sessions"]} == {"kept", "filtered", "running"}

    c2 = clients(start_broker(PHANTOM_STATE_PATH=state))
    after = {s["code"]: s for s in c2.call("list")["sessions"]}
    assert set(after) == set(before)
    kept = after["kept"]
    assert (kept["state"], kept["speed"], kept["loop"], kept["current_packet"]) == ("paused", 3, False, 4321)
    assert kept["perturbations"] == before["kept"]["perturbations"]        # schedule, seed and active ids
    assert kept["perturbations"]["active"] == ["d", "latency-1"]
    assert after["filtered"]["filter"] == {"trial_id": trial}
    assert after["filtered"]["noise"]["seed"] == 99 and after["filtered"]["noise"]["noise_std"] == 0.5
    assert after["running"]["state"] == "playing" and after["running"]["speed"] == 2
    assert after["running"]["current_packet"] >= before["running"]["current_packet"]
    assert after["running"]["sequence_number"] > before["running"]["sequence_number"]
    assert after["kept"]["sequence_number"] > before["kept"]["sequence_number"]   # never reused
    assert after["kept"]["restored"]["sequence_saved"] == before["kept"]["sequence_number"]


def test_garbage_on_the_command_socket_never_stops_the_stream(start_broker, clients):
    broker = start_broker()
    c = clients(broker)
    c.call("create", code="steady")
    sub = c.session("steady")
    cases = {
        b"\xc1not msgpack": "bad_request",
        msgpack.packb([1, 2, 3]): "bad_request",
        msgpack.packb({"v": 1, "cmd": 5}): "bad_request",
        msgpack.packb({"v": 1, "cmd": "ping", "args": [1]}): "bad_request",
        msgpack.packb({"v": 99, "cmd": "ping"}): "unsupported_version",
        msgpack.packb({"v": 1, "cmd": "launch"}): "unknown_command",
        msgpack.packb({"v": 1, "cmd": "seek", "args": {"code": "steady", "packet_id": 1.5}}): "bad_request",
        msgpack.packb({"v": 1, "cmd": "create", "args": {"speed": True}}): "bad_request",
        msgpack.packb({"v": 1, "cmd": "ping", "args": {}, "x": "y" * 200_000}): "bad_request",
        b"": "bad_request",
    }
    for frame, code in cases.items():
        reply = c.send_raw(frame)
        assert reply["ok"] is False and reply["error"]["code"] == code, (frame[:40], reply)
        assert reply["error"]["message"]
    reply = c.send_raw(msgpack.packb({"v": 1, "cmd": "ping"}), b"second frame")
    assert reply["error"]["code"] == "bad_request"
    # a raw TCP client writing junk is dropped by ZeroMQ without disturbing anyone
    host, port = broker.ready["control"].rsplit("/", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" * 100)
    packets = sub.packets("steady", 10, timeout=3)
    seqs = [p["sequence_number"] for p in packets]
    missing = seqs[-1] - seqs[0] + 1 - len(seqs)      # only late packets the broker counted
    assert missing <= c.call("get", code="steady")["packets_skipped"]
    assert c.call("ping")["sessions"] == 1


def test_sigint_exits_zero_and_saves(start_broker, clients, tmp_path):
    state = tmp_path / "s.json"
    proc = start_broker(PHANTOM_STATE_PATH=str(state))
    clients(proc).call("create", code="saved-on-exit")
    assert proc.stop(signal.SIGINT) == 0
    assert "saved-on-exit" in state.read_text()


def _start_failure(spawn, **env) -> tuple[int, str]:
    settings = {"PHANTOM_PUB_ENDPOINT": "tcp://127.0.0.1:*",
                "PHANTOM_CONTROL_ENDPOINT": "tcp://127.0.0.1:*", **env}
    proc = spawn("broker", base_env(**settings))
    code = proc.popen.wait(60)
    proc._reader.join(5)
    return code, proc.output()


def test_bad_config_exits_2_with_one_line(spawn):
    code, out = _start_failure(spawn, PHANTOM_MAX_SESSIONS="lots", PHANTOM_NO_SUCH="1")
    assert code == 2
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "PHANTOM_MAX_SESSIONS" in lines[0] and "PHANTOM_NO_SUCH" in lines[0]


def test_missing_dataset_exits_1(spawn, tmp_path):
    code, out = _start_failure(spawn, PHANTOM_DATA_PATH=str(tmp_path / "nope.nwb"))
    assert code == 1
    assert "nope.nwb" in out and "READY" not in out


def test_endpoint_in_use_exits_1(broker, spawn):
    code, out = _start_failure(spawn, PHANTOM_PUB_ENDPOINT=broker.ready["pub"])
    assert code == 1
    assert "cannot bind" in out and "READY" not in out


def test_priority_setting_is_applied_or_reported(start_broker, clients):
    # can a process of this user raise its priority here? (root, or CAP_SYS_NICE)
    allowed = subprocess.run([sys.executable, "-c", "import os; os.nice(-10)"]).returncode == 0
    proc = start_broker(PHANTOM_BROKER_PRIORITY="high")
    expected = "scheduling priority: high" if allowed else "cannot raise the scheduling priority"
    assert expected in proc.output(), proc.output()
    assert clients(proc).call("ping")["protocol"] == 1


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])     # field 19: nice


def test_default_priority_is_raised_where_permitted_and_said(start_broker, clients):
    # PHANTOM_BROKER_PRIORITY unset = auto: nice -10 where the user may (root or CAP_SYS_NICE),
    # normal otherwise; one line says which. Read from outside, in /proc.
    allowed = subprocess.run([sys.executable, "-c", "import os; os.nice(-10)"]).returncode == 0
    proc = start_broker()
    assert clients(proc).call("ping")["protocol"] == 1
    if allowed:
        assert "scheduling priority: high (nice -10) (PHANTOM_BROKER_PRIORITY=auto)" in proc.output()
        assert _nice(proc.popen.pid) == -10
    else:
        assert "scheduling priority: normal (PHANTOM_BROKER_PRIORITY=auto" in proc.output()
        assert _nice(proc.popen.pid) == 0
    assert "WARNING" not in proc.output()


def test_normal_priority_leaves_the_broker_alone(start_broker, clients):
    proc = start_broker(PHANTOM_BROKER_PRIORITY="normal")
    assert clients(proc).call("ping")["protocol"] == 1
    assert _nice(proc.popen.pid) == 0 and "scheduling priority" not in proc.output()


def test_bad_priority_is_a_config_error(spawn):
    code, out = _start_failure(spawn, PHANTOM_BROKER_PRIORITY="ludicrous")
    assert code == 2 and "PHANTOM_BROKER_PRIORITY" in out


def test_late_packets_are_skipped_and_counted(start_broker, clients):
    # A bound of 1 us makes almost every packet "late": they must be skipped, counted, and leave
    # gaps in the sequence numbers, never be sent in a bunch.
    c = clients(start_broker(PHANTOM_LATE_SKIP_MS="0.001"))
    sub = c.session("late")                      # created by the subscription: published from tick 0
    wait_for(lambda: c.call("get", code="late")["packets_skipped"] >= 20, 5, "20 skipped packets")
    c.call("pause", code="late")
    view = c.call("get", code="late")
    assert view["sequence_number"] == view["packets_sent"] + view["packets_skipped"]
    assert c.call("metrics")["sessions"]["late"]["dropped_packets"] == view["packets_skipped"]
    received = []
    while (got := sub.recv(0.2)) is not None:
        if got[0] == session_topic("late", "packet"):
            received.append(got[1]["data"]["sequence_number"])
    assert len(received) == view["packets_sent"]
    assert len(received) < view["sequence_number"]
