"""Soak benchmark: many sessions consumed at high speed for a long time; resources must not grow.

Starts a broker, control and the WebSocket bridge, creates ``--sessions`` sessions at ``--speed``
and consumes every one: half through the WebSocket bridge (raw sockets read by one consumer
process), half as ZMQ SUB sockets (the same process). Every ``--churn-s`` seconds a few consumers of
each kind disconnect and reconnect and a few sessions are paused, sought and resumed over REST,
so connection set-up and tear-down are soaked too.

After a warm-up (``--warmup-s``, default a third of the run, at least 30 s: under this overload the
bounded queues, ZeroMQ's per subscriber and the bridge's per client, take minutes to fill, and
filling a bounded queue is not growth) it records the resident
memory (RSS), open file descriptors and threads of every process, and again at the end (each
sample taken 2 s after the last churn, from nine readings over 4 s: the median RSS, the most
frequent count of descriptors and threads). It passes when RSS grew by at most 5 % and descriptors and
threads did not grow in any process. Prints the figures, the stream time played, and PASS/FAIL.

    nice -n 19 .venv/bin/python benchmarks/bench_soak.py                 # 100 sessions, speed 100, 30 min
    .venv/bin/python benchmarks/bench_soak.py --minutes 2 --sessions 20
"""
from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import multiprocessing
import os
import random
import selectors
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from processes import Proc, base_env, tree_resources  # noqa: E402  (tests/processes.py)

RSS_GROWTH_MAX = 0.05


def start_stack(tmp: Path, pub_queue: int | None) -> dict[str, Proc]:
    extra = {"PHANTOM_PUB_QUEUE_PACKETS": str(pub_queue)} if pub_queue else {}
    broker = Proc.module("broker", base_env(PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*",
                                            PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                                            PHANTOM_FEEDBACK_ENDPOINT="tcp://127.0.0.1:*", PHANTOM_FEEDBACK_PUSH_ENDPOINT="tcp://127.0.0.1:*",
                                            PHANTOM_STATE_PATH=str(tmp / "state.json"),
                                            PHANTOM_LOG_LEVEL="WARNING", **extra))
    broker.wait_ready(60)
    env = dict(PHANTOM_PUB_ENDPOINT=broker.ready["pub"], PHANTOM_CONTROL_ENDPOINT=broker.ready["control"],
               PHANTOM_FEEDBACK_ENDPOINT=broker.ready["feedback"], PHANTOM_LOG_LEVEL="WARNING")
    control = Proc.module("control", base_env(PHANTOM_CONTROL_PORT="0", **env))
    ws = Proc.module("bridges.ws", base_env(PHANTOM_WS_PORT="0", **env))
    control.wait_ready(30)
    ws.wait_ready(30)
    return {"broker": broker, "control": control, "ws": ws}


