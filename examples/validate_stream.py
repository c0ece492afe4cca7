"""Stream validator: receive a session for N seconds and check its rate, timing and sequence.

In the spirit of the original PhantomLink's `test_client.py`: prints the stream metadata, then
packets received, rate, interval mean and std, sequence gaps and latency, then PASS/FAIL lines;
exits 1 if any check fails. Rate and interval are those of the session's clock (sequence numbers
per second), and a gap is a lost packet only beyond what the broker counted as skipped for being
late (`packets_skipped`, read from the control API before and after). Run it against `make run`:

    .venv/bin/python examples/validate_stream.py 10                 # a fresh session, 10 s
    .venv/bin/python examples/validate_stream.py 5 --session mine   # an existing session
    .venv/bin/python examples/validate_stream.py 10 --format json

Without --session it creates a session through the control API (POST /api/sessions/create) and
deletes it afterwards; if the control API is not reachable it makes up a code instead (connecting
creates the session).
"""
from __future__ import annotations

import argparse
import os
import json
import secrets
import statistics
import sys
import time
import urllib.error
import urllib.request

import msgpack
import simple_websocket

RATE_TOLERANCE = 0.02       # +-2% of the nominal rate (the original checks 25 ms +- 0.5 ms)
INTERVAL_TOLERANCE = 0.02


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer $PHANTOM_AUTH_TOKEN` when the stack requires a token, else nothing."""
    token = os.environ.get("PHANTOM_AUTH_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seconds", nargs="?", type=float, default=10.0, help="how long to listen")
    parser.add_argument("--url", default="ws://localhost:8001", help="the WebSocket bridge")
    parser.add_argument("--control", default="http://localhost:8000", help="the control REST API")
    parser.add_argument("--session", help="validate this session instead of creating one")
    parser.add_argument("--format", choices=("msgpack", "json"), default="msgpack")
    args = parser.parse_args()

    code, created = (args.session, False) if args.session else create_session(args.control)
    try:
        skipped_before = packets_skipped(args.control, code)
        meta, arrivals = listen(args.url, code, args.format, args.seconds)
        skipped = packets_skipped(args.control, code)
        if skipped is not None and skipped_before is not None:
            skipped -= skipped_before
    except (OSError, simple_websocket.ConnectionError) as exc:
        print(f"cannot stream from {args.url}: {exc} (is `make run` running?)", file=sys.stderr)
        return 2
    except simple_websocket.ConnectionClosed as exc:
        print(f"closed by the bridge: {exc.reason} {exc.message or ''}", file=sys.stderr)
        return 2
    finally:
        if created:
            delete_session(args.control, code)
    return report(meta, arrivals, args.seconds, skipped)


def packets_skipped(control: str, code: str) -> int | None:
    """The broker's count of this session's packets skipped as too late (None if unknown)."""
    try:
        with urllib.request.urlopen(f"{control}/api/stats/{code}", timeout=5) as reply:
            return int(json.load(reply)["packets_skipped"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def create_session(control: str) -> tuple[str, bool]:
    request = urllib.request.Request(f"{control}/api/sessions/create", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json", **auth_headers()})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return json.load(reply)["session_code"], True
    except (OSError, ValueError, KeyError) as exc:
        code = f"validate-{secrets.token_hex(3)}"
        print(f"(control API at {control} unavailable: {exc}; using session {code})", file=sys.stderr)
        return code, False


def delete_session(control: str, code: str) -> None:
    request = urllib.request.Request(f"{control}/api/sessions/{code}", method="DELETE",
                                     headers=auth_headers())
    try:
        urllib.request.urlopen(request, timeout=5).close()
    except OSError:
        pass


def listen(url: str, code: str, fmt: str, seconds: float) -> tuple[dict, list[tuple[float, float, dict]]]:
    """The first metadata, and (monotonic, wall) arrival times with data of every packet."""
    ws = simple_websocket.Client.connect(f"{url}/stream/{code}?format={fmt}", headers=auth_headers())
    decode = msgpack.unpackb if fmt == "msgpack" else json.loads
    meta, arrivals = None, []
    try:
        end = None
        while end is None or time.monotonic() < end:
            frame = ws.receive(timeout=5)
            now, wall = time.monotonic(), time.time()
            if frame is None:
                break
            message = decode(frame)
            if message["type"] == "metadata":
                if meta is None:
                    meta, end = message["data"], now + seconds     # the clock starts at metadata
                continue
            arrivals.append((now, wall, message["data"]))
    finally:
        ws.close()
    return meta or {}, arrivals


def report(meta: dict, arrivals: list[tuple[float, float, dict]], seconds: float,
           skipped: int | None) -> int:
    session = meta.get("session", {})
    speed = session.get("speed", 1.0) or 1.0
    print("=== Stream Metadata ===")
    for key in ("dataset", "total_packets", "frequency_hz", "num_channels", "bin_size_ms"):
        print(f"  {key}: {meta.get(key)}")
    print(f"  session: {session.get('code')} ({session.get('state')}, speed {speed:g}, "
          f"filter {session.get('filter')})")

    times = [t for t, _, _ in arrivals]
    intervals = [(b - a) * 1000 for a, b in zip(times, times[1:])]
    seqs = [d["sequence_number"] for _, _, d in arrivals]
    gaps = sum(max(0, b - a - 1) for a, b in zip(seqs, seqs[1:]))
    # The broker skips (and counts) packets it could not send on time; only the rest are lost.
    lost = gaps if skipped is None else max(0, gaps - skipped)
    latencies = sorted((wall - d["sent_at"]) * 1000 for _, wall, d in arrivals if d.get("sent_at"))
    elapsed = times[-1] - times[0] if len(times) > 1 else 0.0
    ticks = seqs[-1] - seqs[0] if len(seqs) > 1 else 0
    rate = ticks / elapsed if elapsed > 0 else 0.0              # the session's clock, skips included
    mean = elapsed * 1000 / ticks if ticks else float("nan")    # per tick of that clock
    std = statistics.pstdev(intervals) if len(intervals) > 1 else float("nan")
    print("\n=== Validation Results ===")
    print(f"  packets_received: {len(arrivals)}")
    print(f"  elapsed_seconds: {elapsed:.3f}")
    print(f"  actual_rate_hz: {rate:.2f}")
    print(f"  interval_mean_ms: {mean:.3f}")
    print(f"  interval_std_ms: {std:.3f}")
    print(f"  sequence_gaps: {gaps} ({'unknown' if skipped is None else skipped} skipped by the "
          f"broker as too late, counted in packets_skipped)")
    if latencies:
        print(f"  latency_ms (broker send -> receive): p50 {percentile(latencies, 50):.2f}, "
              f"p99 {percentile(latencies, 99):.2f}, max {latencies[-1]:.2f}")

    nominal_hz = (meta.get("frequency_hz") or 40.0) * speed
    period_ms = 1000.0 / nominal_hz
    checks = [
        ("Interval timing", abs(mean - period_ms) <= period_ms * INTERVAL_TOLERANCE,
         f"{mean:.2f}ms ≈ {period_ms:.2f}ms"),
        ("Stream rate", abs(rate - nominal_hz) <= nominal_hz * RATE_TOLERANCE and
         ticks >= 0.9 * seconds * nominal_hz, f"{rate:.2f}Hz ≈ {nominal_hz:.2f}Hz"),
        ("Sequence integrity", lost == 0 and len(seqs) > 1,
         "no packet lost" if lost == 0 else f"{lost} packets lost on the way"),
    ]
    print("\n=== Timing Analysis ===")
    for name, ok, detail in checks:
        print(f"  {'✓' if ok else '✗'} {name}: {'PASS' if ok else 'FAIL'} ({detail})")
    return 0 if all(ok for _, ok, _ in checks) else 1


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


if __name__ == "__main__":
    sys.exit(main())
