"""WebSocket bridge: real broker and bridge processes, real WebSocket clients (simple-websocket).

Most tests share one broker and one bridge (module scope) and use their own session codes; tests
that stop or misconfigure a bridge start their own. Every wait has a deadline.
"""
from __future__ import annotations

import base64
import json
import os
import selectors
import signal
import socket
import time
import urllib.request

import msgpack
import pytest
import simple_websocket
import zmq

from broker_client import command
from protocol import CommandError
from processes import Proc, base_env, wait_for

BUFFER = 128    # PHANTOM_WS_BUFFER_PACKETS of the shared bridge: 160 ms of slack at 800 Hz


# -- processes -------------------------------------------------------------------------------
def broker_env(tmp_path, **env: str) -> dict[str, str]:
    return base_env(PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*",
                    PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                    PHANTOM_STATE_PATH=str(tmp_path / "broker-state.json"), **env)


def bridge_env(broker: Proc, **env: str) -> dict[str, str]:
    return base_env(PHANTOM_PUB_ENDPOINT=broker.ready["pub"],
                    PHANTOM_CONTROL_ENDPOINT=broker.ready["control"], PHANTOM_WS_PORT="0", **env)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(broker, bridge) shared by the module's tests."""
    procs: list[Proc] = []
    try:
        broker = Proc.module("broker", broker_env(tmp_path_factory.mktemp("ws")))
        procs.append(broker)
        broker.wait_ready(60)
        bridge = Proc.module("bridges.ws", bridge_env(broker, PHANTOM_WS_BUFFER_PACKETS=str(BUFFER)))
        procs.append(bridge)
        bridge.wait_ready(30)
        yield broker, bridge
    finally:
        for proc in reversed(procs):
            proc.stop()


@pytest.fixture
def broker(stack) -> Proc:
    return stack[0]


@pytest.fixture
def bridge(stack) -> Proc:
    return stack[1]


def health(bridge: Proc) -> dict:
    with urllib.request.urlopen(bridge.ready["health"], timeout=5) as reply:
        return json.load(reply)


# -- clients ---------------------------------------------------------------------------------
class Client(simple_websocket.Client):
    """simple-websocket's client, processing the frames that arrive together with the 101 response.

    The original leaves them in wsproto's buffer until more data comes, so a close frame sent right
    after the handshake, followed by the end of the connection, would read as 1005 (no status).
    """

    def handshake(self) -> None:
        super().handshake()
        self._handle_events()
        self.connected = True       # the reader thread then sees the end of a closed connection


class Stream:
    """A WebSocket client of the bridge that decodes what it receives; every receive has a deadline."""

    def __init__(self, bridge: Proc, path: str, fmt: str = "msgpack"):
        self.ws = Client.connect(bridge.ready["url"] + with_metadata(path))
        self.fmt = fmt

    def message(self, timeout: float = 5.0) -> dict:
        frame = self.ws.receive(timeout=timeout)
        assert frame is not None, f"nothing received within {timeout} s"
        if self.fmt == "json":
            assert isinstance(frame, str), "JSON streams send text frames"
            return json.loads(frame)
        assert isinstance(frame, bytes), "msgpack streams send binary frames"
        return msgpack.unpackb(frame)

    def data(self, timeout: float = 5.0) -> dict:
        """The next packet's `data` (metadata repeated by the broker is skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.message(max(0.01, deadline - time.monotonic()))
            if msg["type"] == "data":
                return msg["data"]

    def no_data_for(self, seconds: float) -> list[dict]:
        """Packets received during ``seconds`` (should be none); returns them."""
        got, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            frame = self.ws.receive(timeout=left)
            if frame is not None and msgpack.unpackb(frame)["type"] == "data":
                got.append(msgpack.unpackb(frame)["data"])
        return got

    def close_code(self, timeout: float = 5.0) -> tuple[int, str]:
        """The close code and reason the bridge closes this connection with."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.ws.receive(timeout=0.1)
        except simple_websocket.ConnectionClosed as exc:
            return int(exc.reason), exc.message or ""
        raise AssertionError(f"the bridge did not close the connection within {timeout} s")

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:       # already closed by the bridge: nothing left to do
            pass


