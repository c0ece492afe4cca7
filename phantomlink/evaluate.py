"""``evaluate(decoder, ...)``: drive a decoder written to FALCON's BCIDecoder interface (``reset``,
``predict``, ``observe``, ``on_done``) over a PhantomLink session and return the server's
evaluation of it. ``aevaluate`` is the asyncio twin.

The session is created (by default lock-step, labels withheld, no loop, paused until the stream
is open), optionally moved to ``start_packet``, then played to its end (or ``stop_packet``).
Each packet inside a trial goes to ``decoder.predict(spikes[None, :])`` and its first two outputs
are sent back as the velocity; a bin between trials goes to ``decoder.observe`` and is answered
with zero velocity (such bins are never scored; the answer lets a lock-step session go on).
``decoder.on_done`` is called after every bin with whether a trial ended in it.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from phantomlink.aio import AsyncWebSocketStream, AsyncZmqStream
from phantomlink.packets import Metadata, Packet
from phantomlink.predictions import prediction
from phantomlink.rest import DEFAULT_URL, AsyncClient, Client
from phantomlink.streams import DEFAULT_FEEDBACK, DEFAULT_PUB, WebSocketStream, ZmqStream, stream_url

SETTLE_S = 2.0      # how long to wait for the server to have counted the last answers


class _Driver:
    """The per-packet logic shared by evaluate and aevaluate."""

    def __init__(self, decoder: Any, name: str, stop_packet: int | None):
        self.decoder = decoder
        self.name = name
        self.stop_packet = stop_packet
        self.sent = 0
        self.started: float | None = None
        self.finished: float | None = None

    def step(self, item: Metadata | Packet) -> tuple[bool, dict[str, Any] | None]:
        """(keep going, prediction to send or None)."""
        if isinstance(item, Metadata):
            return not item.ended, None
        if self.stop_packet is not None and item.packet_id >= self.stop_packet:
            return False, None
        if self.started is None:
            self.started = time.perf_counter()
        x = item.spikes[None, :].astype(np.float64)
        if item.observed:
            out = np.asarray(self.decoder.predict(x), dtype=np.float64).reshape(-1)
            velocity = out[:2]
        else:
            self.decoder.observe(x)
            velocity = (0.0, 0.0)
        self.decoder.on_done(np.array(["trial_end" in item.events]))
        self.sent += 1
        self.finished = time.perf_counter()
        return True, prediction(item, velocity, decoder=self.name)

    def summary(self, code: str, stream, report: dict[str, Any]) -> dict[str, Any]:
        elapsed = (self.finished - self.started) if self.started and self.finished else 0.0
        return {"session": code, "decoder": self.name, "bins": self.sent,
                "seconds": round(elapsed, 4),
                "bins_per_second": round(self.sent / elapsed, 1) if elapsed > 0 else None,
                "gaps": stream.check.gaps, "duplicates": stream.check.duplicates,
                "prediction_errors": list(stream.errors), "evaluation": report}


def _create_options(lockstep: bool, withhold_labels: bool, speed: float,
                    lockstep_timeout_ms: float | None) -> dict[str, Any]:
    opts: dict[str, Any] = {"lockstep": lockstep, "withhold_labels": withhold_labels,
                            "loop": False, "paused": True, "speed": speed}
    if lockstep_timeout_ms is not None:
        opts["lockstep_timeout_ms"] = lockstep_timeout_ms
    return opts


def _ws_base(created: dict[str, Any]) -> str:
    url = created["stream_url"]
    return url[:url.index("/stream/")]


def evaluate(decoder: Any, *, url: str = DEFAULT_URL, transport: str = "websocket",
             ws_url: str | None = None, pub_endpoint: str = DEFAULT_PUB,
             feedback_endpoint: str = DEFAULT_FEEDBACK, lockstep: bool = True,
             withhold_labels: bool = True, speed: float = 1.0, start_packet: int = 0,
             stop_packet: int | None = None, name: str = "default", token: str | None = None,
             lockstep_timeout_ms: float | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """Evaluate ``decoder`` over a new session; returns the run's figures and the server's
    evaluation of it (the ``decoders[name]`` entry of ``GET /api/sessions/{code}/evaluation``).

    ``url`` is control (or the front door); ``ws_url`` the WebSocket bridge's base URL (default:
    the one control advertises in ``stream_url``); ``transport`` is ``websocket`` or ``zmq``."""
    with Client(url, token) as client:
        created = client.create_session(**_create_options(lockstep, withhold_labels, speed,
                                                          lockstep_timeout_ms))
        code = created["session_code"]
        if start_packet:
            client.seek(code, start_packet)
        if transport == "zmq":
            stream = ZmqStream(code, pub_endpoint, feedback_endpoint, timeout)
        else:
            stream = WebSocketStream(stream_url(ws_url or _ws_base(created), code), token, timeout)
        driver = _Driver(decoder, name, stop_packet)
        decoder.reset([code])
        with stream:
            items = iter(stream)
            next(items)                                  # metadata: subscribed, safe to start
            client.resume(code)
            for item in items:
                going, pred = driver.step(item)
                if pred is not None:
                    stream.send(pred)
                if not going:
                    break
            client.pause(code)
            report = _settled(lambda: client.evaluation(code, decoder=name), name, driver.sent)
        return driver.summary(code, stream, report)


def _counted(result: dict[str, Any], name: str, sent: int) -> dict[str, Any] | None:
    """The decoder's report if the server has counted every answer sent, else None."""
    report = result["decoders"].get(name, {})
    return report if report.get("predictions", 0) + report.get("invalid", 0) >= sent else None


