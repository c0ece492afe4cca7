"""Broker process lifecycle: limits, eviction, TTL, restart with saved sessions, bad input, start-up
failures and signals."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
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


def _may(code: str) -> bool:
    """Whether a process of this user may do ``code`` here (root, CAP_SYS_NICE, RLIMIT_RTPRIO)."""
    return subprocess.run([sys.executable, "-c", f"import os; {code}"]).returncode == 0


REALTIME_ALLOWED = _may("os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))")
NICE_ALLOWED = _may("os.nice(-10)")


def _policy(pid: int, tid: int | None = None) -> tuple[int, int, int]:
    """(scheduling policy, real-time priority, nice) of a thread, read from /proc."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[38]), int(fields[37]), int(fields[16])     # fields 41, 40, 19


def _policies(pid: int, prefix: str = "") -> set[tuple[int, int, int]]:
    """The distinct (policy, real-time priority, nice) of the threads named ``prefix``..."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().startswith(prefix):
                    out.add(_policy(pid, int(tid)))
        except FileNotFoundError:
            continue                                  # a thread that ended meanwhile
    return out


def test_default_priority_is_realtime_where_permitted_and_said(start_broker, clients):
    # PHANTOM_BROKER_PRIORITY unset = auto: SCHED_FIFO 10 where the user may, else nice -10 where
    # the user may, else normal; one line says which. Read from outside, in /proc.
    proc = start_broker()
    assert clients(proc).call("ping")["protocol"] == 1
    out = proc.output()
    if REALTIME_ALLOWED:
        assert "scheduling priority: realtime (SCHED_FIFO 10) (PHANTOM_BROKER_PRIORITY=auto: back " \
               "to nice -10 if the loop keeps a CPU 90% busy for 2 s)" in out, out
        # the loop's thread and ZeroMQ's, made after it (threads made while loading may differ)
        assert _policy(proc.popen.pid) == (os.SCHED_FIFO, 10, 0)
        assert _policies(proc.popen.pid, "ZMQbg/Reaper") == {(os.SCHED_FIFO, 10, 0)}
        # on one CPU with the loop, ZeroMQ's I/O thread one real-time level below it
        io = 9 if len(ALLOWED) >= 2 else 10
        assert _policies(proc.popen.pid, "ZMQbg/IO") == {(os.SCHED_FIFO, io, 0)}
    elif NICE_ALLOWED:
        assert "scheduling priority: high (nice -10) (PHANTOM_BROKER_PRIORITY=auto: real-time" in out
        assert _policy(proc.popen.pid) == (os.SCHED_OTHER, 0, -10)
    else:
        assert "scheduling priority: normal (PHANTOM_BROKER_PRIORITY=auto" in out
        assert _nice(proc.popen.pid) == 0
    assert "WARNING" not in out


@pytest.mark.skipif(not REALTIME_ALLOWED, reason="real-time scheduling is not permitted here")
def test_a_saturated_realtime_loop_goes_back_to_nice_and_says_so(start_broker, clients):
    # 10 sessions at speed 1000 ask for 400,000 packets/s: more than the loop can send, so it
    # never blocks. Under auto, a real-time loop must give the CPU back to other processes.
    proc = start_broker(PHANTOM_BROKER_CPU="none")
    c = clients(proc)
    assert _policy(proc.popen.pid) == (os.SCHED_FIFO, 10, 0)
    codes = [f"hot{i}" for i in range(10)]
    for code in codes:
        c.call("create", code=code, speed=1000.0)
    c.subscribe(*(session_topic(code, "packet") for code in codes))
    wait_for(lambda: _policy(proc.popen.pid) == (os.SCHED_OTHER, 0, -10)
             and _policies(proc.popen.pid, "ZMQbg") == {(os.SCHED_OTHER, 0, -10)}, 15,
             "the loop's and ZeroMQ's threads back to time-sharing at nice -10")
    assert (os.SCHED_FIFO, 10, 0) not in _policies(proc.popen.pid)
    # the line is logged once the threads are changed: wait for it to reach the pipe
    wait_for(lambda: "scheduling priority: realtime -> high (nice -10): the loop used "
             in proc.output(), 5, "the line saying so")
    out = proc.output()
    assert out.count("scheduling priority: realtime -> high") == 1
    assert c.call("ping")["protocol"] == 1            # and it goes on serving


def test_explicit_realtime_is_never_demoted(start_broker, clients):
    proc = start_broker(PHANTOM_BROKER_PRIORITY="realtime", PHANTOM_BROKER_CPU="none")
    c = clients(proc)
    if not REALTIME_ALLOWED:
        assert "cannot raise the scheduling priority to realtime" in proc.output()
        return
    for code in (f"hot{i}" for i in range(10)):
        c.call("create", code=code, speed=1000.0)
    c.subscribe(*(session_topic(f"hot{i}", "packet") for i in range(10)))
    wait_for(lambda: c.call("metrics")["sessions"]["hot0"]["packets_skipped"] > 0, 10,
             "the loop saturated (packets skipped as late)")
    deadline = time.monotonic() + 3.5                 # longer than the guard's 2 s window
    while time.monotonic() < deadline:
        assert _policy(proc.popen.pid) == (os.SCHED_FIFO, 10, 0)
        c.call("ping")
    assert "realtime -> high" not in proc.output()


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


# -- CPU placement (PHANTOM_BROKER_CPU, broker/placement.py), read from outside in /proc ----------
ALLOWED = sorted(os.sched_getaffinity(0))
two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="placement needs two CPUs")


def _cpu_list(text: str) -> frozenset[int]:
    """The CPUs of a /proc list such as ``0-1,3``."""
    cpus = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus)


def _thread_cpus(pid: int) -> dict[str, frozenset[int]]:
    """Each thread's name and id -> the CPUs it may run on."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        except FileNotFoundError:
            continue                              # a thread that ended meanwhile
        out[f"{fields['Name']}/{tid}"] = _cpu_list(fields["Cpus_allowed_list"])
    return out