def with_metadata(path: str) -> str:
    """``path`` asking for the metadata messages, which a URL without ``?format=`` omits."""
    if "format=" in path or path.startswith("/stream/binary/"):
        return path
    return path + ("&" if "?" in path else "?") + "metadata=true"


def stalled_client(bridge: Proc, path: str, source: str | None = None) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads (from the local
    address ``source`` if given: any 127.x.y.z reaches the bridge, which then tells it apart)."""
    host, port = bridge.ready["url"].removeprefix("ws://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    if source is not None:
        sock.bind((source, 0))
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {with_metadata(path)} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    return sock


def parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete (opcode, payload) frames at the start of ``buf``, removed from it; fails on a
    malformed frame (the bridge sends single, unmasked frames only)."""
    out, pos = [], 0
    while len(buf) - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        assert b0 & 0x80 and not b1 & 0x80, f"fragmented or masked frame: {bytes(buf[pos:pos + 2])!r}"
        length, head = b1 & 0x7F, 2
        if length >= 126:
            size = 2 if length == 126 else 8
            if len(buf) - pos < 2 + size:
                break
            length, head = int.from_bytes(buf[pos + 2:pos + 2 + size], "big"), 2 + size
        if len(buf) - pos < head + length:
            break
        out.append((b0 & 0x0F, bytes(buf[pos + head:pos + head + length])))
        pos += head + length
    del buf[:pos]
    return out


