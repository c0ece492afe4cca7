"""asyncio streams: AsyncWebSocketStream and AsyncZmqStream, the same API as phantomlink.streams
with ``async for`` and ``await stream.send(...)``."""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator
from urllib.parse import quote

import msgpack
import zmq
import zmq.asyncio
from websockets.asyncio.client import connect

from phantomlink.packets import SequenceCheck
from phantomlink.rest import token_from
from phantomlink.streams import DEFAULT_FEEDBACK, DEFAULT_PUB, Item, _take, decode_frame


class AsyncWebSocketStream:
    """``stream = await AsyncWebSocketStream.open(url)``; ``async for item in stream``."""

    def __init__(self, ws, fmt: str, timeout: float):
        self._ws = ws
        self.fmt = fmt
        self.timeout = timeout
        self.check = SequenceCheck()
        self.errors: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, token: str | None = None, timeout: float = 10.0,
                   fmt: str = "msgpack") -> "AsyncWebSocketStream":
        token = token_from(token)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        if token and "token=" not in url:
            url += ("&" if "?" in url else "?") + f"token={quote(token)}"
        ws = await connect(url, additional_headers=headers, open_timeout=timeout,
                           max_size=2 ** 22, compression=None)
        return cls(ws, fmt, timeout)

    async def __aiter__(self) -> AsyncIterator[Item]:
        while True:
            frame = await asyncio.wait_for(self._ws.recv(), self.timeout)
            item = _take(self, decode_frame(frame))
            if item is not None:
                yield item

    async def send(self, pred: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(pred) if self.fmt == "json" else msgpack.packb(pred))

    async def aclose(self) -> None:
        await self._ws.close()


class AsyncZmqStream:
    """SUB on the data endpoint and DEALER on the feedback endpoint, on a zmq.asyncio context."""

    def __init__(self, code: str, pub_endpoint: str = DEFAULT_PUB,
                 feedback_endpoint: str = DEFAULT_FEEDBACK, timeout: float = 10.0,
                 context: zmq.asyncio.Context | None = None):
        self.code = code
        self.timeout = timeout
        self.check = SequenceCheck()
        self.errors: list[dict[str, Any]] = []
        ctx = context or zmq.asyncio.Context.instance()
        self._sub = ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.RCVHWM, 0)
        self._sub.connect(pub_endpoint)
        self._sub.setsockopt(zmq.SUBSCRIBE, f"session/{code}/".encode())
        self._dealer = ctx.socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.LINGER, 1000)   # predictions sent just before close still go
        self._dealer.connect(feedback_endpoint)

    async def __aiter__(self) -> AsyncIterator[Item]:
        while True:
            while await self._dealer.poll(0):
                _take(self, msgpack.unpackb((await self._dealer.recv_multipart())[-1], raw=False))
            if not await self._sub.poll(int(self.timeout * 1000)):
                raise TimeoutError(f"nothing from session {self.code} for {self.timeout:g} s")
            _topic, payload = await self._sub.recv_multipart()
            item = _take(self, msgpack.unpackb(payload, raw=False))
            if item is not None:
                yield item

    async def send(self, pred: dict[str, Any]) -> None:
        await self._dealer.send(msgpack.packb(pred))

    async def aclose(self) -> None:
        self._sub.close(0)
        self._dealer.close()
