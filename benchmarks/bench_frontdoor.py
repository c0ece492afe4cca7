"""What the front door's proxy hop costs: REST and WebSocket latency through nginx versus direct.

Starts a broker, control, the WebSocket bridge (gunicorn) and the front door (`python -m frontdoor`,
nginx) on free local ports, then in one run, alternating rounds so that both paths see the same
machine load:

- REST: ``GET /api/sessions`` and ``GET /`` (no broker call) over one keep-alive connection, to
  control's own port and to the door; p50/p99 per round, the median and range over rounds, and the
  door/direct ratio of the p50s;
- WebSocket: one client on the bridge's own port and one on the door,
  both streaming the same 40 Hz session; latency is the arrival time minus the packet's ``sent_at``
  (the broker's send time, Unix seconds on this host).

Target: through the door, ``GET /api/sessions`` p50 <= 0.5 ms (median over rounds). Prints FAIL
and exits 1 when missed.

``--baseline DIR`` also runs another checkout's control and door (its own configs/nginx.conf)
against the same broker, in the same alternating rounds, and prints the new/baseline ratios.

    .venv/bin/python benchmarks/bench_frontdoor.py [--rounds 5] [--requests 1000] [--seconds 10]
                                                  [--baseline DIR]
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import simple_websocket

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_control import Client, percentiles, start, stop_all  # noqa: E402

SESSION = "bench-door"
TARGET_DOOR_P50_MS = 0.5


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_stack(procs: list[subprocess.Popen], baseline: Path | None = None) -> dict[str, str]:
    door, ws, control, base_door, base_control = free_ports(5)
    tmp = tempfile.mkdtemp(prefix="bench-door-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHANTOM_")}
    env.update(PYTHONUNBUFFERED="1", PHANTOM_PUB_ENDPOINT=f"ipc://{tmp}/pub",
               PHANTOM_CONTROL_ENDPOINT=f"ipc://{tmp}/control", PHANTOM_STATE_PATH=f"{tmp}/state.json",
               PHANTOM_FEEDBACK_ENDPOINT=f"ipc://{tmp}/feedback",
               PHANTOM_FEEDBACK_PUSH_ENDPOINT=f"ipc://{tmp}/feedback-push",
               PHANTOM_PORT=str(door), PHANTOM_WS_PORT=str(ws), PHANTOM_CONTROL_PORT=str(control))
    for module in ("broker", "control", "bridges.ws", "frontdoor"):
        proc, _ = start(module, env)
        procs.append(proc)
    urls = {"door": f"127.0.0.1:{door}", "control": f"127.0.0.1:{control}", "ws": f"127.0.0.1:{ws}"}
    if baseline is not None:
        base_env = {**env, "PHANTOM_PORT": str(base_door), "PHANTOM_CONTROL_PORT": str(base_control)}
        for module in ("control", "frontdoor"):
            proc, _ = start(module, base_env, cwd=baseline.resolve())
            procs.append(proc)
        urls.update(base_door=f"127.0.0.1:{base_door}", base_control=f"127.0.0.1:{base_control}")
    return urls


def rest_rounds(urls: dict[str, str], path: str, rounds: int, n: int) -> dict[str, list[dict]]:
    """Rounds over every path, the order rotating so that none is always first."""
    paths = {"direct": "control", "door": "door", "baseline direct": "base_control",
             "baseline door": "base_door"}
    clients = {name: Client(f"http://{urls[key]}") for name, key in paths.items() if key in urls}
    out: dict[str, list[dict]] = {name: [] for name in clients}
    for client in clients.values():
        for _ in range(200):
            client.call("GET", path)
    names = list(clients)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            out[name].append(percentiles([clients[name].call("GET", path) for _ in range(n)]))
    return out


def ws_latency(urls: dict[str, str], seconds: float) -> dict[str, dict]:
    """Both clients on the same session at once; latency = arrival - sent_at, in ms."""
    samples: dict[str, list[float]] = {"direct": [], "door": []}
    stop = time.monotonic() + seconds + 1.0

    def reader(name: str, address: str) -> None:
        ws = simple_websocket.Client.connect(f"ws://{address}/stream/{SESSION}?format=msgpack")
        try:
            warm_until = time.monotonic() + 1.0
            while time.monotonic() < stop:
                frame = ws.receive(timeout=1.0)
                now = time.time()
                if frame is None:
                    continue
                msg = msgpack.unpackb(frame)
                if msg["type"] == "data" and time.monotonic() > warm_until:
                    samples[name].append((now - msg["data"]["sent_at"]) * 1e3)
        finally:
            ws.close()

    threads = [threading.Thread(target=reader, args=(name, urls[key]))
               for name, key in (("direct", "ws"), ("door", "door"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {name: percentiles([s / 1e3 for s in got]) for name, got in samples.items()}


def spread(rounds: list[dict], key: str) -> str:
    values = [r[key] for r in rounds]
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per round and path")
    parser.add_argument("--seconds", type=float, default=10.0, help="WebSocket measuring time")
    parser.add_argument("--baseline", type=Path,
                        help="another checkout whose control and door are measured alongside")
    args = parser.parse_args()
    procs: list[subprocess.Popen] = []
    try:
        urls = start_stack(procs, args.baseline)
        Client(f"http://{urls['door']}").call("POST", f"/api/sessions/create?custom_code={SESSION}")
        print(f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
              f"{platform.release()}, Python {platform.python_version()}, "
              f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"door {urls['door']} (nginx) -> control {urls['control']}, ws {urls['ws']}; "
              f"{args.rounds} rounds x {args.requests} requests, alternating")
        print(f"{'case':<42}{'p50 ms median (range)':>26}{'p99 ms median (range)':>26}")
        door_p50 = None
        for path, label in (("/api/sessions", "GET /api/sessions"), ("/", "GET / (no broker call)")):
            got = rest_rounds(urls, path, args.rounds, args.requests)
            for name in got:
                print(f"{label + ' ' + name:<42}{spread(got[name], 'p50_ms'):>26}"
                      f"{spread(got[name], 'p99_ms'):>26}")
            for prefix in ("", "baseline "):
                if prefix + "door" not in got:
                    continue
                door, direct = got[prefix + "door"], got[prefix + "direct"]
                ratios = [d["p50_ms"] / c["p50_ms"] for d, c in zip(door, direct)]
                added = [d["p50_ms"] - c["p50_ms"] for d, c in zip(door, direct)]
                print(f"{'  ' + prefix + 'door/direct p50':<42}{statistics.median(ratios):>14.2f}x "
                      f"({min(ratios):.2f}-{max(ratios):.2f}); hop adds {statistics.median(added):.3f} ms")
            for name in ("door", "direct"):
                if "baseline " + name in got:
                    for key in ("p50_ms", "p99_ms"):
                        ratios = [a[key] / b[key] for a, b in zip(got[name], got["baseline " + name])]
                        print(f"{'  ' + name + ' new/baseline ' + key[:3]:<42}"
                              f"{statistics.median(ratios):>14.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
            if path == "/api/sessions":
                door_p50 = statistics.median(r["p50_ms"] for r in got["door"])
        ws = ws_latency(urls, args.seconds)
        for name in ("direct", "door"):
            s = ws[name]
            print(f"{'WebSocket send->client ' + name:<42}{s['p50_ms']:>17.3f}{'':>9}{s['p99_ms']:>17.3f}"
                  f"   ({s['n']} packets)")
        print(f"{'  hop adds (p50 / p99)':<42}{ws['door']['p50_ms'] - ws['direct']['p50_ms']:>17.3f}"
              f"{'':>9}{ws['door']['p99_ms'] - ws['direct']['p99_ms']:>17.3f}")
        ok = door_p50 is not None and door_p50 <= TARGET_DOOR_P50_MS
        print(f"{'PASS' if ok else 'FAIL'}: GET /api/sessions through the door p50 {door_p50:.3f} ms "
              f"(target <= {TARGET_DOOR_P50_MS} ms)")
        return 0 if ok else 1
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
