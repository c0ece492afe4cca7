"""The WebSocket bridge's threads, counted from outside (the Threads of /proc/<pid>/status over its
process tree: gunicorn's arbiter and its worker), with real broker, bridge and WebSocket clients.

The documented bound (docs/ws.md, *More clients, more workers*): the worker's pool (``threads=`` of
its READY line) is complete before the first client, and beyond it each connected client adds
exactly one thread (simple-websocket's reader), whatever the bridge served before; the rest is
``OWN_THREADS``: the arbiter, the worker's main thread, its fan-out and malloc-trim threads and
ZeroMQ's I/O and reaper threads.
"""
from __future__ import annotations

import pytest

from processes import Proc, tree_resources, wait_for
from test_ws import Stream, bridge_env, broker_env, health
from test_ws_security import handshake

MAX_CLIENTS = 16
OWN_THREADS = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    procs: list[Proc] = []
    try:
        broker = Proc.module("broker", broker_env(tmp_path_factory.mktemp("wsthreads")))
        procs.append(broker)
        broker.wait_ready(60)
        bridge = Proc.module("bridges.ws", bridge_env(broker, PHANTOM_WS_MAX_CLIENTS=str(MAX_CLIENTS)))
        procs.append(bridge)
        bridge.wait_ready(30)
        wait_for(lambda: health(bridge)["status"] == "ok", 30, "the bridge's worker to answer")
        yield broker, bridge
    finally:
        for proc in reversed(procs):
            proc.stop()


def threads(bridge: Proc) -> int:
    return tree_resources(bridge.popen.pid)["threads"]


def expect_threads(bridge: Proc, clients: int, pool: int) -> None:
    """Wait (10 s at most) until the bridge serves ``clients`` and holds exactly the bound."""
    wanted = pool + OWN_THREADS + clients
    wait_for(lambda: health(bridge)["clients"] == clients, 10, f"{clients} clients")
    try:
        wait_for(lambda: threads(bridge) == wanted, 10, f"{wanted} threads")
    except AssertionError:
        raise AssertionError(f"with {clients} clients the bridge holds {threads(bridge)} threads, "
                             f"not {wanted} (pool {pool} + own {OWN_THREADS} + one per client)") from None


def test_the_pool_is_complete_before_the_first_client(stack):
    _, bridge = stack
    pool = int(bridge.ready["threads"])
    assert pool == MAX_CLIENTS + 32, "one pool thread per admitted client plus 32 for HTTP"
    expect_threads(bridge, 0, pool)


def test_serving_more_clients_for_a_while_leaves_no_thread_behind(stack):
    """Two equal plateaus of 8 clients, with all 16 the worker admits (and one refused) between
    them: the second plateau holds exactly the threads of the first."""
    _, bridge = stack
    pool = int(bridge.ready["threads"])
    first = [Stream(bridge, "/stream/threads-1") for _ in range(8)]
    try:
        for s in first:
            s.data()
        expect_threads(bridge, 8, pool)
        plateau = threads(bridge)
        extra = [Stream(bridge, "/stream/threads-1") for _ in range(MAX_CLIENTS - 8)]
        try:
            for s in extra:
                s.data()
            sock, status, _ = handshake(bridge, "/stream/threads-1")
            sock.close()
            assert status == 503, "past PHANTOM_WS_MAX_CLIENTS the handshake is refused"
            expect_threads(bridge, MAX_CLIENTS, pool)
        finally:
            for s in extra:
                s.ws.close()
        expect_threads(bridge, 8, pool)
        assert threads(bridge) == plateau
    finally:
        for s in first:
            s.ws.close()
    expect_threads(bridge, 0, pool)
