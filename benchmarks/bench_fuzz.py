"""Fuzz benchmark: garbage at every socket of a running stack, then check nothing broke.

Starts a broker, control and the WebSocket bridge (real processes, OS-chosen ports), creates a few
"victim" sessions (paused, with settings of their own), then sends:

- REST: ``--rest`` malformed or hostile requests to control (random methods, paths, queries,
  headers, bodies: bytes, broken and deep JSON, wrong types, extreme numbers) plus raw garbage
  request lines; every one names a fuzz session or none, never a victim;
- ZMQ: ``--zmq`` garbage frames on the command socket (DEALER: random frame counts and bytes, random
  msgpack requests), ``--zmq`` on the data socket (XSUB: random subscribe, unsubscribe and other
  frames, random prefixes) and a fifth as many garbage predictions on the feedback sockets;
- WebSocket: ``--ws`` garbage messages (random opcodes, sizes, unmasked frames, bytes after the
  handshake) over fresh connections.

It passes when no process died, no answer was a 5xx other than 503, no command reply was
`internal`, no process logged a traceback, the victims are unchanged, and every process still
serves a normal request afterwards. Prints the figures and PASS/FAIL; exit 1 on FAIL.

    .venv/bin/python benchmarks/bench_fuzz.py              # 10,000 / 10,000 x 2 / 1,000
    .venv/bin/python benchmarks/bench_fuzz.py --rest 500 --zmq 500 --ws 100 --seed 1
"""
from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import msgpack
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from processes import Proc, base_env  # noqa: E402  (tests/processes.py: real child processes)
from protocol import encode_request, parse_reply  # noqa: E402

VICTIMS = {f"victim-keep-{i}": {"speed": 1.5 + i, "loop": bool(i % 2), "filter": {"target_id": i % 3},
                                "noise": "light" if i % 2 else None} for i in range(5)}
VICTIM_FIELDS = ("code", "state", "speed", "loop", "filter", "noise", "current_packet", "subscribers")


# -- the stack -------------------------------------------------------------------------------------
def start_stack(tmp: Path) -> dict[str, Proc]:
    broker = Proc.module("broker", base_env(PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*",
                                            PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                                            PHANTOM_FEEDBACK_ENDPOINT="tcp://127.0.0.1:*", PHANTOM_FEEDBACK_PUSH_ENDPOINT="tcp://127.0.0.1:*",
                                            PHANTOM_STATE_PATH=str(tmp / "state.json"),
                                            PHANTOM_LOG_LEVEL="WARNING"))
    broker.wait_ready(60)
    env = dict(PHANTOM_PUB_ENDPOINT=broker.ready["pub"], PHANTOM_CONTROL_ENDPOINT=broker.ready["control"],
               PHANTOM_FEEDBACK_ENDPOINT=broker.ready["feedback"], PHANTOM_LOG_LEVEL="WARNING")
    control = Proc.module("control", base_env(PHANTOM_CONTROL_PORT="0", **env))
    ws = Proc.module("bridges.ws", base_env(PHANTOM_WS_PORT="0", **env))
    control.wait_ready(30)
    ws.wait_ready(30)
    return {"broker": broker, "control": control, "ws": ws}


def command(endpoint: str, cmd: str, **args):
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(encode_request(cmd, args))
        if not sock.poll(5000):
            raise RuntimeError(f"broker did not answer {cmd}")
        return parse_reply(sock.recv())
    finally:
        sock.close()


def victims_state(endpoint: str) -> dict[str, dict]:
    sessions = {s["code"]: s for s in command(endpoint, "list")["sessions"]}
    return {code: {f: sessions[code].get(f) for f in VICTIM_FIELDS} if code in sessions else None
            for code in VICTIMS}


def make_victims(endpoint: str) -> None:
    for code, opts in VICTIMS.items():
        command(endpoint, "create", code=code, paused=True, **{k: v for k, v in opts.items() if v is not None})


