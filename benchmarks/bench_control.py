"""REST latency of the control plane: a playback command (pause/resume) and GET /api/sessions,
with one client and with 4 concurrent clients; prints p50/p99/mean per case.

Starts its own `python -m broker` and `python -m control` (OS-chosen endpoints, a temporary state
file) unless --url points at a running control. Each case is measured in several windows (--windows,
each --requests timed requests per client) and reported as the median over windows with the range
in brackets, so one noisy stretch of a shared machine shows as spread, not as the figure. Prints
PASS/FAIL against the targets for one client (p50 <= 0.35 ms and p99 <= 0.8 ms over all the
windows' requests together, for pause/resume and GET /api/sessions) and exits 1 on a FAIL. Each client keeps one HTTP/1.1
keep-alive connection, as `requests.Session` or a browser would. Also measures the broker's
REQ/REP round trip on its own (same commands, no HTTP) and a route that never calls the broker
(GET /, the floor of waitress + Flask), so the cost of each layer is visible in the same run.

--consumed N also creates N sessions that play while the requests are timed, each consumed by a
ZMQ subscriber in this process (N x 40 packets/s), as when clients stream while someone drives
the sessions over REST: the broker then waits for packet deadlines between requests.

--baseline DIR also starts the control of another checkout (e.g. `git worktree add /tmp/base main`)
against the same broker and alternates windows between the two, so a before/after comparison is
a ratio taken under the same machine load (the broker and the client are this checkout's).
With --baseline-broker the baseline's control talks to a broker of its own, started from the
baseline checkout (with its own consumed sessions under --consumed), so a change to the broker is
judged the same way; the ZMQ-hop figures stay this checkout's.

    .venv/bin/python benchmarks/bench_control.py [--requests 1000] [--windows 5] [--baseline DIR]
                                                 [--baseline-broker] [--consumed N]
    .venv/bin/python benchmarks/bench_control.py --url http://127.0.0.1:8000 [--broker tcp://...]
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
from typing import Callable
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from protocol.client import BrokerClient  # noqa: E402

SESSION = "bench-control"
# The targets for direct control calls, one client (p50, p99 in ms).
TARGETS = {"pause_resume": (0.35, 0.8), "sessions": (0.35, 0.8)}


def start(module: str, env: dict[str, str],
          cwd: Path = REPO) -> tuple[subprocess.Popen, dict[str, str]]:
    """Run `python -m module` in ``cwd``, return it and the key=value pairs of its READY line."""
    return start_command([sys.executable, "-m", module], env, cwd)


def start_command(argv: list[str], env: dict[str, str],
                  cwd: Path = REPO) -> tuple[subprocess.Popen, dict[str, str]]:
    """Run ``argv``, return it and the key=value pairs of its READY line."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, text=True,
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
    raise SystemExit(f"{' '.join(argv[1:])} did not become ready")


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
    ends: list[float] = []
    began: list[float] = []
    barrier = threading.Barrier(clients, action=lambda: began.append(time.perf_counter()))

    def worker(i: int) -> None:
        client = Client(url)
        for k in range(warmup):
            client.call(*paths[k % len(paths)])
        barrier.wait()
        results[i] = [client.call(*paths[k % len(paths)]) for k in range(n)]
        ends.append(time.perf_counter())
        client.conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(ends) - began[0]     # the timed requests only, not the connections and warm-up
    samples = [x for r in results for x in r]
    stats = percentiles(samples)
    stats["req_per_s"] = clients * n / wall
    stats["samples"] = samples      # type: ignore[assignment]  # pooled for the verdict
    return stats


def zmq_hop(endpoint: str, n: int, windows: int) -> dict[str, list[dict[str, float]]]:
    """The broker's REQ/REP round trip alone (what the HTTP layer adds comes on top)."""
    client = BrokerClient(endpoint)
    try:
        out: dict[str, list[dict[str, float]]] = {}
        for name, cmds in (("list", [("list", {})]),
                           ("pause_resume", [("pause", {"code": SESSION}), ("resume", {"code": SESSION})])):
            for k in range(200):
                client.request(*cmds[k % len(cmds)])
            out[name] = []
            for _ in range(windows):
                samples = []
                for k in range(n):
                    start = time.perf_counter()
                    client.request(*cmds[k % len(cmds)])
                    samples.append(time.perf_counter() - start)
                out[name].append(percentiles(samples))
        return out
    finally:
        client.close()


