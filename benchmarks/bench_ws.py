"""Benchmark of the WebSocket bridge: broker send -> client receive latency, and bridge CPU.

Starts a broker and the bridge (gunicorn, as in production) on free ports, then for each scenario
connects N WebSocket clients from a separate process (one selector thread, raw sockets, so the
client side adds as little as possible) and measures, over a fixed window:

- latency: the time the packet reached the client's socket minus its ``sent_at`` (the broker's
  send time), p50, p99 and max over every packet received. The arrival time is the kernel's receive
  timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME like ``sent_at``): one measuring thread reads up to
  200 sockets one after another, and stamping in user space would add its own queue (a few
  hundred microseconds per 50 ready sockets) to the bridge's figure. The user-space receive time
  is printed too (``user p99``), as what a single-threaded client with that many sockets sees;
- bridge CPU: utime + stime of the bridge's processes (/proc/<pid>/stat) over the window, as a
  percentage of one core and per 1,000 packets/s delivered.

- slowest client: the packets per second received by the client that received the fewest, and
  drops: packets the bridge dropped from the measured clients' buffers during the window (its
  /health ``clients_detail``, told apart by the client's source address).

Scenarios: ``own`` gives every client its own session (N streams, phases staggered by the broker);
``shared`` puts all clients on one session (every packet fans out to N clients at once, the
bridge's worst burst); ``stall`` has one reading client on a session at 800 packets/s (speed 20)
beside 0 and then S clients of the same session that never read (their buffers overflow and drop):
a stalled client must not slow the healthy one. Run from the repository root:

    .venv/bin/python benchmarks/bench_ws.py                  # 50 and 200 clients own and shared, stall
    .venv/bin/python benchmarks/bench_ws.py --clients 50 --layout own --seconds 20
    .venv/bin/python benchmarks/bench_ws.py --layout stall --stalled 1 10

Targets: p99 <= 2 ms with 50 clients, <= 10 ms with 200; the slowest client receives at least 80 %
of its session's 40 packets/s, and no measured client loses a packet from its buffer. Stall: the
healthy client receives 800 packets/s within 10 %, p99 < 50 ms, no drop, while every stalled
client drops.
"""
from __future__ import annotations

import argparse
import base64
import multiprocessing
import os
import platform
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import json
from pathlib import Path

import msgpack

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from protocol.client import BrokerClient  # noqa: E402
TARGET_P99_MS = {50: 2.0, 200: 10.0}
RATE_HZ = 40.0                      # a session at speed 1
SLOWEST_SHARE = 0.8                 # the slowest client receives at least this share of it
STALL_SPEED = 20.0                  # the stall scenario's session: 800 packets/s
STALL_RATE_TOLERANCE = 0.10         # the healthy client's rate within 10 % of that
STALL_P99_MS = 50.0
STALLED_SOURCE = "127.0.7.{}"       # source addresses of the stalled clients (any 127/8 is local)


class Child:
    """A PhantomLink process whose log is collected; ``ready`` holds its READY line's fields."""

    def __init__(self, module: str, env: dict[str, str]):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PHANTOM_")}
        full_env.update(env, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env=full_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.ready: dict[str, str] = {}
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(60):
            self.stop()
            sys.exit(f"{module} did not get ready:\n" + "\n".join(self.lines[-20:]))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if "READY " in line and not self._ready.is_set():
                fields = line[line.index("READY "):].split()[2:]
                self.ready = dict(f.split("=", 1) for f in fields if "=" in f)
                self._ready.set()

    def pids(self) -> list[int]:
        """This process and its children (gunicorn's workers)."""
        pids = [self.proc.pid]
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            pids += [int(p) for p in children.split()]
        except OSError:
            pass
        return pids

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick       # utime, stime
    return total


# -- the client process ---------------------------------------------------------------------
def handshake(host: str, port: int, path: str, source: str | None = None,
              rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    sock = socket.socket()
    sock.settimeout(10)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if source is not None:
        sock.bind((source, 0))
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"bridge closed {path} during the handshake")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise ConnectionError(head.decode(errors="replace"))
    return sock, rest


def frames(buf: bytearray):
    """Complete (opcode, payload) frames at the start of ``buf`` (server frames are unmasked)."""
    out, pos = [], 0
    while len(buf) - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        length, head = b1 & 0x7F, 2
        if length == 126:
            if len(buf) - pos < 4:
                break
            length, head = struct.unpack_from(">H", buf, pos + 2)[0], 4
        elif length == 127:
            if len(buf) - pos < 10:
                break
            length, head = struct.unpack_from(">Q", buf, pos + 2)[0], 10
        if len(buf) - pos < head + length:
            break
        out.append((b0 & 0x0F, bytes(buf[pos + head:pos + head + length])))
        pos += head + length
    del buf[:pos]
    return out


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)   # Linux; SCM_TIMESTAMPNS has the same value
ANCILLARY = socket.CMSG_SPACE(16)


