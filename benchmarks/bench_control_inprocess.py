"""Control's own cost per request, in process: routing, body parsing and validation, shaping and
JSON encoding, with no HTTP server and no broker (a stand-in answers every command at once).

This isolates what the web layer adds (e.g. flask-openapi3's pydantic validation) from the
network and the broker, which benchmarks/bench_control.py measures end to end. ``--repo`` runs
another checkout's control (e.g. an export of main) in the same way, so two versions can be
compared as a ratio on one machine in one sitting. Two reference rows follow: a plain Flask app
(no flask-openapi3, guard or metrics) whose route returns the same shaped session list, and one
returning ``{"a": 1}``: what Flask itself costs.

    .venv/bin/python benchmarks/bench_control_inprocess.py [--requests 20000] [--repo DIR]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

SESSION = {"code": "bench", "state": "playing", "created_at": 1.7e9, "last_accessed": 1.7e9,
           "subscribers": 1, "current_packet": 10, "speed": 1.0, "loop": True, "filter": None,
           "noise": None, "total_packets": 11748, "playlist_packets": 11748,
           "elapsed_seconds": 0.25, "sequence_number": 10, "packets_sent": 10,
           "packets_skipped": 0}

CASES = (
    ("POST pause (no body)", "POST", "/api/control/bench/pause", b"", 200),
    ("POST speed {speed: 2}", "POST", "/api/control/bench/speed", b'{"speed": 2}', 200),
    ("POST seek ?position_seconds=1", "POST", "/api/control/bench/seek?position_seconds=1", b"", 200),
    ("POST create (full body)", "POST", "/api/sessions/create",
     b'{"custom_code": "bench", "speed": 2, "loop": true, "filter": {"target_id": 0}, '
     b'"noise": "light"}', 200),
    ("POST speed {speed: \"x\"} (400)", "POST", "/api/control/bench/speed", b'{"speed": "x"}', 400),
    ("GET /api/sessions", "GET", "/api/sessions", b"", 200),
    ("GET /", "GET", "/", b"", 200),
)


class StandIn:
    """Answers like the broker, instantly."""
    endpoint = "inproc://stand-in"

    def request(self, cmd, args=None, budget_ms=None):
        if cmd == "list":
            return {"sessions": [SESSION]}
        if cmd == "dataset":
            return {"bin_size_ms": 25}
        return SESSION

    def close(self):
        pass


def environ(method: str, target: str, body: bytes) -> dict:
    path, _, query = target.partition("?")
    return {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
            "SERVER_NAME": "bench", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
            "SERVER_PROTOCOL": "HTTP/1.1", "CONTENT_LENGTH": str(len(body)),
            # Host as http.client sends it to control: a loopback address and port
            "CONTENT_TYPE": "application/json" if body else "", "HTTP_HOST": "127.0.0.1:8002",
            "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False}


def time_case(app, method: str, target: str, body: bytes, n: int) -> tuple[list[float], str]:
    status = []

    def start_response(s, headers, exc_info=None):
        status.append(s)

    samples = []
    for _ in range(n):
        env = environ(method, target, body)
        start = time.perf_counter()
        b"".join(app(env, start_response))
        samples.append(time.perf_counter() - start)
    return samples, status[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent),
                        help="checkout whose control to measure (default: this one)")
    args = parser.parse_args()
    sys.path.insert(0, args.repo)
    from control import create_app
    from protocol.config import load_config

    from control import shapes
    from flask import Flask

    config = load_config({})
    app = create_app(config, broker_client=StandIn())
    plain = Flask("plain")
    plain.add_url_rule("/api/sessions", "sessions",
                       lambda: shapes.session_list(StandIn().request("list")["sessions"], config))
    plain.add_url_rule("/", "root", lambda: {"a": 1})
    print(f"control from {args.repo}; {args.requests} requests per case after 1000 warm-up")
    print(f"{'case':<36}{'p50 us':>9}{'p99 us':>9}{'mean us':>9}  status")
    wrong = 0
    cases = [(label, app, *rest) for label, *rest in CASES] + [
        ("plain Flask: GET /api/sessions", plain, "GET", "/api/sessions", b"", 200),
        ("plain Flask: GET / -> {a: 1}", plain, "GET", "/", b"", 200)]
    for label, app, method, target, body, expected in cases:
        time_case(app, method, target, body, 1000)
        samples, status = time_case(app, method, target, body, args.requests)
        if int(status.split()[0]) != expected:  # a refused request would time the refusal
            print(f"{label}: expected {expected}, got {status}", file=sys.stderr)
            wrong += 1
        ordered = sorted(samples)
        p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
        print(f"{label:<36}{p50 * 1e6:>9.1f}{p99 * 1e6:>9.1f}"
              f"{statistics.fmean(samples) * 1e6:>9.1f}  {status}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