def spread(windows: list[dict[str, float]], key: str) -> tuple[float, float, float]:
    """Median, min and max of one figure over windows."""
    values = [w[key] for w in windows]
    return statistics.median(values), min(values), max(values)


def cell(windows: list[dict[str, float]], key: str) -> str:
    mid, low, high = spread(windows, key)
    return f"{mid:.3f} ({low:.3f}-{high:.3f})"


def _create(client: Client, code: str) -> None:
    """Create session ``code`` over REST (an existing one is fine); exits on any other answer."""
    client.conn.request("POST", "/api/sessions/create", json.dumps({"custom_code": code}),
                        {"Content-Type": "application/json"})
    resp = client.conn.getresponse()
    resp.read()
    if resp.status not in (200, 409):
        raise SystemExit(f"cannot create {code}: {resp.status}")


def create_session(url: str) -> None:
    setup = Client(url)
    _create(setup, SESSION)
    setup.conn.close()


def consume(url: str, pub: str, count: int) -> Callable[[], None]:
    """Create ``count`` playing sessions and drain their packets on a thread; returns its stop."""
    import zmq
    from protocol.wire import session_topic

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(pub)
    client = Client(url)
    for i in range(count):
        code = f"{SESSION}-consumed-{i}"
        _create(client, code)
        sub.setsockopt(zmq.SUBSCRIBE, session_topic(code, "packet"))
    client.conn.close()
    stopping = threading.Event()
    received = [0]

    def drain() -> None:
        while not stopping.is_set():
            if sub.poll(100):
                while True:
                    try:
                        sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    received[0] += 1

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while received[0] < count and time.monotonic() < deadline:
        time.sleep(0.05)
    if received[0] < count:
        raise SystemExit("the consumed sessions' packets do not arrive")

    def stop() -> None:
        stopping.set()
        thread.join(2)
        ctx.destroy(linger=0)
    return stop