def kernel_time(ancillary) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("qq", data)
            return sec + nsec * 1e-9
    return None


def client_main(url: str, codes: list[str], stalled: list[str], go, release, seconds: float,
                results) -> None:
    """Read ``codes`` (one client each) throughout, measuring for ``seconds`` from when ``go`` is
    set; ``stalled`` clients connect and never read. Connections close once ``release`` is set
    (after the bridge's counters are read)."""
    host, port = url.removeprefix("ws://").split(":")
    sel = selectors.DefaultSelector()
    for index, code in enumerate(codes):
        sock, rest = handshake(host, int(port), f"/stream/{code}?format=msgpack")
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sel.register(sock, selectors.EVENT_READ, (index, bytearray(rest)))
    idle = [handshake(host, int(port), f"/stream/{code}?format=msgpack",
                      STALLED_SOURCE.format(1 + i), rcvbuf=4096)[0] for i, code in enumerate(stalled)]
    results.put(("connected", len(codes) + len(idle)))
    start = end = float("inf")
    samples: list[tuple[float, float, bytes, int]] = []
    closed = 0
    while (now := time.monotonic()) < end:
        if start == float("inf") and go.is_set():
            start, end = now, now + seconds
        for key, _ in sel.select(0.05):
            try:
                data, ancillary, _, _ = key.fileobj.recvmsg(1 << 18, ANCILLARY)
            except BlockingIOError:
                continue
            wall = time.time()
            arrived = kernel_time(ancillary) or wall
            if not data:
                sel.unregister(key.fileobj)
                closed += 1
                continue
            index, buf = key.data
            buf.extend(data)
            for opcode, payload in frames(buf):
                if opcode == 2 and now >= start:
                    samples.append((wall, arrived, payload, index))
    latencies, user, metas = [], [], 0
    per_client = [0] * len(codes)
    for wall, arrived, payload, index in samples:
        message = msgpack.unpackb(payload)
        if message["type"] == "data":
            latencies.append((arrived - message["data"]["sent_at"]) * 1000)
            user.append((wall - message["data"]["sent_at"]) * 1000)
            per_client[index] += 1
        else:
            metas += 1
    latencies.sort()
    user.sort()
    results.put(("done", {"packets": len(latencies), "metadata": metas, "closed": closed,
                          "p50": pct(latencies, 50), "p99": pct(latencies, 99),
                          "max": latencies[-1] if latencies else float("nan"),
                          "user_p99": pct(user, 99),
                          "slowest": min(per_client) / seconds if per_client else float("nan")}))
    release.wait(120)
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    for sock in idle:
        sock.close()


def pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# -- scenarios ------------------------------------------------------------------------------
def health(bridge: Child) -> dict:
    with urllib.request.urlopen(bridge.ready["health"], timeout=5) as reply:
        return json.load(reply)


