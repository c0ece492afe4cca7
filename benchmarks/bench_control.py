"""REST latency of the control plane: a playback command (pause/resume) and GET /api/sessions,
with one client and with 4 concurrent clients; prints p50/p99/mean per case.

Starts its own `python -m broker` and `python -m control` (OS-chosen endpoints, a temporary state
file) unless --url points at a running control. Prints PASS/FAIL against issue 12's targets for
one client (p50 <= 0.35 ms, p99 <= 0.8 ms, for pause/resume and GET /api/sessions) and exits 1 on a
FAIL. Each client keeps one HTTP/1.1 keep-alive
connection, as `requests.Session` or a browser would. Also measures the broker's REQ/REP round trip
on its own (same commands, no HTTP) and a route that never calls the broker (GET /, the floor of
waitress + Flask), so the cost of each layer is visible in the same run.

    .venv/bin/python benchmarks/bench_control.py [--requests 2000] [--url http://127.0.0.1:8000]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from protocol.client import BrokerClient  # noqa: E402

SESSION = "bench-control"
# Issue 12's targets for direct control calls, one client (p50, p99 in ms).
TARGETS = {"pause_resume": (0.35, 0.8), "sessions": (0.35, 0.8)}


def start(module: str, env: dict[str, str]) -> tuple[subprocess.Popen, dict[str, str]]:
    """Run `python -m module`, return it and the key=value pairs of its READY line."""
    proc = subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    for line in proc.stdout:
        if "READY " in line:
            fields = line[line.index("READY "):].split()[2:]
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, dict(f.split("=", 1) for f in fields if "=" in f)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit(f"{module} did not become ready")


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, url: str):
        parsed = urlparse(url)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)

    def call(self, method: str, path: str) -> float:
        start = time.perf_counter()
        self.conn.request(method, path)
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - start
        if resp.status != 200:
            raise SystemExit(f"{method} {path} -> {resp.status} {body[:200]!r}")
        return elapsed


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": pick(0.50) * 1e3, "p99_ms": pick(0.99) * 1e3,
            "mean_ms": statistics.fmean(ordered) * 1e3, "n": len(ordered)}


def run_case(url: str, op: str, clients: int, n: int, warmup: int) -> dict[str, float]:
    """``n`` timed requests per client after ``warmup`` untimed ones; clients run concurrently."""
    paths = {"floor": [("GET", "/")],
             "sessions": [("GET", "/api/sessions")],
             "pause_resume": [("POST", f"/api/control/{SESSION}/pause"),
                              ("POST", f"/api/control/{SESSION}/resume")]}[op]
    results: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients)

    def worker(i: int) -> None:
        client = Client(url)
        for k in range(warmup):
            client.call(*paths[k % len(paths)])
        barrier.wait()
        results[i] = [client.call(*paths[k % len(paths)]) for k in range(n)]
        client.conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    stats = percentiles([x for r in results for x in r])
    stats["req_per_s"] = clients * n / wall
    return stats


def zmq_hop(endpoint: str, n: int) -> dict[str, dict[str, float]]:
    """The broker's REQ/REP round trip alone (what the HTTP layer adds comes on top)."""
    client = BrokerClient(endpoint)
    try:
        out = {}
        for name, cmds in (("list", [("list", {})]),
                           ("pause_resume", [("pause", {"code": SESSION}), ("resume", {"code": SESSION})])):
            for k in range(200):
                client.request(*cmds[k % len(cmds)])
            samples = []
            for k in range(n):
                start = time.perf_counter()
                client.request(*cmds[k % len(cmds)])
                samples.append(time.perf_counter() - start)
            out[name] = percentiles(samples)
        return out
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running control (default: start broker + control here)")
    parser.add_argument("--broker", help="its broker's REQ endpoint (for the ZMQ-hop figures)")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per client")
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    procs: list[subprocess.Popen] = []
    url, broker_ep = args.url, args.broker
    try:
        if url is None:
            tmp = tempfile.mkdtemp(prefix="bench-control-")
            env = {k: v for k, v in os.environ.items() if not k.startswith("PHANTOM_")}
            env.update(PYTHONUNBUFFERED="1", PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*",
                       PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                       PHANTOM_FEEDBACK_ENDPOINT="tcp://127.0.0.1:*",
                       PHANTOM_FEEDBACK_PUSH_ENDPOINT="tcp://127.0.0.1:*",
                       PHANTOM_STATE_PATH=f"{tmp}/state.json")
            broker, ready = start("broker", env)
            procs.append(broker)
            broker_ep = ready["control"]
            control, ready = start("control", {**env, "PHANTOM_CONTROL_PORT": "0",
                                               "PHANTOM_LOG_LEVEL": "INFO",
                                               "PHANTOM_CONTROL_ENDPOINT": broker_ep})
            procs.append(control)
            url = ready["url"]
        setup = Client(url)
        setup.conn.request("POST", "/api/sessions/create", json.dumps({"custom_code": SESSION}),
                           {"Content-Type": "application/json"})
        resp = setup.conn.getresponse()
        resp.read()
        if resp.status not in (200, 409):
            raise SystemExit(f"cannot create the bench session: {resp.status}")
        setup.conn.close()

        print(f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
              f"{platform.release()}, Python {platform.python_version()}")
        print(f"control: {url}   requests per client: {args.requests} (+{args.warmup} warm-up)")
        print(f"{'case':<34}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'req/s':>9}")
        cases = (("pause_resume", "POST pause/resume", (1, 4)),
                 ("sessions", "GET /api/sessions", (1, 4)),
                 ("floor", "GET / (no broker call)", (1,)))
        verdicts = []
        for op, label, client_counts in cases:
            for clients in client_counts:
                s = run_case(url, op, clients, args.requests, args.warmup)
                print(f"{label + f' ({clients} client' + ('s)' if clients > 1 else ')'):<34}"
                      f"{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}{s['mean_ms']:>9.3f}{s['req_per_s']:>9.0f}")
                if clients == 1 and op in TARGETS:
                    verdicts.append((label, s, TARGETS[op]))
        if broker_ep:
            for name, s in zmq_hop(broker_ep, args.requests).items():
                print(f"{'ZMQ REQ/REP only: ' + name:<34}{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}"
                      f"{s['mean_ms']:>9.3f}")
        failed = 0
        for label, s, (p50, p99) in verdicts:
            ok = s["p50_ms"] <= p50 and s["p99_ms"] <= p99
            failed += not ok
            print(f"{'PASS' if ok else 'FAIL'} {label} (1 client): p50 {s['p50_ms']:.3f} ms "
                  f"(target <= {p50}), p99 {s['p99_ms']:.3f} ms (target <= {p99})")
        return 1 if failed else 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