def stack_env(prefix: str) -> dict[str, str]:
    """The environment of a broker (and the control after it) on OS-chosen endpoints, with its
    state in a fresh temporary directory named ``prefix``."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHANTOM_")}
    env.update(PYTHONUNBUFFERED="1", PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*",
               PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
               PHANTOM_FEEDBACK_ENDPOINT="tcp://127.0.0.1:*",
               PHANTOM_FEEDBACK_PUSH_ENDPOINT="tcp://127.0.0.1:*",
               PHANTOM_STATE_PATH=f"{tmp}/state.json")
    return env


def stop_all(procs: list[subprocess.Popen]) -> None:
    """Stop child processes, newest first: SIGTERM, then SIGKILL after 10 s."""
    for proc in reversed(procs):
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running control (default: start broker + control here)")
    parser.add_argument("--broker", help="its broker's REQ endpoint (for the ZMQ-hop figures)")
    parser.add_argument("--requests", type=int, default=1000,
                        help="timed requests per client and window")
    parser.add_argument("--windows", type=int, default=5, help="measuring windows per case")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--consumed", type=int, default=0,
                        help="sessions playing and consumed while the requests are timed")
    parser.add_argument("--baseline", type=Path,
                        help="another checkout whose control is measured alongside, windows alternating")
    parser.add_argument("--baseline-broker", action="store_true",
                        help="the baseline's control gets a broker of its own, from that checkout")
    parser.add_argument("--priority", default="auto", choices=("auto", "normal", "high", "realtime"),
                        help="PHANTOM_BROKER_PRIORITY of the brokers started here")
    parser.add_argument("--broker-cpu", default="auto",
                        help="PHANTOM_BROKER_CPU of the brokers started here (auto, none or a CPU)")
    args = parser.parse_args()
    if args.baseline_broker and args.baseline is None:
        parser.error("--baseline-broker goes with --baseline")
    if args.baseline is not None and args.url is not None:
        parser.error("--baseline starts its own broker and controls: not with --url")
    if args.consumed and args.url is not None:
        parser.error("--consumed needs the broker this script starts: not with --url")

    procs: list[subprocess.Popen] = []
    url, broker_ep = args.url, args.broker
    targets: dict[str, str] = {}
    stop_consuming: list[Callable[[], None]] = []
    try:
        if url is None:
            env = {**stack_env("bench-control-"), "PHANTOM_BROKER_PRIORITY": args.priority,
                   "PHANTOM_BROKER_CPU": args.broker_cpu}
            broker, ready = start("broker", env)
            procs.append(broker)
            broker_ep, pub_ep = ready["control"], ready["pub"]
            control_env = {**env, "PHANTOM_CONTROL_PORT": "0", "PHANTOM_LOG_LEVEL": "INFO",
                           "PHANTOM_CONTROL_ENDPOINT": broker_ep}
            control, ready = start("control", control_env)
            procs.append(control)
            url = ready["url"]
            if args.baseline is not None:
                base_env, base_pub = control_env, pub_ep
                if args.baseline_broker:
                    base_tmp = tempfile.mkdtemp(prefix="bench-control-baseline-")
                    base_broker, base_broker_ready = start(
                        "broker", {**env, "PHANTOM_STATE_PATH": f"{base_tmp}/state.json"},
                        cwd=args.baseline.resolve())
                    procs.append(base_broker)
                    base_pub = base_broker_ready["pub"]
                    base_env = {**control_env, "PHANTOM_CONTROL_ENDPOINT": base_broker_ready["control"]}
                base, base_ready = start("control", base_env, cwd=args.baseline.resolve())
                procs.append(base)
                targets["baseline"] = base_ready["url"]
                if args.baseline_broker:
                    create_session(targets["baseline"])
                    if args.consumed:
                        stop_consuming.append(consume(targets["baseline"], base_pub, args.consumed))
        targets = {"control": url, **targets}
        create_session(url)
        if args.consumed:
            stop_consuming.append(consume(url, pub_ep, args.consumed))

        print(f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
              f"{platform.release()}, Python {platform.python_version()}, "
              f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
              + ("" if args.url else f"; broker priority {args.priority}, cpu {args.broker_cpu}"))
        print(f"control: {url}" + (f"   baseline: {targets['baseline']} ({args.baseline}"
                                    f"{', its own broker' if args.baseline_broker else ''})"
                                    if "baseline" in targets else ""))
        if args.consumed:
            print(f"while {args.consumed} other sessions play, each consumed by a subscriber")
        print(f"{args.windows} windows x {args.requests} requests per client (+{args.warmup} warm-up); "
              f"median over windows (min-max)")
        print(f"{'case':<34}{'p50 ms':>22}{'p99 ms':>22}{'mean ms':>9}{'req/s':>8}")
        cases = (("pause_resume", "POST pause/resume", (1, 4)),
                 ("sessions", "GET /api/sessions", (1, 4)),
                 ("floor", "GET / (no broker call)", (1,)))
        verdicts = []
        for op, label, client_counts in cases:
            for clients in client_counts:
                got: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
                names = list(targets)
                for w in range(args.windows):
                    for name in names[w % len(names):] + names[:w % len(names)]:
                        got[name].append(run_case(targets[name], op, clients, args.requests,
                                                  args.warmup if w == 0 else 20))
                for name in names:
                    wins = got[name]
                    what = f"{label} ({clients} client" + ("s)" if clients > 1 else ")")
                    if name == "baseline":
                        what = "  baseline"
                    print(f"{what:<34}{cell(wins, 'p50_ms'):>22}{cell(wins, 'p99_ms'):>22}"
                          f"{spread(wins, 'mean_ms')[0]:>9.3f}{spread(wins, 'req_per_s')[0]:>8.0f}")
                if "baseline" in got:
                    for key in ("p50_ms", "p99_ms"):
                        ratios = [a[key] / b[key] for a, b in zip(got["control"], got["baseline"])]
                        print(f"{'  control/baseline ' + key[:3]:<34}{statistics.median(ratios):>10.2f}x "
                              f"({min(ratios):.2f}-{max(ratios):.2f} over windows)")
                if clients == 1 and op in TARGETS:
                    verdicts.append((label, got["control"], TARGETS[op]))
        if broker_ep:
            for name, wins in zmq_hop(broker_ep, args.requests, args.windows).items():
                print(f"{'ZMQ REQ/REP only: ' + name:<34}{cell(wins, 'p50_ms'):>22}"
                      f"{cell(wins, 'p99_ms'):>22}{spread(wins, 'mean_ms')[0]:>9.3f}")
        failed = 0
        for label, wins, (p50, p99) in verdicts:
            pooled = percentiles([x for w in wins for x in w["samples"]])
            got50, got99 = pooled["p50_ms"], pooled["p99_ms"]
            ok = got50 <= p50 and got99 <= p99
            failed += not ok
            print(f"{'PASS' if ok else 'FAIL'} {label} (1 client): p50 {got50:.3f} ms "
                  f"(target <= {p50}), p99 {got99:.3f} ms (target <= {p99}), over all "
                  f"{pooled['n']} requests")
        return 1 if failed else 0
    finally:
        for stop in stop_consuming:
            stop()
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
