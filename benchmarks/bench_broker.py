"""Broker benchmarks: timing, scale, drift and throughput, measured by one subscriber process.

Starts `python -m broker` on OS-chosen ports (its state in a temporary directory), then this
process is the one subscriber. Figures (see docs/broker.md for the recorded results):

  jitter      1 session at speed 1: inter-arrival std at the subscriber (target <= 0.1 ms)
  many100     100 sessions, all consumed: lateness p99 (target <= 0.3 ms)
  many1000    1000 sessions, 10 consumed: lateness p99 (<= 1 ms), broker CPU (<= 70 %), RSS (<= 200 MB)
  drift       packets (ticks: sequence numbers played) vs the count the subscriber's elapsed
              time implies (target: exact +-1); received packets and gaps shown beside
  throughput  a whole replay at speed 1000 to one subscriber (target >= 20,000 packets/s)

Lateness is `sent_at - scheduled_at` carried by each packet the subscriber consumed (the broker's
scheduling error); arrival lateness (`receive time - scheduled_at`, which adds the ZeroMQ hop and
this subscriber's own queueing) is printed beside it.

usage: python benchmarks/bench_broker.py [scenario ...] [--seconds S] [--drift-minutes M]
                                        [--priority auto|normal|high|realtime] [--broker-cpu C]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from protocol import encode_request, parse_reply  # noqa: E402
from protocol.wire import session_topic  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PRIORITY = "auto"     # set from --priority: auto, normal, high (nice -10) or realtime (SCHED_FIFO 10)
BROKER_CPU = "auto"   # set from --broker-cpu: PHANTOM_BROKER_CPU (auto, none or a CPU number)


def raise_priority() -> None:
    """Give this subscriber the priority the broker gets from PHANTOM_BROKER_PRIORITY."""
    if PRIORITY == "high":
        os.nice(-10)
    elif PRIORITY == "realtime":
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))


class Broker:
    """A broker child process and a REQ socket to it."""

    def __init__(self, **env: str):
        self.tmp = tempfile.TemporaryDirectory()
        full = {k: v for k, v in os.environ.items() if not k.startswith("PHANTOM_")}
        full.update(PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*", PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                    PHANTOM_FEEDBACK_ENDPOINT="tcp://127.0.0.1:*",
                    PHANTOM_FEEDBACK_PUSH_ENDPOINT="tcp://127.0.0.1:*",
                    PHANTOM_STATE_PATH=str(Path(self.tmp.name) / "state.json"), PYTHONUNBUFFERED="1",
                    PHANTOM_BROKER_PRIORITY=PRIORITY, PHANTOM_BROKER_CPU=BROKER_CPU, **env)
        self.proc = subprocess.Popen([sys.executable, "-m", "broker"], cwd=REPO, env=full,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        for line in self.proc.stdout:
            if "READY broker" in line:
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                self.pub, self.control = fields["pub"], fields["control"]
                break
            if time.monotonic() > deadline:
                raise SystemExit("broker did not start")
        else:
            raise SystemExit("broker exited before READY")
        self.ctx = zmq.Context()
        self.req = self.ctx.socket(zmq.REQ)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.connect(self.control)

    def call(self, cmd: str, **args):
        self.req.send(encode_request(cmd, args))
        if not self.req.poll(10_000):
            raise SystemExit(f"broker did not answer {cmd}")
        return parse_reply(self.req.recv())

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def subscriber(self, *prefixes: bytes) -> zmq.Socket:
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 200_000)
        sub.connect(self.pub)
        for p in prefixes:
            sub.setsockopt(zmq.SUBSCRIBE, p)
        return sub

    def close(self) -> None:
        self.ctx.destroy(linger=0)
        self.proc.terminate()
        self.proc.wait(15)
        self.tmp.cleanup()


def wait_meta(sub: zmq.Socket, codes: set[str], timeout: float = 10.0) -> None:
    """Wait until a meta message of every code arrived: the subscriptions are live."""
    pending = {session_topic(c, "meta") for c in codes}
    deadline = time.monotonic() + timeout
    while pending:
        if not sub.poll(int(max(0, deadline - time.monotonic()) * 1000)):
            raise SystemExit(f"no meta for {len(pending)} sessions")
        topic, _ = sub.recv_multipart()
        pending.discard(topic)


def collect(sub: zmq.Socket, seconds: float | None = None, count: int | None = None):
    """(arrival wall time, topic, payload bytes) for every packet, for `seconds` or `count` packets."""
    out = []
    append = out.append
    end = time.monotonic() + (seconds if seconds is not None else 3600)
    while time.monotonic() < end and (count is None or len(out) < count):
        if not sub.poll(1000):
            if count is not None:
                break
            continue
        topic, payload = sub.recv_multipart()
        if topic.endswith(b"/packet"):
            append((time.time(), topic, payload))
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))]


def lateness_report(packets) -> dict[str, float]:
    decoded = [(t, msgpack.unpackb(p)["data"]) for t, _, p in packets]
    late = [(d["sent_at"] - d["scheduled_at"]) * 1e3 for _, d in decoded]
    arrival = [(t - d["scheduled_at"]) * 1e3 for t, d in decoded]
    return {"packets": len(decoded), "late_p50_ms": pct(late, 50), "late_p99_ms": pct(late, 99),
            "late_max_ms": max(late), "arrival_p50_ms": pct(arrival, 50),
            "arrival_p99_ms": pct(arrival, 99)}


def gaps(packets) -> int:
    """Missing sequence numbers, per session."""
    last: dict[bytes, int] = {}
    missing = 0
    for _, topic, payload in packets:
        seq = msgpack.unpackb(payload)["data"]["sequence_number"]
        if topic in last:
            missing += seq - last[topic] - 1
        last[topic] = seq
    return missing


def show(name: str, figures: dict) -> None:
    text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"{name:11s} {text}", flush=True)


def bench_jitter(seconds: float) -> None:
    b = Broker()
    try:
        b.call("create", code="solo")
        sub = b.subscriber(session_topic("solo"))
        wait_meta(sub, {"solo"})
        packets = collect(sub, seconds)
        arrivals = [t for t, _, _ in packets]
        intervals = [(y - x) * 1e3 for x, y in zip(arrivals, arrivals[1:])]
        show("jitter", {"intervals": len(intervals), "mean_ms": statistics.mean(intervals),
                        "std_ms": statistics.pstdev(intervals), "min_ms": min(intervals),
                        "max_ms": max(intervals), "gaps": gaps(packets), **lateness_report(packets)})
    finally:
        b.close()


def bench_many(total: int, consumed: int, seconds: float) -> None:
    # this process is one subscriber of every consumed session: one connection holds them all
    b = Broker(PHANTOM_MAX_SESSIONS=str(max(1000, total)),
               PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION=str(max(64, consumed)))
    try:
        codes = [f"bench-{i}" for i in range(total)]
        for code in codes:
            b.call("create", code=code)
        watched = codes[:consumed]
        sub = b.subscriber(*(session_topic(c) for c in watched))
        wait_meta(sub, set(watched))
        cpu0, t0 = b.cpu_seconds(), time.monotonic()
        packets = collect(sub, seconds)
        cpu = (b.cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
        m = b.call("metrics")
        skipped = sum(s["packets_skipped"] for s in m["sessions"].values())
        show(f"many{total}", {"sessions": total, "consumed": consumed, "gaps": gaps(packets),
                              "skipped": skipped, **lateness_report(packets),
                              "broker_cpu_pct": cpu, "broker_rss_mb": b.rss_mb()})
    finally:
        b.close()


def bench_drift(minutes: float, seconds: float) -> None:
    """Play `minutes` of recording in `seconds` of wall time; compare packets with elapsed time."""
    speed = minutes * 60 / seconds
    b = Broker()
    try:
        b.call("create", code="drift", speed=speed, paused=True)
        sub = b.subscriber(session_topic("drift"))
        wait_meta(sub, {"drift"})
        b.call("resume", code="drift")
        packets = collect(sub, seconds)
        interval = 0.025 / speed
        first = msgpack.unpackb(packets[0][2])["data"]
        t_first = packets[0][0]
        worst = 0
        for n, (t, _, _) in enumerate(packets, start=1):
            expected = int((t - t_first) / interval) + 1
            worst = max(worst, abs(n - expected))
        last = msgpack.unpackb(packets[-1][2])["data"]
        elapsed = packets[-1][0] - t_first
        implied = elapsed / interval + 1
        ticks = last["sequence_number"] - first["sequence_number"] + 1
        show("drift", {"speed": speed, "recording_minutes": minutes, "wall_s": elapsed,
                       "implied": implied, "ticks": ticks, "tick_error": ticks - implied,
                       "received": len(packets), "received_error": len(packets) - implied,
                       "worst_running_error": worst, "gaps": gaps(packets),
                       # measured by this subscriber's clock, not computed from the broker's
                       # own deadline formula: first-to-last arrival vs the ticks it carried
                       "arrival_span_error_ms": (elapsed - (ticks - 1) * interval) * 1e3})
    finally:
        b.close()


def bench_throughput() -> None:
    b = Broker()
    try:
        total = b.call("dataset")["total_packets"]
        b.call("create", code="burst", speed=1000, loop=False, paused=True)
        sub = b.subscriber(session_topic("burst"))
        wait_meta(sub, {"burst"})
        cpu0 = b.cpu_seconds()
        b.call("resume", code="burst")
        packets = collect(sub, count=total)
        span = packets[-1][0] - packets[0][0]
        cpu = b.cpu_seconds() - cpu0
        state = b.call("get", code="burst")
        build = b.call("metrics")["sessions"]["burst"]["network_latency_ms"]["mean"]
        show("throughput", {"packets": len(packets), "of": total, "seconds": span,
                            "packets_per_s": (len(packets) - 1) / span, "gaps": gaps(packets),
                            "skipped": state["packets_skipped"], "state": state["state"],
                            "broker_cpu_s": cpu, "build_send_us": build * 1e3})
    finally:
        b.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*",
                        default=["jitter", "many100", "many1000", "drift", "throughput"])
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per scenario")
    parser.add_argument("--drift-minutes", type=float, default=10.0,
                        help="minutes of recording the drift run plays (in --seconds of wall time)")
    parser.add_argument("--priority", choices=["auto", "normal", "high", "realtime"], default="auto",
                        help="broker priority (PHANTOM_BROKER_PRIORITY; default: the broker's own "
                             "default, auto); high and realtime give this subscriber the same (root)")
    parser.add_argument("--broker-cpu", default="auto",
                        help="PHANTOM_BROKER_CPU for the broker (auto, none or a CPU number)")
    args = parser.parse_args()
    global PRIORITY, BROKER_CPU
    PRIORITY, BROKER_CPU = args.priority, args.broker_cpu
    raise_priority()
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
          f"load avg {os.getloadavg()[0]:.2f}, python {platform.python_version()}, "
          f"priority {args.priority}, broker cpu {args.broker_cpu}", flush=True)
    for name in args.scenarios:
        if name == "jitter":
            bench_jitter(args.seconds)
        elif name == "many100":
            bench_many(100, 100, args.seconds)
        elif name == "many1000":
            bench_many(1000, 10, args.seconds)
        elif name == "drift":
            bench_drift(args.drift_minutes, max(args.seconds, 30.0))
        elif name == "throughput":
            bench_throughput()
        else:
            parser.error(f"unknown scenario {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
