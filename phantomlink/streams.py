"""Blocking streams of one session: WebSocketStream and ZmqStream.

Iterating a stream yields Metadata (always first) and Packet objects; gaps are marked on the
packet after them (``packet.gap``) and counted with duplicates in ``stream.check``. ``send``
returns a prediction on the same channel (WebSocket: the connection; ZMQ: a DEALER socket on
the broker's feedback endpoint). Error replies to bad predictions collect in ``stream.errors``.
"""
from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator
from urllib.parse import quote

import msgpack
import zmq
from websockets.sync.client import connect

from phantomlink.packets import Metadata, Packet, SequenceCheck, message_item
from phantomlink.rest import token_from

DEFAULT_PUB = "tcp://127.0.0.1:5555"
DEFAULT_FEEDBACK = "tcp://127.0.0.1:5557"
Item = Metadata | Packet


def stream_url(ws_base: str, code: str, token: str | None = None, fmt: str = "msgpack") -> str:
    """``ws://host:port/stream/<code>?format=...`` (plus ``&token=`` when there is a token)."""
    url = f"{ws_base.rstrip('/')}/stream/{code}?format={fmt}"
    return url + (f"&token={quote(token)}" if token else "")


def decode_frame(frame: bytes | str) -> Any:
    return json.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame, raw=False)


def _take(stream, msg: Any) -> Item | None:
    item = message_item(msg, stream.check)
    if isinstance(item, dict):
        if item.get("type") == "prediction_error":
            stream.errors.append(item)
        return None
    return item


class WebSocketStream:
    """``for item in WebSocketStream(url): ...``; ``send(prediction)`` answers on the connection."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0, fmt: str = "msgpack"):
        token = token_from(token)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        if token and "token=" not in url:
            url += ("&" if "?" in url else "?") + f"token={quote(token)}"
        self.fmt = fmt
        self.timeout = timeout
        self.check = SequenceCheck()
        self.errors: list[dict[str, Any]] = []
        self._exit = contextlib.ExitStack()
        self._ws = self._exit.enter_context(connect(url, additional_headers=headers,
                                                    open_timeout=timeout, max_size=2 ** 22,
                                                    compression=None))

    def __iter__(self) -> Iterator[Item]:
        while True:
            item = _take(self, decode_frame(self._ws.recv(timeout=self.timeout)))
            if item is not None:
                yield item

    def send(self, pred: dict[str, Any]) -> None:
        self._ws.send(json.dumps(pred) if self.fmt == "json" else msgpack.packb(pred))

    def close(self) -> None:
        self._exit.close()

    def __enter__(self) -> "WebSocketStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ZmqStream:
    """A SUB socket on the broker's data endpoint (subscribed to ``session/<code>/``) and a DEALER
    on its feedback endpoint, both used from the thread that iterates."""

    def __init__(self, code: str, pub_endpoint: str = DEFAULT_PUB,
                 feedback_endpoint: str = DEFAULT_FEEDBACK, timeout: float = 10.0,
                 context: zmq.Context | None = None):
        self.code = code
        self.timeout = timeout
        self.check = SequenceCheck()
        self.errors: list[dict[str, Any]] = []
        ctx = context or zmq.Context.instance()
        self._sub = ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.RCVHWM, 0)
        self._sub.connect(pub_endpoint)
        self._sub.setsockopt(zmq.SUBSCRIBE, f"session/{code}/".encode())
        self._dealer = ctx.socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.LINGER, 1000)   # predictions sent just before close still go
        self._dealer.connect(feedback_endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self._sub, zmq.POLLIN)
        self._poller.register(self._dealer, zmq.POLLIN)

    def __iter__(self) -> Iterator[Item]:
        while True:
            events = dict(self._poller.poll(int(self.timeout * 1000)))
            if not events:
                raise TimeoutError(f"nothing from session {self.code} for {self.timeout:g} s")
            if self._dealer in events:
                self._drain_replies()
            if self._sub in events:
                _topic, payload = self._sub.recv_multipart()
                item = _take(self, msgpack.unpackb(payload, raw=False))
                if item is not None:
                    yield item

    def _drain_replies(self) -> None:
        while self._dealer.poll(0):
            _take(self, msgpack.unpackb(self._dealer.recv_multipart()[-1], raw=False))

    def send(self, pred: dict[str, Any]) -> None:
        self._dealer.send(msgpack.packb(pred))

    def close(self) -> None:
        self._sub.close(0)
        self._dealer.close()

    def __enter__(self) -> "ZmqStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
