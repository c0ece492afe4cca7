"""Control under stress and failure: the broker killed and restarted, the session limit, concurrent
clients, and a few hundred malformed requests; real broker and control processes on 127.0.0.1 throughout."""
from __future__ import annotations

import json
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import zmq

from processes import wait_for
from control_support import create, stack, start_control  # noqa: F401  (module fixture)

# The bound: a request answers 503 within 1.5 s of asking a dead broker.
UNAVAILABLE_BOUND_S = 1.5


def timed(fn, *args, **kw):
    start = time.monotonic()
    reply = fn(*args, **kw)
    return reply, time.monotonic() - start


def test_broker_down_is_503_in_bound_and_restart_recovers_without_restarting_control(
        start_broker, spawn):
    broker = start_broker()
    control_ep, pub_ep = broker.ready["control"], broker.ready["pub"]
    control, http = start_control(spawn, control_ep)
    create(http, "fail-before", paused=True)
    assert http.post("/api/control/fail-before/seek", {"packet_id": 10}).status == 200

    broker.stop(signal.SIGKILL)

    for method, path, body in (("GET", "/api/sessions", None),
                               ("POST", "/api/sessions/create", {"custom_code": "late-create"}),
                               ("POST", "/api/control/fail-before/seek", {"packet_id": 777}),
                               ("GET", "/metrics/prometheus", None)):
        reply, elapsed = timed(http.request, method, path, body)
        assert reply.status == 503, (path, reply.body)
        assert reply.error_code() == "unavailable"
        assert elapsed < UNAVAILABLE_BOUND_S, f"{method} {path} took {elapsed:.2f} s"

    health, elapsed = timed(http.get, "/health")
    assert health.status == 200 and elapsed < UNAVAILABLE_BOUND_S
    assert health.json["status"] == "degraded" and health.json["broker"]["reachable"] is False

    # Every waitress thread stuck on the dead broker at once still answers within the bound.
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: timed(http.get, "/api/sessions"), range(8)))
    assert all(r.status == 503 for r, _ in results)
    assert max(t for _, t in results) < UNAVAILABLE_BOUND_S + 0.3, [t for _, t in results]

    start_broker(PHANTOM_CONTROL_ENDPOINT=control_ep, PHANTOM_PUB_ENDPOINT=pub_ep)
    wait_for(lambda: http.get("/health").json["broker"]["reachable"], 10, "broker reachable again")
    listed = http.get("/api/sessions")
    assert listed.status == 200
    created = http.post("/api/sessions/create", {"custom_code": "after-restart"})
    assert created.status == 200, created.body
    assert http.post("/api/control/after-restart/pause").status == 200
    # The requests that timed out were dropped with their sockets, never delivered late.
    assert http.get("/api/sessions/late-create").status == 404
    assert "late-create" not in http.get("/api/sessions").json["sessions"]
    restored = http.get("/api/sessions/fail-before")
    if restored.status == 200:  # the broker may restore saved sessions; the late seek must not land
        assert restored.json["current_packet"] != 777
    assert control.popen.poll() is None


def test_session_limit_is_429_and_idle_sessions_are_evicted(start_broker, spawn):
    broker = start_broker(PHANTOM_MAX_SESSIONS="2", PHANTOM_EVICT_GRACE_S="0.001")
    _, http = start_control(spawn, broker.ready["control"])
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    try:
        sub.connect(broker.ready["pub"])
        for code in ("lim-a", "lim-b"):
            create(http, code)
            sub.setsockopt(zmq.SUBSCRIBE, f"session/{code}/".encode())
        wait_for(lambda: all(http.get(f"/api/stats/{c}").json["active_connections"] == 1
                             for c in ("lim-a", "lim-b")), 10, "both sessions to have a subscriber")
        full = http.post("/api/sessions/create", {"custom_code": "lim-c"})
        assert full.status == 429 and full.error_code() == "limit"
        sub.setsockopt(zmq.UNSUBSCRIBE, b"session/lim-a/")
        wait_for(lambda: http.get("/api/stats/lim-a").json["active_connections"] == 0, 10,
                 "lim-a to become idle")
        # the stats reads above touched lim-a: it is evictable once untouched for the grace
        # period (1 ms); until then a create is refused (429) and changes nothing
        wait_for(lambda: http.post("/api/sessions/create", {"custom_code": "lim-c"}).status == 200,
                 5, "lim-c to be created in place of the idle lim-a")
        assert http.get("/api/sessions/lim-a").status == 404, "the idle session was not evicted"
    finally:
        sub.close()
        ctx.term()


def test_concurrent_clients_get_their_own_answers(stack):
    http, control = stack
    threads, rounds = 8, 12
    errors: list[str] = []

    def client(i: int) -> None:
        code = f"conc-{i}"
        create(http, code)
        for n in range(rounds):
            paused = http.post(f"/api/control/{code}/pause")
            if paused.status != 200 or paused.json["session"]["session_code"] != code \
                    or paused.json["session"]["is_running"]:
                errors.append(f"{code} pause {n}: {paused.status} {paused.body[:200]!r}")
            seek = http.post(f"/api/control/{code}/seek", {"packet_id": 100 * i + n})
            stats = http.get(f"/api/stats/{code}")
            if seek.status != 200 or stats.json.get("session_code") != code \
                    or stats.json.get("current_packet") != 100 * i + n:
                errors.append(f"{code} seek/stats {n}: {stats.status} {stats.body[:200]!r}")
            resumed = http.post(f"/api/control/{code}/resume")
            if resumed.status != 200 or not resumed.json["session"]["is_running"]:
                errors.append(f"{code} resume {n}: {resumed.status}")
            listed = http.get("/api/sessions")
            if listed.status != 200 or code not in listed.json["sessions"]:
                errors.append(f"{code} list {n}: {listed.status}")

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not any(w.is_alive() for w in workers), "a client thread hung"
    assert errors == []
    assert control.popen.poll() is None