# -- REST ------------------------------------------------------------------------------------------
def rest(url: str, method: str, path: str, body: dict | None = None) -> int:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, data, {"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# -- the consumer process --------------------------------------------------------------------------
def ws_connect(url: str, code: str) -> socket.socket:
    host, port = url.removeprefix("ws://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /stream/{code} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("closed during the handshake")
        head += chunk
    sock.setblocking(False)
    return sock


def consume(ws_url: str, pub: str, ws_codes: list[str], zmq_codes: list[str], churn_s: float,
            stop_at: float, out: multiprocessing.Queue, stop=None) -> None:
    """Read every stream until ``stop`` is set (or ``stop_at``), reconnecting a few consumers every
    ``churn_s``."""
    rng = random.Random(7)
    ctx = zmq.Context()
    sel = selectors.DefaultSelector()
    ws_socks = {code: ws_connect(ws_url, code) for code in ws_codes}
    for code, sock in ws_socks.items():
        sel.register(sock, selectors.EVENT_READ, code)
    subs = {code: _sub(ctx, pub, code) for code in zmq_codes}
    poller = zmq.Poller()
    for sub in subs.values():
        poller.register(sub, zmq.POLLIN)
    ws_bytes = zmq_msgs = reconnects = cut = 0
    next_churn = time.monotonic() + churn_s

    def reconnect(code: str) -> None:
        sel.unregister(ws_socks[code])
        ws_socks[code].close()
        ws_socks[code] = ws_connect(ws_url, code)
        sel.register(ws_socks[code], selectors.EVENT_READ, code)

    while time.monotonic() < stop_at and not (stop is not None and stop.is_set()):
        for key, _ in sel.select(0.005):
            try:
                data = key.fileobj.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:                    # the bridge cut a consumer that fell behind
                cut += 1
                reconnect(key.data)
            ws_bytes += len(data)
        for sub, _ in poller.poll(0):
            while sub.poll(0):
                sub.recv_multipart()
                zmq_msgs += 1
        if time.monotonic() >= next_churn:
            next_churn += churn_s
            for code in rng.sample(ws_codes, min(3, len(ws_codes))):
                reconnect(code)
                reconnects += 1
            for code in rng.sample(zmq_codes, min(3, len(zmq_codes))):
                poller.unregister(subs[code])
                subs[code].close(linger=0)
                subs[code] = _sub(ctx, pub, code)
                poller.register(subs[code], zmq.POLLIN)
                reconnects += 1
    for sock in ws_socks.values():
        sock.close()
    for sub in subs.values():
        sub.close(linger=0)
    ctx.term()
    out.put({"ws_bytes": ws_bytes, "zmq_msgs": zmq_msgs, "reconnects": reconnects, "cut_by_bridge": cut})


def _sub(ctx: zmq.Context, pub: str, code: str) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 1000)
    sub.connect(pub)
    sub.setsockopt(zmq.SUBSCRIBE, f"session/{code}/".encode())
    return sub


# -- the run ---------------------------------------------------------------------------------------
def ws_clients(procs: dict[str, Proc]) -> int:
    with urllib.request.urlopen(procs["ws"].ready["health"], timeout=10) as reply:
        return json.load(reply)["clients"]


def sample_all(procs: dict[str, Proc], clients: int, repeats: int = 9) -> dict[str, dict[str, int]]:
    """Each process's resources once all ``clients`` WebSocket consumers are connected (up to 30 s),
    from ``repeats`` readings 0.5 s apart: descriptors and threads as the most frequent reading,
    RSS as the median. Consumers are cut and reconnect about once a second, and each connection in
    transit holds a thread and three descriptors for a moment: a single reading counts it or not
    by chance, the most frequent one is the settled state."""
    deadline = time.monotonic() + 30
    while ws_clients(procs) < clients and time.monotonic() < deadline:
        time.sleep(0.2)
    readings = []
    for i in range(repeats):
        if i:
            time.sleep(0.5)
        readings.append({name: tree_resources(p.popen.pid) for name, p in procs.items()})
    sample = {}
    for name in procs:
        values = {key: sorted(r[name][key] for r in readings) for key in readings[0][name]}
        sample[name] = {key: most_frequent(v) for key, v in values.items() if key != "rss_kb"}
        sample[name]["rss_kb"] = values["rss_kb"][len(readings) // 2]
    sample["ws"]["clients"] = ws_clients(procs)
    return sample


def most_frequent(values: list[int]) -> int:
    """The most frequent of ``values`` (the smallest of equally frequent ones)."""
    counts = collections.Counter(values)
    return min(counts, key=lambda v: (-counts[v], v))


def wait_until(t: float, procs: dict[str, Proc], control_url: str, codes: list[str],
               churn_s: float, rng: random.Random) -> None:
    """Sleep until ``t``, driving a few sessions over REST every ``churn_s``; ends 2 s after the
    last churn so the sample sees a settled stack."""
    next_churn = time.monotonic() + churn_s
    while time.monotonic() < t - 2.0:
        if time.monotonic() >= next_churn:
            next_churn += churn_s
            for code in rng.sample(codes, min(3, len(codes))):
                rest(control_url, "POST", f"/api/control/{code}/pause")
                rest(control_url, "POST", f"/api/control/{code}/seek", {"packet_id": rng.randrange(10_000)})
                rest(control_url, "POST", f"/api/control/{code}/resume")
        time.sleep(min(1.0, max(0.0, t - 2.0 - time.monotonic())))
    time.sleep(max(0.0, t - time.monotonic()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--speed", type=float, default=100.0)
    parser.add_argument("--churn-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=None)
    parser.add_argument("--pub-queue", type=int, default=None,
                        help="the broker's PHANTOM_PUB_QUEUE_PACKETS (default: its own default)")
    parser.add_argument("--trace-s", type=float, default=0.0,
                        help="also print every process's RSS this often (0: only the two samples)")
    args = parser.parse_args()
    total_s = args.minutes * 60
    warmup_s = args.warmup_s if args.warmup_s is not None else max(30.0, total_s / 3)
    with tempfile.TemporaryDirectory() as tmp:
        procs = start_stack(Path(tmp), args.pub_queue)
        try:
            return run(procs, args, total_s, warmup_s)
        finally:
            for proc in procs.values():
                proc.stop()


def run(procs: dict[str, Proc], args, total_s: float, warmup_s: float) -> int:
    control_url = procs["control"].ready["url"]
    codes = [f"soak-{i:03d}" for i in range(args.sessions)]
    for code in codes:
        status = rest(control_url, "POST", "/api/sessions/create", {"custom_code": code, "speed": args.speed})
        if status != 200:
            print(f"FAIL: cannot create {code}: HTTP {status}")
            return 1
    began = time.monotonic()
    stop_at = began + total_s + 120         # a bound only: stopped once the last sample is taken
    stop = multiprocessing.Event()
    half = args.sessions // 2
    out: multiprocessing.Queue = multiprocessing.Queue()
    consumer = multiprocessing.Process(target=consume, args=(
        procs["ws"].ready["url"], procs["broker"].ready["pub"], codes[:half], codes[half:],
        args.churn_s, stop_at, out, stop), daemon=True)
    consumer.start()
    rng = random.Random(3)
    wait_until(began + warmup_s, procs, control_url, codes, args.churn_s, rng)
    start = sample_all(procs, half)
    t = began + warmup_s
    while args.trace_s and t + args.trace_s < began + total_s:
        t += args.trace_s
        wait_until(t, procs, control_url, codes, args.churn_s, rng)
        now = sample_all(procs, half)
        print(f"t={t - began:6.0f} s  " + "  ".join(
            f"{n} {v['rss_kb'] / 1024:.1f} MiB {v['fds']} fds {v['threads']} threads"
            for n, v in now.items() if "rss_kb" in v), flush=True)
    wait_until(began + total_s, procs, control_url, codes, args.churn_s, rng)
    end = sample_all(procs, half)
    stop.set()
    sessions = list(json.loads(_get(control_url, "/api/sessions"))["sessions"].values())
    consumer.join(30)
    counts = out.get(timeout=10) if not out.empty() else {}
    return report(procs, args, start, end, sessions, counts, total_s, warmup_s)


def _get(url: str, path: str) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path)
    body = conn.getresponse().read()
    conn.close()
    return body


def report(procs, args, start, end, sessions, counts, total_s, warmup_s) -> int:
    sent_h = sum(s["packets_sent"] for s in sessions) * 0.025 / 3600
    skipped = sum(s["packets_skipped"] for s in sessions)
    print(f"soak: {args.sessions} sessions at speed {args.speed:g} for {total_s / 60:.1f} min "
          f"(warm-up {warmup_s:.0f} s); churn every {args.churn_s:g} s; broker queue per subscriber "
          f"{args.pub_queue or 'default'}")
    print(f"stream time per session: {args.speed * total_s / 3600:.1f} h on its playback clock; "
          f"packets sent: {sent_h:.1f} h of bins in all, skipped as late: {skipped}")
    print(f"consumer: {counts}; WebSocket clients at the samples: {start['ws'].get('clients')} -> "
          f"{end['ws'].get('clients')}")
    failures = []
    for name in procs:
        a, b = start[name], end[name]
        growth = (b["rss_kb"] - a["rss_kb"]) / a["rss_kb"]
        print(f"{name:8s} RSS {a['rss_kb'] / 1024:7.1f} -> {b['rss_kb'] / 1024:7.1f} MiB ({growth * 100:+.1f} %)  "
              f"fds {a['fds']} -> {b['fds']}  threads {a['threads']} -> {b['threads']}")
        if growth > RSS_GROWTH_MAX:
            failures.append(f"{name} RSS +{growth * 100:.1f} %")
        if b["fds"] > a["fds"]:
            failures.append(f"{name} fds {a['fds']} -> {b['fds']}")
        if b["threads"] > a["threads"]:
            failures.append(f"{name} threads {a['threads']} -> {b['threads']}")
    dead = [name for name, p in procs.items() if p.popen.poll() is not None]
    if dead:
        failures.append(f"dead: {dead}")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
