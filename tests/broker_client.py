"""A small test client of the broker's two sockets: commands over REQ, data over SUB, all with deadlines."""
from __future__ import annotations

import time
from typing import Any

import msgpack
import zmq

from protocol.client import BrokerClient as ProtocolClient
from protocol.wire import session_topic


class Subscriber:
    """One SUB socket; every receive has a deadline and fails the test instead of hanging."""

    def __init__(self, ctx: zmq.Context, endpoint: str, *prefixes: bytes, hwm: int = 100_000):
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.connect(endpoint)
        for prefix in prefixes:
            self.subscribe(prefix)

    def subscribe(self, prefix: bytes) -> None:
        self.sock.setsockopt(zmq.SUBSCRIBE, prefix)

    def unsubscribe(self, prefix: bytes) -> None:
        self.sock.setsockopt(zmq.UNSUBSCRIBE, prefix)

    def recv(self, timeout: float = 5.0) -> tuple[bytes, dict[str, Any]] | None:
        """The next message, or None if nothing arrives within ``timeout`` s."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        topic, payload = self.sock.recv_multipart()
        return topic, msgpack.unpackb(payload, raw=False)

    def wait(self, predicate, timeout: float = 5.0, what: str = "a message") -> tuple[bytes, dict]:
        """The first message for which ``predicate(topic, msg)`` holds; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            got = self.recv(max(0.0, left)) if left > 0 else None
            if got is None:
                raise AssertionError(f"no {what} within {timeout} s")
            if predicate(*got):
                return got

    def wait_meta(self, code: str, timeout: float = 5.0) -> dict[str, Any]:
        topic = session_topic(code, "meta")
        return self.wait(lambda t, m: t == topic, timeout, f"meta of {code}")[1]

    def packets(self, code: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The `data` fields of the next ``count`` packets of session ``code``."""
        topic = session_topic(code, "packet")
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            left = deadline - time.monotonic()
            got = self.recv(left) if left > 0 else None
            if got is None:
                raise AssertionError(f"got {len(out)} of {count} packets of {code} within {timeout} s")
            if got[0] == topic:
                out.append(got[1]["data"])
        return out

    def silent(self, topic: bytes, duration: float) -> bool:
        """True if no message on ``topic`` arrives for ``duration`` s (other topics are ignored)."""
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            got = self.recv(left)
            if got is not None and got[0] == topic:
                return False
        return True

    def close(self) -> None:
        self.sock.close(linger=0)


class BrokerClient:
    """Commands and subscriptions against one running broker (from its READY endpoints)."""

    def __init__(self, ready: dict[str, str]):
        self.ctx = zmq.Context()
        self.pub = ready["pub"]
        self.control = ready["control"]
        self.req = self._connect()              # for send_raw: frames no client would send
        self.commands = ProtocolClient(self.control, 5000, 5000, self.ctx)
        self.subs: list[Subscriber] = []

    def _connect(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.control)
        return sock

    def send_raw(self, *frames: bytes, timeout: float = 5.0) -> dict[str, Any]:
        """Send raw frames as one request; the decoded reply map."""
        self.req.send_multipart(list(frames))
        if not self.req.poll(int(timeout * 1000)):
            self.req.close(linger=0)
            self.req = self._connect()
            raise AssertionError(f"broker did not answer within {timeout} s")
        return msgpack.unpackb(self.req.recv(), raw=False)

    def call(self, cmd: str, **args: Any) -> Any:
        """The command's result; raises protocol.CommandError for an error reply (or silence)."""
        return self.commands.request(cmd, args)

    def subscribe(self, *prefixes: bytes) -> Subscriber:
        sub = Subscriber(self.ctx, self.pub, *prefixes)
        self.subs.append(sub)
        return sub

    def session(self, code: str) -> Subscriber:
        """Subscribe to one session and wait for its meta (the subscription is live after it)."""
        sub = self.subscribe(session_topic(code))
        sub.wait_meta(code)
        return sub

    def close(self) -> None:
        for sub in self.subs:
            sub.close()
        self.req.close(linger=0)
        self.commands.close()
        self.ctx.term()


def command(broker, cmd: str, timeout: float = 5.0, **args: Any) -> Any:
    """One command to a running broker Proc through protocol.client (the client every process
    uses); the result, or protocol.CommandError (``unavailable`` after ``timeout`` s of silence)."""
    endpoint = broker.ready["control"]
    client = _clients.get((endpoint, timeout))
    if client is None:
        ms = int(timeout * 1000)
        client = _clients[(endpoint, timeout)] = ProtocolClient(endpoint, ms, ms, zmq.Context.instance())
    return client.request(cmd, args)


_clients: dict[tuple[str, float], ProtocolClient] = {}