def _heavy_load(c, codes: list[str]) -> None:
    """About 12,000 packets/s over ``codes`` (above the 10,000 at which the broker concentrates)."""
    for i, code in enumerate(codes):
        c.call("speed", code=code, speed=28 + 0.43 * i)


def _sessions(c, n: int = 10) -> list[str]:
    codes = [f"cpu{i}" for i in range(n)]
    for code in codes:
        c.call("create", code=code)
    c.subscribe(*(session_topic(code, "packet") for code in codes))
    return codes


@two_cpus
def test_a_time_shared_broker_is_on_one_cpu_only_while_the_load_is_heavy(start_broker, clients):
    proc = start_broker(PHANTOM_BROKER_PRIORITY="high")
    c = clients(proc)
    codes = _sessions(c)
    wait_for(lambda: c.call("metrics")["sessions"][codes[0]]["packets_sent"] > 10, 5, "packets")
    before = _thread_cpus(proc.popen.pid)
    assert any(name.startswith("ZMQbg/IO") for name in before), before    # libzmq's I/O thread
    assert set(before.values()) == {frozenset(ALLOWED)}, before           # 400 packets/s: free
    loop = _policy(proc.popen.pid)
    assert _policies(proc.popen.pid, "ZMQbg/IO") == {loop}
    _heavy_load(c, codes)

    def one_cpu():
        placed = set(_thread_cpus(proc.popen.pid).values())
        return len(placed) == 1 and len(next(iter(placed))) == 1
    wait_for(one_cpu, 10, "every broker thread on one and the same CPU")
    cpu = next(iter(set(_thread_cpus(proc.popen.pid).values())))
    assert c.call("metrics")["send_batching"] is True
    # sharing the CPU, ZeroMQ's I/O thread yields to the loop: one step below it
    policy, rt, nice = loop
    below = (policy, rt - 1, nice) if policy == os.SCHED_FIFO else (policy, rt, nice + 5)
    assert _policies(proc.popen.pid, "ZMQbg/IO") == {below}
    for code in codes:
        c.call("speed", code=code, speed=1.0)
    wait_for(lambda: set(_thread_cpus(proc.popen.pid).values()) == {frozenset(ALLOWED)}, 10,
             "the threads free to run on every allowed CPU again")
    if policy == os.SCHED_FIFO or nice < 0:   # restoring needs the privilege that raised the loop
        assert _policies(proc.popen.pid, "ZMQbg/IO") == {loop}
    out = proc.output()
    shown = f"SCHED_FIFO {rt - 1}" if policy == os.SCHED_FIFO else f"nice {nice + 5}"
    assert f"cpu: every thread on CPU {min(cpu)}, ZeroMQ's I/O at {shown}: " in out, out
    assert f"cpu: threads on any of {','.join(map(str, ALLOWED))} again" in out, out
    assert "cpu: on one CPU while real-time or above 10000 packets/s" in out
    assert "WARNING" not in out