def read_frames(sock: socket.socket, buf: bytearray, count: int, timeout: float) -> list[dict]:
    """The next ``count`` binary frames of a raw client, decoded."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(1 << 16)
        assert chunk, "the bridge closed the connection"
        buf.extend(chunk)
        for opcode, payload in parse_frames(buf):
            assert opcode == 2, f"unexpected opcode {opcode}"
            got.append(msgpack.unpackb(payload))
    return got


def assert_no_loss(broker: Proc, code: str, seqs: list[int]) -> None:
    """Sequence numbers increase by one, except where the broker itself skipped packets that were
    too late (it does on an overloaded machine, and counts them): the bridge loses none."""
    assert seqs == sorted(set(seqs)), f"out of order or repeated: {seqs}"
    missing = seqs[-1] - seqs[0] + 1 - len(seqs)
    if missing:
        skipped = command(broker, "get", code=code)["packets_skipped"]
        assert missing <= skipped, f"{missing} packets missing, the broker skipped only {skipped}"


def subscribers(broker: Proc, code: str) -> int:
    return command(broker, "get", code=code)["subscribers"]


# -- streaming -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_metadata_first_then_continuous_packets(broker, bridge, fmt):
    code = f"ws-first-{fmt}"
    stream = Stream(bridge, f"/stream/{code}" + ("?format=json" if fmt == "json" else ""), fmt)
    try:
        first = stream.message()
        assert first["type"] == "metadata"
        assert first["data"]["session"]["code"] == code
        assert first["data"]["num_channels"] == len(first["data"]["unit_ids"]) > 0
        packets = [stream.data() for _ in range(40)]
    finally:
        stream.close()
    assert_no_loss(broker, code, [p["sequence_number"] for p in packets])
    ids = [p["packet_id"] for p in packets]
    assert ids == sorted(ids) and ids[-1] - ids[0] == packets[-1]["sequence_number"] - packets[0]["sequence_number"]
    assert all(len(p["spikes"]["spike_counts"]) == first["data"]["num_channels"] for p in packets)
    assert {"x", "y", "vx", "vy"} <= set(packets[0]["kinematics"])
    assert {"target_id", "target_x", "target_y", "distance_to_target"} <= set(packets[0]["intention"])


def test_json_maps_nil_to_null(bridge):
    stream = Stream(bridge, "/stream/ws-json-null?format=json", "json")
    try:
        text = stream.ws.receive(timeout=5)
    finally:
        stream.close()
    assert isinstance(text, str) and '"filter":null' in text      # no filter: nil on the wire


def test_binary_frames_are_the_brokers_bytes(broker, bridge):
    code = "ws-bytes"
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(broker.ready["pub"])
    sub.setsockopt(zmq.SUBSCRIBE, f"session/{code}/packet".encode())
    stream = Stream(bridge, f"/stream/binary/{code}")
    try:
        assert stream.message()["type"] == "metadata"
        from_ws = {}
        while len(from_ws) < 10:
            frame = stream.ws.receive(timeout=5)
            assert frame is not None
            message = msgpack.unpackb(frame)
            if message["type"] == "data":       # (metadata again when the side channel joins)
                from_ws[message["data"]["sequence_number"]] = frame
        from_zmq = {}
        while not set(from_ws) <= set(from_zmq):
            assert sub.poll(5000), "no packet on the broker's SUB"
            payload = sub.recv_multipart()[1]
            from_zmq[msgpack.unpackb(payload)["data"]["sequence_number"]] = payload
    finally:
        stream.close()
        sub.close()
    assert all(from_ws[seq] == from_zmq[seq] for seq in from_ws)


def test_pause_stops_packets_and_resume_restarts_them(broker, bridge):
    code = "ws-pause"
    stream = Stream(bridge, f"/stream/{code}")
    try:
        stream.data()
        paused = command(broker, "pause", code=code)
        assert paused["state"] == "paused"
        late = [p for p in stream.no_data_for(0.5) if p["sequence_number"] >= paused["sequence_number"]]
        assert late == [], "packets kept coming after pause"
        resumed = command(broker, "resume", code=code)
        packet = stream.data(timeout=2)
        assert packet["sequence_number"] >= resumed["sequence_number"]
    finally:
        stream.close()


def test_seek_moves_packet_ids(broker, bridge):
    code = "ws-seek"
    stream = Stream(bridge, f"/stream/{code}")
    try:
        assert stream.data()["packet_id"] < 1000
        command(broker, "seek", code=code, packet_id=5000)
        deadline = time.monotonic() + 3
        packet = stream.data()
        while packet["packet_id"] < 5000 and time.monotonic() < deadline:
            packet = stream.data()
        following = [stream.data()["packet_id"] for _ in range(5)]
    finally:
        stream.close()
    assert packet["packet_id"] == 5000
    assert following == list(range(5001, 5006))


def test_two_sessions_are_isolated(broker, bridge):
    a, b = Stream(bridge, "/stream/ws-iso-a"), Stream(bridge, "/stream/ws-iso-a2")
    try:
        assert a.message()["data"]["session"]["code"] == "ws-iso-a"
        assert b.message()["data"]["session"]["code"] == "ws-iso-a2"
        a.data()
        b.data()
        paused = command(broker, "pause", code="ws-iso-a")
        b_packets = [b.data(timeout=2) for _ in range(10)]          # b keeps playing
        a_late = [p for p in a.no_data_for(0.3) if p["sequence_number"] >= paused["sequence_number"]]
    finally:
        a.close()
        b.close()
    assert a_late == []
    assert_no_loss(broker, "ws-iso-a2", [p["sequence_number"] for p in b_packets])


def test_packets_carry_their_session(bridge):
    stream = Stream(bridge, "/stream/ws-mine")
    try:
        stream.message()
        frames = [msgpack.unpackb(stream.ws.receive(timeout=5)) for _ in range(5)]
    finally:
        stream.close()
    assert {f["session"] for f in frames} == {"ws-mine"}


# -- filters ---------------------------------------------------------------------------------
def test_target_filter_plays_only_that_targets_trials(broker, bridge):
    trials = command(broker, "trials", target_id=1)["trials"]
    allowed = {t["trial_id"] for t in trials}
    assert allowed
    stream = Stream(bridge, "/stream/ws-target?target_id=1")
    try:
        meta = stream.message()
        assert meta["type"] == "metadata" and meta["data"]["session"]["filter"] == {"target_id": 1}
        packets = [stream.data() for _ in range(20)]
    finally:
        stream.close()
    assert {p["trial_id"] for p in packets} <= allowed
    assert {p["intention"]["target_id"] for p in packets} <= {1, None}


def test_trial_filter_plays_only_that_trial(broker, bridge):
    stream = Stream(bridge, "/stream/ws-trial?trial_id=5")
    try:
        packets = [stream.data() for _ in range(20)]
    finally:
        stream.close()
    assert {p["trial_id"] for p in packets} == {5}
    assert command(broker, "get", code="ws-trial")["filter"] == {"trial_id": 5}


def test_conflicting_filter_is_refused_and_same_or_no_filter_joins(broker, bridge):
    first = Stream(bridge, "/stream/ws-conflict?target_id=1")
    try:
        first.data()
        other = Stream(bridge, "/stream/ws-conflict?target_id=2")
        code, reason = other.close_code()
        assert code == 4409 and "in use" in reason
        same = Stream(bridge, "/stream/ws-conflict?target_id=1")
        plain = Stream(bridge, "/stream/ws-conflict")
        allowed = {t["trial_id"] for t in command(broker, "trials", target_id=1)["trials"]}
        assert same.data()["trial_id"] in allowed
        assert plain.message()["data"]["session"]["filter"] == {"target_id": 1}
        same.close()
        plain.close()
    finally:
        first.close()


def test_filter_on_an_idle_session_changes_it(broker, bridge):
    command(broker, "create", code="ws-refilter")
    command(broker, "filter", code="ws-refilter", target_id=0)
    stream = Stream(bridge, "/stream/ws-refilter?trial_id=3")
    try:
        assert stream.message()["data"]["session"]["filter"] == {"trial_id": 3}
    finally:
        stream.close()


@pytest.mark.parametrize("path, close_code", [
    ("/stream/Bad_Code", 4400),
    ("/stream/-dash", 4400),
    ("/stream/" + "a" * 65, 4400),
    ("/stream/ws-q?format=xml", 4400),
    ("/stream/ws-q?target_id=abc", 4400),
    ("/stream/ws-q?target_id=1&trial_id=2", 4400),
    ("/stream/ws-q?color=red", 4400),
    ("/stream/binary/ws-q?format=json", 4400),
    ("/stream/ws-q?target_id=999", 4404),
    ("/stream/ws-q?trial_id=99999", 4404),
])
def test_bad_requests_close_with_documented_codes(broker, bridge, path, close_code):
    stream = Stream(bridge, path)
    code, reason = stream.close_code()
    assert code == close_code and reason
    # A refused connection leaves nothing behind: no session was created for it.
    with pytest.raises(CommandError, match="not_found"):
        command(broker, "get", code="ws-q")


def test_a_refused_filter_conflict_creates_no_session_and_changes_nothing(broker, bridge):
    first = Stream(bridge, "/stream/ws-busy?target_id=1")
    try:
        first.data()
        before = command(broker, "get", code="ws-busy")
        other = Stream(bridge, "/stream/ws-busy?trial_id=3")
        assert other.close_code()[0] == 4409
        after = command(broker, "get", code="ws-busy")
    finally:
        first.close()
    assert before["filter"] == after["filter"] == {"target_id": 1}
    assert [s["code"] for s in command(broker, "list")["sessions"]].count("ws-busy") == 1


def test_connecting_creates_the_session(broker, bridge):
    with pytest.raises(Exception, match="not_found"):
        command(broker, "get", code="ws-fresh")
    stream = Stream(bridge, "/stream/ws-fresh")
    try:
        stream.data()
        assert command(broker, "get", code="ws-fresh")["code"] == "ws-fresh"
    finally:
        stream.close()


def test_deleted_session_closes_its_clients(broker, bridge):
    stream = Stream(bridge, "/stream/ws-doomed")
    stream.data()
    command(broker, "delete", code="ws-doomed")
    code, reason = stream.close_code()
    assert code == 4410 and "deleted" in reason


# -- subscriber counts, slow clients, health -------------------------------------------------
def test_disconnects_unsubscribe(broker, bridge):
    code = "ws-count"
    a, b = Stream(bridge, f"/stream/{code}"), Stream(bridge, f"/stream/{code}")
    a.data()
    b.data()
    wait_for(lambda: subscribers(broker, code) == 2, 5, "two subscribers")
    assert health(bridge)["sessions"].get(code) == 2
    a.close()
    wait_for(lambda: subscribers(broker, code) == 1, 5, "one subscriber after a disconnect")
    b.close()
    wait_for(lambda: subscribers(broker, code) == 0, 5, "no subscriber after both left")
    wait_for(lambda: code not in health(bridge)["sessions"], 5, "bridge forgets the clients")


def test_clients_keep_every_packet_when_the_first_client_leaves(broker, bridge):
    # The first client's socket carries the session's packets for the others; when it leaves,
    # another client's socket takes over without losing packets or miscounting subscribers.
    code = "ws-handover"
    first = Stream(bridge, f"/stream/{code}")
    first.data()
    second, third = Stream(bridge, f"/stream/{code}"), Stream(bridge, f"/stream/{code}")
    try:
        seen = {id(s): [s.data()["sequence_number"] for _ in range(5)] for s in (second, third)}
        # the broker counts distinct prefixes (the carrier's session/<code>/, the others' meta)
        wait_for(lambda: health(bridge)["sessions"].get(code) == 3, 5, "three clients")
        assert subscribers(broker, code) == 2
        first.close()
        for s in (second, third):
            seen[id(s)] += [s.data()["sequence_number"] for _ in range(20)]
        wait_for(lambda: health(bridge)["sessions"].get(code) == 2, 5, "two clients after the first left")
        wait_for(lambda: subscribers(broker, code) == 2, 5, "both prefixes still held")
        second.close()
        seen[id(third)] += [third.data()["sequence_number"] for _ in range(20)]
        wait_for(lambda: subscribers(broker, code) == 1, 5, "one subscriber after the second left")
    finally:
        second.close()
        third.close()
    for seqs in seen.values():
        assert_no_loss(broker, code, seqs)


def test_stalled_client_does_not_slow_a_healthy_one(broker, bridge):
    """While a client that never reads overflows its buffer, a reading client of the same session
    keeps getting the live stream, losing nothing that is not counted; the stalled client's stream
    is intact when it reads again. How late the healthy client's packets are with a stalled one
    beside it is measured by benchmarks/bench_ws.py (--layout stall), not here."""
    code, speed = "ws-stall", 20.0          # 800 packets/s fills the stalled socket in moments
    command(broker, "create", code=code, speed=speed)
    stalled_at = "127.0.8.1"                # its own source address: the bridge's detail tells them apart
    stalled = stalled_client(bridge, f"/stream/{code}", source=stalled_at)
    healthy = Stream(bridge, f"/stream/{code}")

    def detail() -> dict[str, dict]:
        return {c["peer"]: c for c in health(bridge)["clients_detail"] if c["session"] == code}

    try:
        seqs = [healthy.data()["sequence_number"]]
        wait_for(lambda: detail()[stalled_at]["buffer_dropped"] > 0, 30,
                 "the stalled client dropping packets")
        # the healthy client is not held back: it reaches what the session sends now, and another
        # second of it, while the stalled one keeps dropping (deadlines bound hanging, not pace)
        dropped_then = detail()[stalled_at]["buffer_dropped"]
        live = command(broker, "get", code=code)["sequence_number"] + int(40 * speed)
        deadline = time.monotonic() + 30
        while seqs[-1] < live:
            assert time.monotonic() < deadline, f"the healthy client reached {seqs[-1]}, not {live}"
            seqs.append(healthy.data(timeout=10)["sequence_number"])
        clients = detail()
        skipped = command(broker, "get", code=code)["packets_skipped"]
        assert clients[stalled_at]["buffer_dropped"] > dropped_then, "the stalled client caught up?"
        # The stalled client resumes reading: its stream is intact (partial writes were finished
        # before anything else), metadata first, then packets in order with gaps where it dropped.
        buf = bytearray()
        backlog = read_frames(stalled, buf, 1, timeout=5)
        stalled_seqs: list[int] = []
        while not any(b - a > 1 for a, b in zip(stalled_seqs, stalled_seqs[1:])):
            assert len(stalled_seqs) < 50_000, "no gap where the stalled client dropped packets"
            batch = read_frames(stalled, buf, 100, timeout=5)
            backlog += batch
            stalled_seqs += [m["data"]["sequence_number"] for m in batch if m["type"] == "data"]
    finally:
        healthy.close()
        stalled.close()
    assert backlog[0]["type"] == "metadata"
    assert stalled_seqs == sorted(set(stalled_seqs))
    # every packet the healthy client misses was skipped by the broker or dropped from its own
    # buffer, and counted (a loaded machine may delay this test's reader; the bridge then drops)
    assert seqs == sorted(set(seqs)), "out of order or repeated"
    missing = seqs[-1] - seqs[0] + 1 - len(seqs)
    healthy_peer = [peer for peer in clients if peer != stalled_at]
    assert len(healthy_peer) == 1, clients
    counted = skipped + clients[healthy_peer[0]]["buffer_dropped"]
    assert missing <= counted, f"{missing} packets missing, {counted} counted"
    wait_for(lambda: subscribers(broker, code) == 0, 5, "both subscriptions gone")


def test_a_slow_client_loses_packets_but_never_metadata(broker, bridge):
    code, speed = "ws-slow-meta", 20.0
    command(broker, "create", code=code, speed=speed)
    stalled = stalled_client(bridge, f"/stream/{code}")
    try:
        wait_for(lambda: any(c["buffer_dropped"] > 0 for c in health(bridge)["clients_detail"]
                             if c["session"] == code), 20, "the stalled client dropping packets")
        changed = command(broker, "speed", code=code, speed=19.0)     # the broker sends metadata
        # 300 packets after the change: a buffer of BUFFER packets that dropped its oldest entry,
        # whatever it was, would have lost the metadata by then.
        wait_for(lambda: command(broker, "get", code=code)["sequence_number"]
                 > changed["sequence_number"] + 300, 10, "300 packets after the change")
        buf, seen = bytearray(), []
        while not seen or seen[-1]["type"] != "data" or \
                seen[-1]["data"]["sequence_number"] <= changed["sequence_number"] + 300:
            assert len(seen) < 50_000, "never got past the change"
            seen += read_frames(stalled, buf, 1, timeout=5)
    finally:
        stalled.close()
    metas = [m["data"]["session"]["speed"] for m in seen if m["type"] == "metadata"]
    assert metas[0] == speed and 19.0 in metas, f"metadata speeds seen: {metas}"


@pytest.mark.slow
def test_holds_200_clients_at_40_hz(broker, bridge):
    """200 clients on 20 sessions each get their own session's stream, metadata first, with every
    missing packet counted (skipped by the broker as late, or dropped from that client's buffer).
    How fast and how late (rate, latency, drops at 200 clients) is measured by
    benchmarks/bench_ws.py, not here: on a loaded machine this test's own reader may fall behind."""
    n, sessions, count = 200, 20, 80           # 80 packets each: 2 s of its session
    # a loopback address of its own per client, so that the bridge's detail (peer) names each
    sources = {f"127.0.{1 + i // 250}.{1 + i % 250}": f"ws-many-{i % sessions}" for i in range(n)}
    socks = {stalled_client(bridge, f"/stream/{code}", source): (source, code)
             for source, code in sources.items()}
    bufs = {s: bytearray() for s in socks}
    got: dict[socket.socket, list[dict]] = {s: [] for s in socks}
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)

    def data_count(messages: list[dict]) -> int:
        return sum(m["type"] == "data" for m in messages)

    try:
        wait_for(lambda: health(bridge)["clients"] >= n, 60, f"{n} clients admitted")
        deadline = time.monotonic() + 120       # a bound on hanging, not on speed
        while not all(data_count(m) >= count for m in got.values()):
            short = sum(data_count(m) < count for m in got.values())
            assert time.monotonic() < deadline, f"{short} clients got fewer than {count} packets"
            for key, _ in sel.select(0.1):
                chunk = key.fileobj.recv(1 << 16)
                assert chunk, "the bridge closed a connection"
                bufs[key.fileobj].extend(chunk)
                got[key.fileobj] += [msgpack.unpackb(p) for _, p in parse_frames(bufs[key.fileobj])]
        report = health(bridge)
        skipped = {code: command(broker, "get", code=code)["packets_skipped"]
                   for code in set(sources.values())}
    finally:
        for s in socks:
            s.close()
    detail = {c["peer"]: c for c in report["clients_detail"] if c["session"].startswith("ws-many-")}
    assert set(detail) == set(sources), "the bridge does not list every client by its address"
    for sock, messages in got.items():
        source, code = socks[sock]
        assert messages[0]["type"] == "metadata", f"{source}: {messages[0]['type']} first"
        assert messages[0]["data"]["session"]["code"] == code
        assert {m["session"] for m in messages if m["type"] == "data"} == {code}
        seqs = [m["data"]["sequence_number"] for m in messages if m["type"] == "data"]
        assert seqs == sorted(set(seqs)), f"{source}: out of order or repeated: {seqs}"
        missing = seqs[-1] - seqs[0] + 1 - len(seqs)
        counted = skipped[code] + detail[source]["buffer_dropped"]
        assert missing <= counted, f"{source}: {missing} packets missing, {counted} counted"


