"""Where GET /api/sessions spends its time, layer by layer, from outside: the same client
(bench_control's keep-alive http.client) against servers that each do one layer more of control's
work (benchmarks/floor_servers.py), then control itself, all against one broker.

    socket           a one-thread socket server sending a canned answer (client + kernel)
    waitress         waitress (control's settings) + a bare WSGI callable, canned answer
    waitress_broker  + the broker round trip, shaping and JSON (all of control but the framework)
    flask            + a plain Flask route doing the same
    control          python -m control (flask-openapi3, guard, Prometheus histograms)

and the broker's REQ/REP round trip alone, back to back and with a 0.3 ms sleep between calls (as
a server's threads sleep between requests; a sleeping thread, and an idle vCPU, wake up slowly).
Windows alternate between the servers (rotating order)
so all see the same machine load; each row is the median over windows with the range, and what it
adds to the rung before it (median of the per-window differences).

    .venv/bin/python benchmarks/bench_control_floor.py [--windows 10] [--requests 1000]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_control import (REPO, Client, cell, stack_env, stop_all, create_session, percentiles, spread,  # noqa: E402
                           start, start_command)
from floor_servers import RUNGS  # noqa: E402

from protocol.client import BrokerClient  # noqa: E402

LABELS = {"socket": "socket server, canned answer", "waitress": "waitress, bare WSGI, canned",
          "waitress_broker": "waitress + broker + shaping", "flask": "plain Flask on waitress",
          "control": "control (python -m control)"}


def window(client: Client, n: int) -> dict[str, float]:
    return percentiles([client.call("GET", "/api/sessions") for _ in range(n)])


def zmq_window(client: BrokerClient, n: int, gap_s: float = 0.0) -> dict[str, float]:
    samples = []
    for _ in range(n):
        start_at = time.perf_counter()
        client.request("list")
        samples.append(time.perf_counter() - start_at)
        if gap_s:
            time.sleep(gap_s)
    return percentiles(samples)


GAP_S = 0.0003


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per window")
    args = parser.parse_args()
    procs: list[subprocess.Popen] = []
    try:
        env = stack_env("bench-floor-")
        broker, ready = start("broker", env)
        procs.append(broker)
        endpoint = ready["control"]
        control, ready = start("control", {**env, "PHANTOM_CONTROL_PORT": "0",
                                           "PHANTOM_CONTROL_ENDPOINT": endpoint})
        procs.append(control)
        create_session(ready["url"])
        urls = {}
        for rung in RUNGS:
            proc, got = start_command([sys.executable, str(HERE / "floor_servers.py"), rung,
                                       "--broker", endpoint], env)
            procs.append(proc)
            urls[rung] = got["url"]
        urls["control"] = ready["url"]
        clients = {name: Client(url) for name, url in urls.items()}
        zmq = BrokerClient(endpoint)
        names = [*clients, "zmq", "zmq_gap"]
        for name, client in clients.items():
            for _ in range(200):
                client.call("GET", "/api/sessions")
        zmq_window(zmq, 200)

        print(f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
              f"{platform.release()}, Python {platform.python_version()}, "
              f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"GET /api/sessions (one session), {args.windows} windows x {args.requests} requests, "
              f"alternating; median over windows (min-max)")
        got: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for w in range(args.windows):
            for name in names[w % len(names):] + names[:w % len(names)]:
                if name.startswith("zmq"):
                    got[name].append(zmq_window(zmq, args.requests, GAP_S if name == "zmq_gap" else 0))
                else:
                    got[name].append(window(clients[name], args.requests))
        zmq.close()
        print(f"{'server':<32}{'p50 ms':>22}{'p99 ms':>22}{'adds at p50':>14}")
        previous = None
        for name in clients:
            added = ("" if previous is None else
                     f"{statistics.median(a['p50_ms'] - b['p50_ms'] for a, b in zip(got[name], got[previous])):+.3f}")
            print(f"{LABELS[name]:<32}{cell(got[name], 'p50_ms'):>22}{cell(got[name], 'p99_ms'):>22}"
                  f"{added:>14}")
            previous = name
        print(f"{'ZMQ REQ/REP list alone':<32}{cell(got['zmq'], 'p50_ms'):>22}"
              f"{cell(got['zmq'], 'p99_ms'):>22}")
        print(f"{'  the same, 0.3 ms sleep between':<32}{cell(got['zmq_gap'], 'p50_ms'):>22}"
              f"{cell(got['zmq_gap'], 'p99_ms'):>22}")
        waitress_and_hop = spread(got["waitress_broker"], "p50_ms")[0]
        print(f"waitress + the broker hop, before any framework: p50 {waitress_and_hop:.3f} ms "
              f"(control's direct-call target is p50 <= 0.35 ms)")
        return 0
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
