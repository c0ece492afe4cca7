"""Bare pyzmq peers for benchmarks/bench_scale.py and bench_eval.py: each does only what the broker
cannot do without (wait for a deadline or an answer, send the packet's bytes), so a benchmark can
say, in the same run on the same machine, how far the broker is from what Python, pyzmq and the
machine's thread wake-ups allow at the least.

    python benchmarks/floor_peers.py publish --payload FILE --codes s0,s50,... [--grid-ms 5]
    python benchmarks/floor_peers.py lockstep --payload FILE

``publish``: one stream per code at 40 Hz (deadlines 25 ms apart, the streams' phases spread over
the period by the golden ratio as the broker's restored sessions are, then, with ``--grid-ms`` above
0, moved onto that grid at most broker.wakegroups.GROUP_SIZE to a point, as the broker's wake-up
groups move sessions consumed mid-playback); per turn one ``select`` on
the PUB socket's descriptor until the earliest deadline, then each due stream's packet, topic
``session/{code}/packet`` and the file's bytes (a packet the broker sent), as two frames.
``lockstep``: a PUB and a ROUTER; after a decoder's first message on the ROUTER, send the packet
(topic ``session/floor/packet``), block until the ROUTER has the answer (at most 0.2 s), send it
again, until SIGTERM.

Both take the broker's own scheduling and timer slack before they start (broker.scheduling, PHANTOM_BROKER_PRIORITY
and PHANTOM_BROKER_CPU, default auto: real-time priority and every thread on one CPU when
permitted), print one line ``READY floor mode=... pub=... [feedback=...] scheduling=...`` and stop
on SIGTERM.
"""
from __future__ import annotations

import argparse
import heapq
import logging
import math
import os
import select
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import zmq  # noqa: E402

from broker import scheduling  # noqa: E402
from broker.__main__ import _tighten_timer_slack  # noqa: E402
from broker.wakegroups import GROUP_SIZE  # noqa: E402
from protocol.wire import KIND_PACKET, session_topic  # noqa: E402

PERIOD_S = 0.025
GOLDEN = 0.6180339887498949
stopping = False


def _stop(*_: object) -> None:
    global stopping
    stopping = True


def _schedule() -> str:
    """The broker's start-up scheduling, timer slack and its loop's placement; what the process
    got."""
    _tighten_timer_slack()
    level = scheduling.start(os.environ.get("PHANTOM_BROKER_PRIORITY", "auto"),
                             os.environ.get("PHANTOM_BROKER_CPU", "auto"))
    scheduling.Scheduling(os.environ.get("PHANTOM_BROKER_PRIORITY", "auto"),
                          os.environ.get("PHANTOM_BROKER_CPU", "auto")).started()
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    return f"{level},cpus={cpus}"


def phases(count: int, grid_s: float) -> list[float]:
    """Each stream's first deadline after the start, in periods: golden-ratio phases, each moved
    to the nearest grid point after it with fewer than GROUP_SIZE streams (grid_s 0: as they are)."""
    natural = [(i * GOLDEN) % 1.0 + 1 for i in range(count)]
    if grid_s <= 0:
        return natural
    points = round(PERIOD_S / grid_s)
    load = [0] * points
    out = []
    for phase in natural:
        first = math.ceil(phase * points)
        point = next(p for p in range(first, first + points) if load[p % points] < GROUP_SIZE)
        load[point % points] += 1
        out.append(point / points)
    return out


def publish(payload: bytes, codes: list[str], grid_s: float) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    got = _schedule()
    print(f"READY floor mode=publish pub=tcp://127.0.0.1:{port} scheduling={got}", flush=True)
    fd = pub.getsockopt(zmq.FD)
    start = math.ceil(time.monotonic() / PERIOD_S) * PERIOD_S     # a grid point
    heap = [(start + phase * PERIOD_S, i, session_topic(code, KIND_PACKET))
            for i, (code, phase) in enumerate(zip(codes, phases(len(codes), grid_s)))]
    heapq.heapify(heap)
    while not stopping:
        timeout = heap[0][0] - time.monotonic()
        if timeout > 0:
            select.select([fd], (), (), timeout)
        now = time.monotonic()
        while heap[0][0] <= now:
            due, i, topic = heap[0]
            pub.send(topic, zmq.SNDMORE)
            pub.send(payload)
            heapq.heapreplace(heap, (due + PERIOD_S, i, topic))
    ctx.destroy(0)


def lockstep(payload: bytes) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    router = ctx.socket(zmq.ROUTER)
    pub_port = pub.bind_to_random_port("tcp://127.0.0.1")
    router_port = router.bind_to_random_port("tcp://127.0.0.1")
    got = _schedule()
    print(f"READY floor mode=lockstep pub=tcp://127.0.0.1:{pub_port} "
          f"feedback=tcp://127.0.0.1:{router_port} scheduling={got}", flush=True)
    while not stopping:
        if router.poll(200):               # a decoder's first message: it is subscribed
            router.recv_multipart()
            break
    while not stopping:
        pub.send(b"session/floor/packet", zmq.SNDMORE)
        pub.send(payload)
        if router.poll(200):               # no answer in 0.2 s (a packet sent before the
            router.recv_multipart()        # decoder's subscription took): send again
    ctx.destroy(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("publish", "lockstep"))
    parser.add_argument("--payload", required=True, help="a file holding one packet's bytes")
    parser.add_argument("--codes", default="", help="publish: the streams' session codes, comma-separated")
    parser.add_argument("--grid-ms", type=float, default=0.0,
                        help="publish: group the streams' deadlines on this grid (the broker's "
                             "PHANTOM_WAKE_GRID_MS); 0 leaves their phases spread")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _stop)
    payload = Path(args.payload).read_bytes()
    if args.mode == "publish":
        codes = [c for c in args.codes.split(",") if c]
        if not codes:
            parser.error("publish needs --codes")
        publish(payload, codes, args.grid_ms / 1000.0)
    else:
        lockstep(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