def test_health_reports_clients(bridge):
    stream = Stream(bridge, "/stream/ws-health")
    try:
        stream.data()
        report = health(bridge)
    finally:
        stream.close()
    assert report["status"] == "ok" and report["clients"] >= 1
    mine = [c for c in report["clients_detail"] if c["session"] == "ws-health"]
    assert len(mine) == 1 and mine[0]["format"] == "msgpack" and mine[0]["sent"] >= 1


# -- own processes: limits, broker down, shutdown ---------------------------------------------
def test_session_limit_closes_with_4429(spawn, tmp_path):
    broker = spawn("broker", broker_env(tmp_path, PHANTOM_MAX_SESSIONS="1"))
    broker.wait_ready(60)
    bridge = spawn("bridges.ws", bridge_env(broker))
    bridge.wait_ready(30)
    first = Stream(bridge, "/stream/ws-only")
    try:
        first.data()
        code, reason = Stream(bridge, "/stream/ws-second").close_code()
        assert code == 4429 and reason
    finally:
        first.close()


def test_broker_unavailable_closes_with_4503(spawn):
    # discard and chargen ports: nothing listens there
    bridge = spawn("bridges.ws", base_env(PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:9",
                                          PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:19",
                                          PHANTOM_WS_PORT="0", PHANTOM_CONTROL_TIMEOUT_MS="200"))
    bridge.wait_ready(30)
    code, reason = Stream(bridge, "/stream/ws-nobody").close_code()
    assert code == 4503 and "did not answer" in reason