ODD_CODES = ["A", "a_b", "x" * 65, "-a", "a-", "%00", "%2e%2e", "a%2Fb", "%C3%BC", "a%20b", "..",
             "no-such-session", "9" * 64, "fuzz-known", "a" * 64, "%ff", "'", "%22", "~", "a.b"]
ODD_IDS = ["-1", "1e3", "99999999999999999999999", "0x1", "1.5", "", "%00", "0", "1", "abc"]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "BREW", "TRACE"]
# What any request may answer: a success or a client error, or 503; never another 5xx.
ANSWERABLE = frozenset(range(200, 500)) | {503}

TEMPLATES = [  # (method the route serves, path)
    ("POST", "/api/sessions/create"), ("GET", "/api/sessions"), ("GET", "/api/sessions/{c}"),
    ("DELETE", "/api/sessions/{c}"), ("POST", "/api/sessions/cleanup"),
    ("POST", "/api/control/{c}/pause"), ("POST", "/api/control/{c}/resume"),
    ("POST", "/api/control/{c}/seek"), ("POST", "/api/control/{c}/speed"),
    ("POST", "/api/control/{c}/loop"), ("POST", "/api/control/{c}/filter"),
    ("POST", "/api/control/{c}/noise"), ("POST", "/api/control/{c}/warp"),
    ("GET", "/api/stats/{c}"), ("GET", "/api/stats"), ("GET", "/api/trials"),
    ("GET", "/api/trials/{i}"), ("GET", "/api/trials/by-target/{i}"), ("GET", "/metrics"),
    ("GET", "/metrics/prometheus"), ("GET", "/health"), ("GET", "/openapi.json"),
    ("GET", "/docs"), ("GET", "/"), ("GET", "/nowhere/{c}"), ("GET", "/api//sessions"),
    ("GET", "/api/sessions/{c}/"),
]
FIELDS = ["custom_code", "speed", "loop", "paused", "filter", "noise", "packet_id", "target_id",
          "trial_id", "unknown"]
VALUES = [None, True, False, 0, -1, 1.5, 2 ** 70, -2 ** 70, 1e308, "", "x" * 300, "moderate",
          [], [1, 2], {}, {"noise_std": "high"}, {"target_id": -5}, {"trial_id": 1e9},
          {"preset": "light", "seed": 2 ** 64}, "\u0000", "\ud800"]


def odd_body(rng: random.Random) -> bytes | None:
    kind = rng.randrange(11)
    if kind == 0:
        return None
    if kind == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == 2:
        return rng.choice([b"{", b"[]", b"null", b"42", b'"s"', b"NaN", b'{"speed": Infinity}',
                           b'{"packet_id": 1e400}', b"{'a': 1}", b'{"a": 1,}', b"\xef\xbb\xbf{}"])
    if kind == 3:
        return rng.choice([b"[" * 5000, b'{"a":' * 3000, b"1" * 5000])
    if kind == 4:
        return b'{"custom_code": "' + b"a" * rng.choice([70_000, 300_000]) + b'"}'
    body = {rng.choice(FIELDS): rng.choice(VALUES) for _ in range(rng.randrange(1, 4))}
    return json.dumps(body, allow_nan=True).encode()


def test_malformed_requests_never_produce_a_server_error(stack):
    http, control = stack
    create(http, "fuzz-known", paused=True)
    rng = random.Random(20260112)
    seen: dict[int, int] = {}
    for n in range(500):
        method, template = rng.choice(TEMPLATES)
        if rng.random() < 0.25:
            method = rng.choice(METHODS)
        code = "fuzz-known" if rng.random() < 0.5 else rng.choice(ODD_CODES)
        path = template.format(c=code, i=rng.choice(ODD_IDS))
        body = odd_body(rng)
        headers = {"Content-Type": rng.choice(["application/json", "text/plain",
                                               "application/x-www-form-urlencoded", "", "x/y"])}
        if rng.random() < 0.1:
            headers["Accept"] = rng.choice(["text/plain", "*/*", "application/json;q=0", "x"])
        reply = http.request(method, path, raw=body, headers=headers)
        seen[reply.status] = seen.get(reply.status, 0) + 1
        where = f"#{n} {method} {path} body={body[:60] if body else body!r}"
        assert reply.status in ANSWERABLE, f"{where} -> {reply.status} {reply.body[:300]!r}"
        if reply.status >= 400 and method != "HEAD":
            assert reply.headers["content-type"] == "application/json", where
            reply.error_code()
    assert control.popen.poll() is None, "control died"
    assert "Traceback" not in control.output()
    # The corpus really exercised the error paths, not just one of them.
    assert {200, 400, 404, 405, 413} <= set(seen), seen
    create(http, "fuzz-after")  # and it still serves well-formed requests
    assert http.get("/api/sessions/fuzz-after").status == 200