def buffer_drops(bridge: Child, codes: set[str]) -> tuple[int, int]:
    """(packets dropped so far from the buffers of the reading clients of ``codes``, from every
    client's buffer): the reading clients are told apart from the stalled ones by their source
    address; the total includes clients that have gone (the bridge may cut a stalled one)."""
    report = health(bridge)
    reading = sum(c["buffer_dropped"] for c in report["clients_detail"]
                  if c["session"] in codes and not c["peer"].startswith(STALLED_SOURCE.format("")))
    return reading, report["buffer_dropped_packets"]


def run_scenario(bridge: Child, broker: Child, n: int, layout: str, warmup: float, seconds: float,
                 tag: str, stalled: int = 0) -> dict:
    if layout == "own":
        codes = [f"bench-{tag}-{n}-{i}" for i in range(n)]
    else:
        codes = [f"bench-{tag}-{n}"] * n
    speed = STALL_SPEED if layout == "stall" else 1.0
    if layout == "stall":
        control = BrokerClient(broker.ready["control"], 5000, 5000)
        try:
            control.request("create", {"code": codes[0], "speed": speed})
        finally:
            control.close()
    ctx = multiprocessing.get_context("spawn")
    results, go, release = ctx.Queue(), ctx.Event(), ctx.Event()
    client = ctx.Process(target=client_main, args=(bridge.ready["url"], codes, codes[:1] * stalled,
                                                   go, release, seconds, results))
    client.start()
    kind, _ = results.get(timeout=120)
    assert kind == "connected"
    time.sleep(warmup)          # let every stream reach steady state before the window opens
    deadline = time.monotonic() + 60
    full = buffer_drops(bridge, set(codes))[1]
    while stalled and buffer_drops(bridge, set(codes))[1] == full:  # their socket buffers are full
        if time.monotonic() > deadline:
            sys.exit("the stalled clients never filled their buffers")
        time.sleep(0.2)
    go.set()
    cpu0, broker0, sent0, t0 = (cpu_seconds(bridge.pids()), cpu_seconds(broker.pids()),
                                health(bridge)["packets_sent"], time.monotonic())
    drops0 = buffer_drops(bridge, set(codes))
    kind, summary = results.get(timeout=seconds + 120)
    cpu1, broker1, sent1, t1 = (cpu_seconds(bridge.pids()), cpu_seconds(broker.pids()),
                                health(bridge)["packets_sent"], time.monotonic())
    drops1 = buffer_drops(bridge, set(codes))          # before the client process closes them
    gone = stalled - sum(c["peer"].startswith(STALLED_SOURCE.format(""))
                         for c in health(bridge)["clients_detail"] if c["session"] in codes)
    release.set()
    client.join(30)
    rate = (sent1 - sent0) / (t1 - t0)
    bridge_cpu = (cpu1 - cpu0) / (t1 - t0) * 100
    summary.update(clients=n, layout=layout, stalled=stalled, stalled_gone=gone, rate=rate, bridge_cpu=bridge_cpu,
                   broker_cpu=(broker1 - broker0) / (t1 - t0) * 100,
                   cpu_per_1k=bridge_cpu / (rate / 1000) if rate else float("nan"),
                   drops=drops1[0] - drops0[0],
                   stalled_drops=(drops1[1] - drops0[1]) - (drops1[0] - drops0[0]),
                   expected=RATE_HZ * speed)
    return summary