@pytest.mark.parametrize("server_args", [(), ("--dev",)], ids=["gunicorn", "werkzeug"])
def test_sigterm_closes_clients_and_exits_0(spawn, tmp_path, server_args):
    broker = spawn("broker", broker_env(tmp_path))
    broker.wait_ready(60)
    bridge = spawn("bridges.ws", bridge_env(broker), *server_args)
    bridge.wait_ready(30)
    streams = [Stream(bridge, "/stream/ws-bye") for _ in range(3)]
    for s in streams:
        s.data()
    wait_for(lambda: subscribers(broker, "ws-bye") == 2, 5, "the carrier's and the meta prefix")
    bridge.popen.send_signal(signal.SIGTERM)
    assert [s.close_code()[0] for s in streams] == [1001] * 3
    assert bridge.popen.wait(15) == 0
    wait_for(lambda: subscribers(broker, "ws-bye") == 0, 5, "subscriptions gone with the bridge")


def test_bad_config_exits_2(spawn):
    proc = spawn("bridges.ws", base_env(PHANTOM_WS_PORT="not-a-port"))
    assert proc.popen.wait(30) == 2
    assert "PHANTOM_WS_PORT" in proc.output()


def test_port_in_use_exits_1(spawn):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        proc = spawn("bridges.ws", base_env(PHANTOM_WS_PORT=str(taken.getsockname()[1])))
        assert proc.popen.wait(30) == 1
    finally:
        taken.close()
    assert "cannot listen" in proc.output()