def _settled(fetch, name: str, sent: int) -> dict[str, Any]:
    """The decoder's evaluation once the server has counted what was sent (or SETTLE_S passed)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        result = fetch()
        report = _counted(result, name, sent)
        if report is not None or time.monotonic() > deadline:
            return report or result["decoders"].get(name, {})
        time.sleep(0.02)


async def aevaluate(decoder: Any, *, url: str = DEFAULT_URL, transport: str = "websocket",
                    ws_url: str | None = None, pub_endpoint: str = DEFAULT_PUB,
                    feedback_endpoint: str = DEFAULT_FEEDBACK, lockstep: bool = True,
                    withhold_labels: bool = True, speed: float = 1.0, start_packet: int = 0,
                    stop_packet: int | None = None, name: str = "default",
                    token: str | None = None, lockstep_timeout_ms: float | None = None,
                    timeout: float = 10.0) -> dict[str, Any]:
    """evaluate() for asyncio code (same arguments and result)."""
    async with AsyncClient(url, token) as client:
        created = await client.create_session(**_create_options(lockstep, withhold_labels, speed,
                                                                lockstep_timeout_ms))
        code = created["session_code"]
        if start_packet:
            await client.seek(code, start_packet)
        if transport == "zmq":
            stream = AsyncZmqStream(code, pub_endpoint, feedback_endpoint, timeout)
        else:
            stream = await AsyncWebSocketStream.open(
                stream_url(ws_url or _ws_base(created), code), token, timeout)
        driver = _Driver(decoder, name, stop_packet)
        decoder.reset([code])
        try:
            items = stream.__aiter__()
            await items.__anext__()
            await client.resume(code)
            async for item in items:
                going, pred = driver.step(item)
                if pred is not None:
                    await stream.send(pred)
                if not going:
                    break
            await client.pause(code)
            deadline = time.monotonic() + SETTLE_S
            while True:
                result = await client.evaluation(code, decoder=name)
                report = _counted(result, name, driver.sent)
                if report is not None or time.monotonic() > deadline:
                    report = report or result["decoders"].get(name, {})
                    break
                await asyncio.sleep(0.02)
        finally:
            await stream.aclose()
        return driver.summary(code, stream, report)
