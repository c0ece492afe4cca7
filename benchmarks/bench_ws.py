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

Scenarios: ``own`` gives every client its own session (N streams, phases staggered by the broker);
``shared`` puts all clients on one session (every packet fans out to N clients at once, the
bridge's worst burst). Run from the repository root:

    .venv/bin/python benchmarks/bench_ws.py                  # 50 and 200 clients, own and shared
    .venv/bin/python benchmarks/bench_ws.py --clients 50 --layout own --seconds 20

Targets (issue 4): p99 <= 2 ms with 50 clients, <= 10 ms with 200.
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
TARGET_P99_MS = {50: 2.0, 200: 10.0}


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
def handshake(host: str, port: int, path: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((host, port), timeout=10)
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


def client_main(url: str, codes: list[str], warmup: float, seconds: float, results) -> None:
    host, port = url.removeprefix("ws://").split(":")
    sel = selectors.DefaultSelector()
    for code in codes:
        sock, rest = handshake(host, int(port), f"/stream/{code}?format=msgpack")
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sel.register(sock, selectors.EVENT_READ, bytearray(rest))
    results.put(("connected", len(codes)))
    start = time.monotonic() + warmup
    end = start + seconds
    samples: list[tuple[float, float, bytes]] = []
    closed = 0
    while (now := time.monotonic()) < end:
        for key, _ in sel.select(0.5):
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
            key.data.extend(data)
            for opcode, payload in frames(key.data):
                if opcode == 2 and now >= start:
                    samples.append((wall, arrived, payload))
    latencies, user, metas = [], [], 0
    for wall, arrived, payload in samples:
        message = msgpack.unpackb(payload)
        if message["type"] == "data":
            latencies.append((arrived - message["data"]["sent_at"]) * 1000)
            user.append((wall - message["data"]["sent_at"]) * 1000)
        else:
            metas += 1
    latencies.sort()
    user.sort()
    results.put(("done", {"packets": len(latencies), "metadata": metas, "closed": closed,
                          "p50": pct(latencies, 50), "p99": pct(latencies, 99),
                          "max": latencies[-1] if latencies else float("nan"),
                          "user_p99": pct(user, 99)}))
    for key in list(sel.get_map().values()):
        key.fileobj.close()


def pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# -- scenarios ------------------------------------------------------------------------------
def health(bridge: Child) -> dict:
    with urllib.request.urlopen(bridge.ready["health"], timeout=5) as reply:
        return json.load(reply)


def run_scenario(bridge: Child, broker: Child, n: int, layout: str, warmup: float, seconds: float,
                 tag: str) -> dict:
    codes = [f"bench-{tag}-{n}-{i}" for i in range(n)] if layout == "own" else [f"bench-{tag}-{n}"] * n
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    client = ctx.Process(target=client_main, args=(bridge.ready["url"], codes, warmup, seconds, results))
    client.start()
    kind, _ = results.get(timeout=120)
    assert kind == "connected"
    time.sleep(warmup)          # let every stream reach steady state before the window opens
    cpu0, broker0, sent0, t0 = (cpu_seconds(bridge.pids()), cpu_seconds(broker.pids()),
                                health(bridge)["packets_sent"], time.monotonic())
    kind, summary = results.get(timeout=seconds + 120)
    cpu1, broker1, sent1, t1 = (cpu_seconds(bridge.pids()), cpu_seconds(broker.pids()),
                                health(bridge)["packets_sent"], time.monotonic())
    client.join(30)
    rate = (sent1 - sent0) / (t1 - t0)
    bridge_cpu = (cpu1 - cpu0) / (t1 - t0) * 100
    summary.update(clients=n, layout=layout, rate=rate, bridge_cpu=bridge_cpu,
                   broker_cpu=(broker1 - broker0) / (t1 - t0) * 100,
                   cpu_per_1k=bridge_cpu / (rate / 1000) if rate else float("nan"),
                   drops=health(bridge)["buffer_dropped_packets"])
    return summary


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
    parser.add_argument("--layout", choices=("own", "shared", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per scenario")
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()

    broker = Child("broker", {"PHANTOM_PUB_ENDPOINT": "tcp://127.0.0.1:*",
                              "PHANTOM_CONTROL_ENDPOINT": "tcp://127.0.0.1:*",
                              "PHANTOM_STATE_PATH": f"/tmp/bench-ws-{os.getpid()}.json"})
    bridge = Child("bridges.ws", {"PHANTOM_PUB_ENDPOINT": broker.ready["pub"],
                                  "PHANTOM_CONTROL_ENDPOINT": broker.ready["control"],
                                  "PHANTOM_WS_PORT": "0", "PHANTOM_LOG_LEVEL": "WARNING"})
    layouts = ("own", "shared") if args.layout == "both" else (args.layout,)
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{'clients':>7} {'layout':>6} {'pkts/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'user p99':>8} {'bridge CPU%':>11} {'CPU%/1k pkt/s':>13} {'broker CPU%':>11} {'target p99':>10}")
    failed = False
    try:
        for tag, layout in enumerate(layouts):
            for n in args.clients:
                r = run_scenario(bridge, broker, n, layout, args.warmup, args.seconds, f"{tag}{layout[0]}")
                target = TARGET_P99_MS.get(n)
                verdict = "-" if target is None else ("PASS" if r["p99"] <= target else "FAIL")
                failed |= verdict == "FAIL"
                print(f"{n:>7} {layout:>6} {r['rate']:>8.0f} {r['p50']:>7.2f} {r['p99']:>7.2f} "
                      f"{r['max']:>7.2f} {r['user_p99']:>8.2f} {r['bridge_cpu']:>11.1f} {r['cpu_per_1k']:>13.2f} "
                      f"{r['broker_cpu']:>11.1f} {verdict:>4} {target or '':>5}", flush=True)
                if r["closed"]:
                    print(f"  warning: {r['closed']} connections closed during the run")
    finally:
        bridge.stop()
        broker.stop()
        Path(f"/tmp/bench-ws-{os.getpid()}.json").unlink(missing_ok=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