def _one_cpu(pid: int) -> int | None:
    """The CPU every thread of the process is on, None if they may run on several."""
    placed = set(_thread_cpus(pid).values())
    return min(next(iter(placed))) if len(placed) == 1 and len(next(iter(placed))) == 1 else None


@two_cpus
@pytest.mark.skipif(not REALTIME_ALLOWED, reason="real-time scheduling is not permitted here")
def test_a_realtime_broker_keeps_its_threads_on_one_cpu_at_any_rate(start_broker, clients):
    proc = start_broker()                            # auto: real-time here
    c = clients(proc)
    codes = _sessions(c)
    wait_for(lambda: c.call("metrics")["sessions"][codes[0]]["packets_sent"] > 10, 5, "packets")
    cpu = _one_cpu(proc.popen.pid)
    assert cpu is not None, _thread_cpus(proc.popen.pid)
    assert _policies(proc.popen.pid, "ZMQbg/IO") == {(os.SCHED_FIFO, 9, 0)}
    _heavy_load(c, codes)
    wait_for(lambda: c.call("metrics")["send_batching"] is True, 10, "the heavy load measured")
    for code in codes:
        c.call("speed", code=code, speed=1.0)
    wait_for(lambda: c.call("metrics")["send_batching"] is False, 10, "the light load measured")
    assert _one_cpu(proc.popen.pid) == cpu
    out = proc.output()
    assert f"cpu: every thread on CPU {cpu}, ZeroMQ's I/O at SCHED_FIFO 9: a real-time loop" in out
    assert "again" not in out


@two_cpus
def test_cpu_none_never_concentrates_the_threads(start_broker, clients):
    proc = start_broker(PHANTOM_BROKER_CPU="none")
    c = clients(proc)
    _heavy_load(c, _sessions(c))
    wait_for(lambda: c.call("metrics")["send_batching"] is True, 10, "the heavy load measured")
    for _ in range(5):                           # the broker measures its rate every 0.1 s
        assert set(_thread_cpus(proc.popen.pid).values()) == {frozenset(ALLOWED)}
        c.call("ping")
    assert "cpu: threads placed by the kernel (PHANTOM_BROKER_CPU=none)" in proc.output()


def test_cpu_number_pins_every_thread_from_start(start_broker, clients):
    proc = start_broker(PHANTOM_BROKER_CPU=str(ALLOWED[0]))
    assert clients(proc).call("ping")["protocol"] == 1
    placed = _thread_cpus(proc.popen.pid)
    assert len(placed) >= 3 and set(placed.values()) == {frozenset({ALLOWED[0]})}, placed
    assert f"cpu: every thread on CPU {ALLOWED[0]} (PHANTOM_BROKER_CPU={ALLOWED[0]})" in proc.output()


def test_a_cpu_outside_the_allowed_set_is_reported_and_the_broker_runs(start_broker, clients):
    proc = start_broker(PHANTOM_BROKER_CPU="4095")
    assert clients(proc).call("ping")["protocol"] == 1
    assert set(_thread_cpus(proc.popen.pid).values()) == {frozenset(ALLOWED)}
    assert "PHANTOM_BROKER_CPU=4095 is not among the allowed CPUs" in proc.output()


def test_bad_cpu_setting_is_a_config_error(spawn):
    code, out = _start_failure(spawn, PHANTOM_BROKER_CPU="the fast one")
    assert code == 2 and "PHANTOM_BROKER_CPU" in out
