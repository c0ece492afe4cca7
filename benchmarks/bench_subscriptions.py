"""What one data connection that floods the broker with subscriptions costs, measured from outside.

Starts `python -m broker` on OS-chosen ports, subscribes a bystander to one session (its packets
are watched throughout), then one SUB socket (client-side high-water mark off, so libzmq sends
every subscription) subscribes to ``--count`` distinct prefixes of one kind:

  sessions   ``session/flood-<i>/``: valid codes; each would create a session
  junk       ``flood/<i>/xxx...``: names no topic the broker publishes
  mixed      half of each

Printed, once the broker's resident memory and session count have not moved for 2 s:
the time that took, the broker's RSS before and after (``/proc/<pid>/status``), its sessions,
the `metrics` counters about subscriptions (absent in brokers that do not count them), the log
lines the flood caused, and the bystander's packets: gaps in its sequence numbers and its worst
lateness (``sent_at - scheduled_at``) during the flood. Then the flooder closes and the broker's
counts and RSS are shown again.

usage: python benchmarks/bench_subscriptions.py [--kind sessions|junk|mixed] [--count N]
                                                [--length BYTES] [--limit N]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from protocol import encode_request, parse_reply  # noqa: E402
from protocol.wire import session_topic  # noqa: E402


class Broker:
    def __init__(self, env: dict[str, str]):
        self.tmp = tempfile.TemporaryDirectory()
        full = {k: v for k, v in os.environ.items() if not k.startswith("PHANTOM_")}
        full.update(PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*", PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                    PHANTOM_FEEDBACK_ENDPOINT="tcp://127.0.0.1:*",
                    PHANTOM_FEEDBACK_PUSH_ENDPOINT="tcp://127.0.0.1:*",
                    PHANTOM_STATE_PATH=str(Path(self.tmp.name) / "state.json"), PYTHONUNBUFFERED="1",
                    **env)
        self.proc = subprocess.Popen([sys.executable, "-m", "broker"], cwd=REPO, env=full,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        ready = threading.Event()
        fields: dict[str, str] = {}

        def read() -> None:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                if "READY broker" in line:
                    fields.update(f.split("=", 1) for f in line.split() if "=" in f)
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120):
            raise SystemExit("broker did not start:\n" + "\n".join(self.lines[-20:]))
        self.pub, self.control = fields["pub"], fields["control"]
        self.ctx = zmq.Context()
        self.req = self.ctx.socket(zmq.REQ)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.connect(self.control)

    def call(self, cmd: str, **args):
        self.req.send(encode_request(cmd, args))
        if not self.req.poll(10_000):
            raise SystemExit(f"broker did not answer {cmd}")
        return parse_reply(self.req.recv())

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.ctx.destroy(linger=0)
        self.proc.terminate()
        self.proc.wait(15)
        self.tmp.cleanup()


def prefixes(kind: str, count: int, length: int) -> list[bytes]:
    def junk(i: int) -> bytes:
        return f"flood/{i}/".encode().ljust(length, b"x")

    def session(i: int) -> bytes:
        return session_topic(f"flood-{i}")

    if kind == "sessions":
        return [session(i) for i in range(count)]
    if kind == "junk":
        return [junk(i) for i in range(count)]
    return [p for i in range(count // 2) for p in (session(i), junk(i))]


class Bystander(threading.Thread):
    """Receives one session's packets; counts sequence gaps and the worst lateness."""

    def __init__(self, ctx: zmq.Context, pub: str, code: str):
        super().__init__(daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(pub)
        self.sock.setsockopt(zmq.SUBSCRIBE, session_topic(code, "packet"))
        self.stop = threading.Event()
        self.packets = self.gaps = 0
        self.worst_ms = 0.0
        self.last: int | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(100):
                continue
            data = msgpack.unpackb(self.sock.recv_multipart()[1])["data"]
            seq = data["sequence_number"]
            if self.last is not None and seq > self.last + 1:
                self.gaps += seq - self.last - 1
            self.last = seq
            self.packets += 1
            self.worst_ms = max(self.worst_ms, (data["sent_at"] - data["scheduled_at"]) * 1000)
        self.sock.close(linger=0)


def settle(b: Broker, quiet_s: float = 2.0, timeout_s: float = 300.0) -> float:
    """Wait until RSS (to 0.5 MiB) and the session count stay put for ``quiet_s``; the time taken."""
    start = time.monotonic()
    last, since = None, time.monotonic()
    while time.monotonic() - start < timeout_s:
        now = (round(b.rss_mib() * 2), b.call("ping")["sessions"])
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return since - start
        time.sleep(0.1)
    return float("nan")


def subscription_figures(b: Broker) -> str:
    m = b.call("metrics")
    keys = ("subscriptions_held", "subscriber_connections", "subscriptions_refused",
            "subscriptions_ignored")
    shown = {k: m[k] for k in keys if k in m}
    return (f"sessions {m['total_sessions']}, "
            + (", ".join(f"{k} {v}" for k, v in shown.items()) or "no subscription counters"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("sessions", "junk", "mixed"), default="mixed")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--length", type=int, default=79, help="bytes per junk prefix")
    parser.add_argument("--limit", type=int, help="PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION")
    args = parser.parse_args()
    env = {} if args.limit is None else {"PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION": str(args.limit)}
    b = Broker(env)
    try:
        b.call("create", code="bystander")
        watcher = Bystander(b.ctx, b.pub, "bystander")
        watcher.start()
        time.sleep(1.0)
        settle(b, 1.0)
        rss0, lines0 = b.rss_mib(), len(b.lines)
        flooder = b.ctx.socket(zmq.SUB)
        flooder.setsockopt(zmq.LINGER, 0)
        flooder.setsockopt(zmq.SNDHWM, 0)
        flooder.connect(b.pub)
        time.sleep(0.3)
        for prefix in prefixes(args.kind, args.count, args.length):
            flooder.setsockopt(zmq.SUBSCRIBE, prefix)
        took = settle(b)
        rss1 = b.rss_mib()
        caused = b.lines[lines0:]
        print(f"flood: {args.count} {args.kind} prefixes (junk {args.length} B) from one SUB socket, "
              f"limit {args.limit or 'default'}; settled in {took:.1f} s")
        print(f"  broker RSS {rss0:.1f} -> {rss1:.1f} MiB (+{rss1 - rss0:.1f}); {subscription_figures(b)}")
        print(f"  log lines caused: {len(caused)}" + (f"; first: {caused[0][:160]}" if caused else ""))
        print(f"  bystander: {watcher.packets} packets, {watcher.gaps} missing sequence numbers, "
              f"worst lateness {watcher.worst_ms:.1f} ms")
        flooder.close(linger=0)
        time.sleep(1.0)
        settle(b, 1.0)
        print(f"  after the flooder closed: broker RSS {b.rss_mib():.1f} MiB; {subscription_figures(b)}")
        watcher.stop.set()
        watcher.join(5)
    finally:
        b.close()


if __name__ == "__main__":
    main()
