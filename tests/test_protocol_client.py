"""protocol.client.BrokerClient against a REP socket of the test's own: the one broker client every
process uses keeps its sockets, never delivers a timed-out request late, and retries only what is
safe to repeat."""
from __future__ import annotations

import socket
import threading

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from protocol import CommandError, ErrorCode, decode, encode_ok
from protocol.client import BrokerClient


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class FakeBroker:
    """A REP socket answering every request with ``{"cmd": <name>}`` on its own thread, counting
    the TCP connections it accepts and the requests it receives."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.rep = self.ctx.socket(zmq.REP)
        self.rep.setsockopt(zmq.LINGER, 0)
        self.monitor = self.rep.get_monitor_socket(zmq.EVENT_ACCEPTED)
        self.rep.bind(endpoint)
        self.requests: list[str] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            if self.rep.poll(20):
                cmd = decode(self.rep.recv())["cmd"]
                self.requests.append(cmd)
                self.rep.send(encode_ok({"cmd": cmd}))

    def accepted(self) -> int:
        count = 0
        while self.monitor.poll(0):
            count += recv_monitor_message(self.monitor)["event"] == zmq.EVENT_ACCEPTED
        return count

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2)
        self.rep.disable_monitor()
        self.monitor.close(linger=0)
        self.rep.close(linger=0)
        self.ctx.term()


def test_requests_reuse_one_connection_and_come_back_in_order():
    endpoint = free_endpoint()
    broker = FakeBroker(endpoint)
    client = BrokerClient(endpoint, timeout_ms=2000)
    try:
        answers = [client.call("get", code=f"c{i}")["cmd"] for i in range(50)]
        threads = [threading.Thread(target=lambda: [client.request("list") for _ in range(20)])
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    finally:
        client.close()
    accepted = broker.accepted()
    broker.close()
    assert answers == ["get"] * 50
    assert broker.requests.count("list") == 80
    # One socket for the sequential requests, at most one more per concurrent thread: not one
    # connection (TCP handshake, ZMTP greeting) per request.
    assert 1 <= accepted <= 5, accepted


def test_a_timed_out_request_is_never_delivered_to_a_broker_that_starts_later():
    endpoint = free_endpoint()
    client = BrokerClient(endpoint, timeout_ms=200, budget_ms=200)
    try:
        with pytest.raises(CommandError) as err:
            client.request("create", {"code": "late"})
        assert err.value.code is ErrorCode.UNAVAILABLE
        broker = FakeBroker(endpoint)
        try:
            assert client.call("ping") == {"cmd": "ping"}         # the next request goes through
            assert broker.requests == ["ping"]                     # the create never arrived
        finally:
            broker.close()
    finally:
        client.close()


def test_only_harmless_commands_are_retried_within_the_budget():
    endpoint = free_endpoint()
    client = BrokerClient(endpoint, timeout_ms=100, budget_ms=1000)
    try:
        for cmd, attempts in (("get", "3 attempts"), ("delete", "1 attempt")):
            with pytest.raises(CommandError, match=attempts):
                client.request(cmd, {"code": "x"})
    finally:
        client.close()


def test_a_closed_client_refuses_and_a_bad_endpoint_fails_at_once():
    client = BrokerClient(free_endpoint())
    client.close()
    with pytest.raises(CommandError, match="closed"):
        client.request("ping")
    with pytest.raises(ValueError, match="endpoint"):
        BrokerClient("tcp://nowhere:notaport")