def verdict(r: dict) -> str:
    """PASS, or FAIL with the targets missed."""
    misses = []
    if r["layout"] == "stall":
        if abs(r["slowest"] - r["expected"]) > STALL_RATE_TOLERANCE * r["expected"]:
            misses.append(f"rate {r['slowest']:.0f}/s not {r['expected']:.0f} +-10 %")
        if not r["p99"] < STALL_P99_MS:
            misses.append(f"p99 >= {STALL_P99_MS:g} ms")
        if r["stalled"] and r["stalled_drops"] == 0:
            misses.append("the stalled clients dropped nothing (not stalled)")
    else:
        target = TARGET_P99_MS.get(r["clients"])
        if target is not None and not r["p99"] <= target:
            misses.append(f"p99 > {target:g} ms")
        if not r["slowest"] >= SLOWEST_SHARE * r["expected"]:
            misses.append(f"slowest client < {SLOWEST_SHARE * r['expected']:g}/s")
    if r["drops"]:
        misses.append(f"{r['drops']} dropped")
    return "PASS" if not misses else "FAIL: " + ", ".join(misses)


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), {platform.machine()}, Linux {platform.release()}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--layout", choices=("own", "shared", "stall", "both", "all"), default="all",
                        help="both = own and shared; all = own, shared and stall")
    parser.add_argument("--stalled", type=int, nargs="+", default=[1],
                        help="stalled clients beside the healthy one (stall; a row with 0 comes first)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per scenario")
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()

    broker = Child("broker", {"PHANTOM_PUB_ENDPOINT": "tcp://127.0.0.1:*",
                              "PHANTOM_CONTROL_ENDPOINT": "tcp://127.0.0.1:*",
                              "PHANTOM_FEEDBACK_ENDPOINT": "tcp://127.0.0.1:*",
                              "PHANTOM_FEEDBACK_PUSH_ENDPOINT": "tcp://127.0.0.1:*",
                              "PHANTOM_STATE_PATH": f"/tmp/bench-ws-{os.getpid()}.json"})
    # The stalled clients must stay connected through the window: the bridge cuts a peer after
    # PHANTOM_WS_SEND_TIMEOUT_S without progress (10 s by default), so that is raised here.
    bridge = Child("bridges.ws", {"PHANTOM_PUB_ENDPOINT": broker.ready["pub"],
                                  "PHANTOM_CONTROL_ENDPOINT": broker.ready["control"],
                                  "PHANTOM_FEEDBACK_ENDPOINT": broker.ready["feedback"],
                                  "PHANTOM_WS_PORT": "0", "PHANTOM_LOG_LEVEL": "WARNING",
                                  "PHANTOM_WS_SEND_TIMEOUT_S": str(args.warmup + args.seconds + 90)})
    layouts = {"both": ("own", "shared"), "all": ("own", "shared", "stall")}.get(args.layout,
                                                                                 (args.layout,))
    runs = [(layout, n, 0) for layout in layouts if layout != "stall" for n in args.clients]
    if "stall" in layouts:
        runs += [("stall", 1, k) for k in [0, *(k for k in args.stalled if k)]]
    print(f"machine: {machine()}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{'clients':>7} {'layout':>6} {'stalled':>7} {'pkts/s':>8} {'slowest/s':>9} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7} {'user p99':>8} {'bridge CPU%':>11} {'CPU%/1k pkt/s':>13} "
          f"{'broker CPU%':>11} {'drops':>5} {'stalled drops':>13}  verdict")
    failed = False
    try:
        for tag, (layout, n, stalled) in enumerate(runs):
            r = run_scenario(bridge, broker, n, layout, args.warmup, args.seconds,
                             f"{tag}{layout[0]}", stalled)
            result = verdict(r)
            failed |= result != "PASS"
            print(f"{n:>7} {layout:>6} {stalled:>7} {r['rate']:>8.0f} {r['slowest']:>9.1f} "
                  f"{r['p50']:>7.2f} {r['p99']:>7.2f} {r['max']:>7.2f} {r['user_p99']:>8.2f} "
                  f"{r['bridge_cpu']:>11.1f} {r['cpu_per_1k']:>13.2f} {r['broker_cpu']:>11.1f} "
                  f"{r['drops']:>5} {r['stalled_drops']:>13}  {result}", flush=True)
            if r["closed"]:
                print(f"  warning: {r['closed']} connections closed during the run")
            if r["stalled_gone"]:
                print(f"  note: the bridge cut {r['stalled_gone']} stalled clients during the window")
    finally:
        bridge.stop()
        broker.stop()
        Path(f"/tmp/bench-ws-{os.getpid()}.json").unlink(missing_ok=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