# -- garbage generators ----------------------------------------------------------------------------
def fuzz_code(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:
        return f"fz-{rng.randrange(10 ** 6)}"
    if kind < 0.7:
        return rng.choice(["", "-", "A", "..", "%00", "%2e%2e", "a" * 300, "ünï", "a/b", "victim"])
    return "".join(rng.choice("abcz09-_./%~ ") for _ in range(rng.randrange(1, 40)))


def fuzz_value(rng: random.Random, depth: int = 0):
    """A random JSON-ish value: scalars of every type and range, and small nested containers."""
    pick = rng.randrange(12 if depth < 3 else 8)
    if pick < 3:
        return (None, True, False)[pick]
    if pick == 3:
        return rng.randrange(-2 ** 70, 2 ** 70)
    if pick == 4:
        return rng.random() * 10.0 ** rng.randrange(-5, 308)
    if pick == 5:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(30)))
    if pick in (6, 7):
        return rng.choice(["", -0.0, "light", "off", 0, -1, 1e-320])
    if pick == 8:
        return [fuzz_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 9:
        return {rng.choice(["speed", "packet_id", "noise", "filter", "loop", "custom_code", "x", ""]):
                fuzz_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if pick == 10:
        return {"noise_std": fuzz_value(rng, depth + 1), "seed": fuzz_value(rng, depth + 1)}
    return {"target_id": fuzz_value(rng, depth + 1)}


def fuzz_body(rng: random.Random) -> bytes | None:
    kind = rng.randrange(8)
    if kind == 0:
        return None
    if kind == 1:
        return os.urandom(rng.randrange(1, 300))
    if kind == 2:
        return b"[" * rng.randrange(100, 100_000)
    if kind == 3:
        return json.dumps(fuzz_value(rng)).encode()[: rng.randrange(1, 200)]      # truncated
    if kind == 4:
        return b'{"speed": NaN, "packet_id": Infinity}'
    if kind == 5:
        return b"x" * rng.choice([10, 70_000, 200_000])
    return json.dumps(fuzz_value(rng)).encode()


def fuzz_request(rng: random.Random) -> tuple[str, str, bytes | None, dict[str, str]]:
    method = rng.choice(["GET", "POST", "POST", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"])
    code = fuzz_code(rng)
    path = rng.choice([
        "/api/sessions/create", f"/api/sessions/{code}", f"/api/control/{code}/"
        + rng.choice(["pause", "resume", "seek", "speed", "loop", "filter", "noise", "stop", "x"]),
        f"/api/stats/{code}", f"/api/trials/{rng.randrange(-5, 10 ** 20)}",
        f"/api/trials/by-target/{code}", "/api/sessions", "/api/sessions/cleanup", "/metrics",
        "/metrics/prometheus", "/health", "/docs", "/openapi.json", "/" + code, "/api/" + "a/" * 200])
    if rng.random() < 0.3:
        path += "?" + "&".join(f"{fuzz_code(rng)}={fuzz_code(rng)}" for _ in range(rng.randrange(1, 4)))
    headers = {}
    if rng.random() < 0.7:
        headers["Content-Type"] = rng.choice(["application/json", "application/json", "application/json", "text/plain", "application/json; charset=latin-1",
                                              "multipart/form-data", "", "application/x-www-form-urlencoded"])
    if rng.random() < 0.2:
        headers["Authorization"] = rng.choice(["Bearer", "Bearer x", "Basic Zm9vOmJhcg==", "\u00ff" * 3])
    if rng.random() < 0.1:
        headers["Origin"] = rng.choice(["https://evil.example", "null", "http://localhost:1"])
    if rng.random() < 0.1:
        headers["Host"] = rng.choice(["evil.example", "localhost", "", "[::1]:0"])
    if rng.random() < 0.1:
        headers["Accept"] = rng.choice(["text/plain", "*/*", "application/json;q=0", "garbage"])
    body = fuzz_body(rng)
    if "victim-keep" in path:
        path = "/api/sessions/create"                 # never address a victim
    return method, quote(path, safe="/?=&%"), body, headers


# -- the three fuzzers -----------------------------------------------------------------------------
def fuzz_rest(url: str, n: int, rng: random.Random) -> collections.Counter:
    host, port = url.removeprefix("http://").split(":")
    statuses: collections.Counter = collections.Counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    for i in range(n):
        method, path, body, headers = fuzz_request(rng)
        try:
            conn.request(method, path, body, headers)
            resp = conn.getresponse()
            resp.read()
            statuses[resp.status] += 1
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
        except (http.client.HTTPException, OSError, UnicodeError) as exc:
            statuses[f"client-side {type(exc).__name__}"] += 1
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.close()
    for _ in range(max(1, n // 50)):                      # raw garbage request lines
        statuses[raw_http(host, int(port), rng)] += 1
    return statuses


def raw_http(host: str, port: int, rng: random.Random) -> str | int:
    garbage = rng.choice([os.urandom(rng.randrange(1, 2000)), b"GET " + os.urandom(50) + b" HTTP/1.1\r\n\r\n",
                          b"POST /api/sessions/create HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                          b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"a" * 70_000 + b"\r\n\r\n",
                          b"POST /api/sessions/create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            head = sock.recv(64)
    except OSError:
        return "raw: closed"
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else "raw: no status"


def fuzz_command_socket(endpoint: str, n: int, rng: random.Random) -> collections.Counter:
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    replies: collections.Counter = collections.Counter()
    expected = 0
    for i in range(n):
        kind = rng.randrange(5)
        if kind == 0:
            frames = [os.urandom(rng.randrange(0, 100)) for _ in range(rng.randrange(1, 4))]
        else:
            payload = msgpack.packb({"v": rng.choice([1, 1, 2, None]),
                                     "cmd": rng.choice(["get", "seek", "speed", "create", "noise", "filter",
                                                        "trial", "list", "ping", "nope", 7]),
                                     "args": {rng.choice(["code", "speed", "packet_id", "noise", "x"]):
                                              _wire_safe(fuzz_value(rng)) for _ in range(rng.randrange(3))}})
            frames = [b"", payload] if kind != 1 else [b"", payload, b"extra"]
        if frames[0] == b"":
            expected += 1
        dealer.send_multipart(frames)
        while dealer.poll(0):
            replies[_reply_code(dealer.recv_multipart())] += 1
    deadline = time.monotonic() + 10
    while sum(replies.values()) < expected and time.monotonic() < deadline:
        if dealer.poll(200):
            replies[_reply_code(dealer.recv_multipart())] += 1
    dealer.close()
    replies["(no reply: frames REP drops)"] = n - sum(replies.values())
    return replies


def _wire_safe(value):
    """Fuzz values msgpack can encode (ints within 64 bits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(-2 ** 63, min(2 ** 63 - 1, value))
    if isinstance(value, list):
        return [_wire_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _wire_safe(v) for k, v in value.items()}
    return value


def _reply_code(frames: list[bytes]) -> str:
    try:
        msg = msgpack.unpackb(frames[-1])
        return "ok" if msg.get("ok") else msg["error"]["code"]
    except Exception:
        return "unreadable reply"


def fuzz_data_socket(endpoint: str, n: int, rng: random.Random) -> int:
    xsub = zmq.Context.instance().socket(zmq.XSUB)
    xsub.setsockopt(zmq.LINGER, 0)
    xsub.connect(endpoint)
    for _ in range(n):
        first = rng.choice([b"\x00", b"\x01", b"\x01", os.urandom(1)])
        prefix = rng.choice([b"", b"session/", b"session/" + fuzz_code(rng).encode("utf-8", "replace") + b"/",
                             b"session/fz-" + str(rng.randrange(10 ** 6)).encode(), os.urandom(rng.randrange(200)),
                             b"events/session", b"session/" + b"a" * 500 + b"/"])
        xsub.send(first + prefix)
    time.sleep(0.5)                   # let the broker read them before the socket goes
    xsub.close()
    return n


def fuzz_feedback(router: str, pull: str, n: int, rng: random.Random) -> collections.Counter:
    """Garbage predictions on the broker's feedback sockets (DEALER -> ROUTER, PUSH -> PULL)."""
    ctx = zmq.Context.instance()
    dealer, push = ctx.socket(zmq.DEALER), ctx.socket(zmq.PUSH)
    for sock, endpoint in ((dealer, router), (push, pull)):
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
    replies: collections.Counter = collections.Counter()
    for i in range(n):
        if rng.random() < 0.3:
            frames = [os.urandom(rng.randrange(0, 300)) for _ in range(rng.randrange(1, 3))]
        else:
            frames = [msgpack.packb(_wire_safe({"type": rng.choice(["prediction", "x", 1]),
                                                "session": fuzz_code(rng), "packet_id": fuzz_value(rng),
                                                "sequence_number": fuzz_value(rng),
                                                "velocity": fuzz_value(rng)}))]
        (dealer if i % 2 else push).send_multipart(frames)
        while dealer.poll(0):
            replies[_prediction_reply(dealer.recv_multipart())] += 1
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and dealer.poll(200):
        replies[_prediction_reply(dealer.recv_multipart())] += 1
    dealer.close()
    push.close()
    return replies


def _prediction_reply(frames: list[bytes]) -> str:
    try:
        return msgpack.unpackb(frames[-1])["error"]["code"]
    except Exception:
        return "unreadable reply"


def fuzz_websocket(url: str, n: int, rng: random.Random) -> collections.Counter:
    host, port = url.removeprefix("ws://").split(":")
    outcomes: collections.Counter = collections.Counter()
    sent = 0
    while sent < n:
        code = f"fz-ws-{rng.randrange(50)}"
        try:
            sock = socket.create_connection((host, int(port)), timeout=5)
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall((f"GET /stream/{code} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
            head = sock.recv(1024)
            outcomes[head.split(b"\r\n", 1)[0].decode("latin-1")[:40]] += 1
            for _ in range(rng.randrange(1, 20)):
                sock.sendall(ws_garbage(rng))
                sent += 1
            drain(sock, 0.2)
            sock.close()
        except OSError as exc:
            outcomes[f"client-side {type(exc).__name__}"] += 1
    return outcomes


def drain(sock: socket.socket, seconds: float) -> None:
    """Read whatever the bridge sends for ``seconds`` (or until it closes)."""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                return
    except OSError:
        pass


def ws_garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return os.urandom(rng.randrange(1, 500))
    opcode = rng.choice([0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xF])
    payload = os.urandom(rng.choice([0, 10, 125, 126, 1000, 70_000, 100_000]))
    mask = kind != 1                                   # kind 1: unmasked (a protocol error)
    fin = rng.random() < 0.8
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    length = (bytes([n | (0x80 if mask else 0)]) if n < 126 else
              bytes([126 | (0x80 if mask else 0)]) + n.to_bytes(2, "big") if n < 65536 else
              bytes([127 | (0x80 if mask else 0)]) + n.to_bytes(8, "big"))
    if not mask:
        return head + length + payload
    key = os.urandom(4)
    return head + length + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# -- checks ----------------------------------------------------------------------------------------
def healthy_afterwards(procs: dict[str, Proc]) -> list[str]:
    problems = []
    try:
        command(procs["broker"].ready["control"], "ping")
    except Exception as exc:
        problems.append(f"broker does not answer ping: {exc}")
    host, port = procs["control"].ready["url"].removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("POST", "/api/sessions/create", b'{"custom_code": "after-fuzz"}', {"Content-Type": "application/json"})
    status = conn.getresponse().status
    conn.close()
    if status not in (200, 429):
        problems.append(f"control answers a normal create with {status}")
    import urllib.request
    with urllib.request.urlopen(procs["ws"].ready["health"], timeout=5) as reply:
        state = json.load(reply)["status"]
    if state != "ok":
        problems.append(f"WebSocket bridge health says {state}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rest", type=int, default=10_000)
    parser.add_argument("--zmq", type=int, default=10_000, help="frames per broker socket")
    parser.add_argument("--ws", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        procs = start_stack(Path(tmp))
        try:
            return run(procs, args, rng)
        finally:
            for proc in procs.values():
                proc.stop()


def run(procs: dict[str, Proc], args, rng: random.Random) -> int:
    control_ep = procs["broker"].ready["control"]
    make_victims(control_ep)
    before = victims_state(control_ep)
    began = time.monotonic()
    rest = fuzz_rest(procs["control"].ready["url"], args.rest, rng)
    t_rest = time.monotonic() - began
    replies = fuzz_command_socket(control_ep, args.zmq, rng)
    fuzz_data_socket(procs["broker"].ready["pub"], args.zmq, rng)
    feedback = fuzz_feedback(procs["broker"].ready["feedback"], procs["broker"].ready["feedback_push"],
                             args.zmq // 5, rng)
    t_zmq = time.monotonic() - began - t_rest
    ws = fuzz_websocket(procs["ws"].ready["url"], args.ws, rng)
    t_ws = time.monotonic() - began - t_rest - t_zmq
    time.sleep(1.0)
    after = victims_state(control_ep)
    problems = healthy_afterwards(procs)
    dead = [name for name, p in procs.items() if p.popen.poll() is not None]
    five = {k: v for k, v in rest.items() if isinstance(k, int) and k >= 500 and k != 503}
    tracebacks = {name: p.output().count("Traceback") for name, p in procs.items()}
    print(f"REST: {args.rest} requests + {max(1, args.rest // 50)} raw in {t_rest:.1f} s; statuses "
          + ", ".join(f"{k}: {v}" for k, v in sorted(rest.items(), key=str)))
    print(f"ZMQ command socket: {args.zmq} garbage messages; replies "
          + ", ".join(f"{k}: {v}" for k, v in sorted(replies.items())))
    print(f"ZMQ data socket: {args.zmq} garbage frames; feedback sockets: {args.zmq // 5} garbage "
          f"predictions, error replies " + ", ".join(f"{k}: {v}" for k, v in sorted(feedback.items()))
          + f" ({t_zmq:.1f} s for the ZMQ sockets)")
    print(f"WebSocket: {args.ws} garbage messages in {t_ws:.1f} s; handshakes "
          + ", ".join(f"{k}: {v}" for k, v in sorted(ws.items())))
    print(f"processes dead: {dead or 'none'}; tracebacks logged: {tracebacks}")
    changed = {c: (before[c], after[c]) for c in VICTIMS if before[c] != after[c]}
    print(f"victim sessions changed: {len(changed)} of {len(VICTIMS)}" + (f" {changed}" if changed else ""))
    failures = []
    if dead:
        failures.append(f"dead: {dead}")
    if five:
        failures.append(f"5xx other than 503: {five}")
    if replies.get("internal") or feedback.get("internal"):
        failures.append(f"{replies['internal'] + feedback['internal']} internal errors from the broker")
    if any(tracebacks.values()):
        failures.append(f"tracebacks: {tracebacks}")
    if changed:
        failures.append("victims changed")
    failures += problems
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    if failures:
        for name, p in procs.items():
            print(f"--- {name} log tail\n" + "\n".join(p.output().splitlines()[-30:]))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
