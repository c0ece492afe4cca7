"""Analysis script: subscribe to a session over ZeroMQ, collect packets, fit a linear velocity decoder.

Talks to the broker directly (no bridge): one REQ command to set the session up, then a SUB socket
on the session's topic. Needs only pyzmq, msgpack and numpy, so it is the template for a script of
your own. Run it against `make run`:

    .venv/bin/python examples/zmq_decoder.py --packets 4000 --speed 20

Packets are collected at `--speed` times real time; the decoder is ridge regression from the last
`--history` bins of spike counts (plus a bias) to hand velocity, fitted on the first 75% of the
observed bins and scored (R^2) on the rest.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import msgpack
import numpy as np
import zmq
import zmq.auth



def curve_context() -> zmq.Context:
    """A Context whose sockets use CURVE when PHANTOM_CURVE_DIR names the stack's certificates
    (made by `python -m protocol.curve keygen DIR`; this script needs server.key and client.key_secret)."""
    ctx = zmq.Context()
    directory = os.environ.get("PHANTOM_CURVE_DIR", "").strip()
    if directory:
        public, secret = zmq.auth.load_certificate(Path(directory) / "client.key_secret")
        server, _ = zmq.auth.load_certificate(Path(directory) / "server.key")
        ctx.setsockopt(zmq.CURVE_PUBLICKEY, public)
        ctx.setsockopt(zmq.CURVE_SECRETKEY, secret)
        ctx.setsockopt(zmq.CURVE_SERVERKEY, server)
    return ctx

def command(ctx: zmq.Context, endpoint: str, cmd: str, args: dict, timeout_ms: int = 2000):
    """One request/reply with the broker; a fresh socket each time so a timeout never leaks."""
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(msgpack.packb({"v": 1, "cmd": cmd, "args": args}))
        if not sock.poll(timeout_ms):
            sys.exit(f"broker at {endpoint} did not answer {cmd!r} within {timeout_ms} ms")
        reply = msgpack.unpackb(sock.recv())
    finally:
        sock.close()
    if not reply["ok"]:
        sys.exit(f"{cmd} failed: {reply['error']['code']}: {reply['error']['message']}")
    return reply["result"]


def collect(ctx: zmq.Context, pub: str, code: str, n_packets: int, timeout_s: float):
    """Spike counts, velocity and observed flags of ``n_packets`` consecutive packets of ``code``."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.connect(pub)
    sub.setsockopt(zmq.SUBSCRIBE, f"session/{code}/".encode())  # the '/' keeps 'abcd' out
    counts, velocity, observed, gaps, last_seq, bin_ms = [], [], [], 0, None, None
    try:
        while len(counts) < n_packets:
            if not sub.poll(int(timeout_s * 1000)):
                sys.exit(f"no data from {pub} for {timeout_s} s (is the broker running?)")
            topic, payload = sub.recv_multipart()
            message = msgpack.unpackb(payload)
            if message["type"] != "data":
                continue  # the metadata message every new subscriber gets first
            data = message["data"]
            seq = data["sequence_number"]
            gaps += 0 if last_seq is None else seq - last_seq - 1
            last_seq = seq
            kin = data["kinematics"]
            counts.append(data["spikes"]["spike_counts"])
            velocity.append([np.nan if kin["vx"] is None else kin["vx"],
                             np.nan if kin["vy"] is None else kin["vy"]])
            observed.append(data["observed"])
            bin_ms = data["spikes"]["bin_size_ms"]
    finally:
        sub.close()
    return np.asarray(counts, float), np.asarray(velocity, float), np.asarray(observed), gaps, bin_ms


def history_features(counts: np.ndarray, history: int) -> np.ndarray:
    """Row t holds counts[t-history+1 .. t] flattened, plus a bias column."""
    n, units = counts.shape
    padded = np.vstack([np.zeros((history - 1, units)), counts])
    lagged = [padded[h:h + n] for h in range(history)]
    return np.hstack(lagged + [np.ones((n, 1))])


def ridge_r2(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    split = int(len(x) * 0.75)
    xtr, ytr, xte, yte = x[:split], y[:split], x[split:], y[split:]
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
    mu[-1], sd[-1] = 0.0, 1.0  # keep the bias column
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    w = np.linalg.solve(xtr.T @ xtr + alpha * np.eye(x.shape[1]), xtr.T @ ytr)
    resid = ((yte - xte @ w) ** 2).sum(0)
    total = ((yte - yte.mean(0)) ** 2).sum(0)
    return float(np.mean(1 - resid / total))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pub", default="tcp://127.0.0.1:5555", help="broker data endpoint")
    parser.add_argument("--control", default="tcp://127.0.0.1:5556", help="broker command endpoint")
    parser.add_argument("--session", default="zmq-decoder", help="session code (created if missing)")
    parser.add_argument("--packets", type=int, default=4000)
    parser.add_argument("--speed", type=float, default=20.0, help="playback speed while collecting")
    parser.add_argument("--history", type=int, default=5, help="bins of spike history per sample")
    parser.add_argument("--alpha", type=float, default=100.0, help="ridge penalty")
    opts = parser.parse_args()

    ctx = curve_context()
    sessions = {s["code"] for s in command(ctx, opts.control, "list", {})["sessions"]}
    if opts.session not in sessions:
        command(ctx, opts.control, "create", {"code": opts.session})
    command(ctx, opts.control, "seek", {"code": opts.session, "packet_id": 0})
    command(ctx, opts.control, "speed", {"code": opts.session, "speed": opts.speed})
    command(ctx, opts.control, "resume", {"code": opts.session})
    counts, velocity, observed, gaps, bin_ms = collect(ctx, opts.pub, opts.session, opts.packets, 10.0)
    command(ctx, opts.control, "speed", {"code": opts.session, "speed": 1.0})

    x = history_features(counts, opts.history)[observed]
    y = velocity[observed]
    print(f"packets: {len(counts)}  observed: {int(observed.sum())}  sequence gaps: {gaps}")
    print(f"mean rate: {counts[observed].mean() * 1000 / bin_ms:.2f} spikes/s per unit")
    print(f"ridge velocity decoder, {opts.history} bins of history: R^2 = {ridge_r2(x, y, opts.alpha):.3f}")
    ctx.term()


if __name__ == "__main__":
    main()
