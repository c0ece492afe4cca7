"""Predictions a WebSocket client sends: checked for the connection's session and relayed to the
broker's feedback endpoint; the broker's error replies come back to the client as messages.

Owned by the client's handler thread (its DEALER socket is created there on the first message and
closed when the connection ends). Each WebSocket message (JSON text or msgpack binary) is one
prediction; ``session`` may be left out (it is the connection's). A message the bridge cannot
read, or one naming another session, is answered here; everything else the broker checks.
"""
from __future__ import annotations

from typing import Any

import msgpack
import zmq

from protocol.predictions import BAD_PREDICTION, BadPrediction, decode_message, error_reply

LINGER_MS = 500


class PredictionRelay:
    """One connection's path to the broker's feedback ROUTER (a DEALER, made when first used)."""

    def __init__(self, ctx: zmq.Context, endpoint: str, code: str):
        self._ctx = ctx
        self._endpoint = endpoint
        self.code = code
        self._dealer: zmq.Socket | None = None
        self.forwarded = 0
        self.refused = 0

    def handle(self, message: bytes | str) -> dict[str, Any] | None:
        """Relay one client message; returns an error reply for the client, or None."""
        try:
            msg = decode_message(message)
            if not isinstance(msg, dict):
                raise BadPrediction(BAD_PREDICTION, "a prediction is a map")
            msg.setdefault("session", self.code)
            if msg["session"] != self.code:
                raise BadPrediction(BAD_PREDICTION, f"this connection streams session "
                                                    f"{self.code!r}, not {str(msg['session'])[:64]!r}",
                                    {"session": self.code})
            self._socket().send(msgpack.packb(msg, use_bin_type=True), zmq.NOBLOCK)
        except BadPrediction as exc:
            self.refused += 1
            return error_reply(exc.code, exc.message, exc.fields)
        except zmq.ZMQError as exc:             # not keeping up (Again) or a bad endpoint
            self.refused += 1
            return error_reply("unavailable", f"cannot relay to the broker: {exc}"[:200],
                               {"session": self.code})
        self.forwarded += 1
        return None

    def replies(self) -> list[bytes]:
        """The broker's answers waiting for this connection (msgpack payloads)."""
        out = []
        while self._dealer is not None and self._dealer.poll(0):
            out.append(self._dealer.recv_multipart()[-1])
        return out

    def _socket(self) -> zmq.Socket:
        if self._dealer is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, LINGER_MS)   # a closing client's last answers still go
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.connect(self._endpoint)
            self._dealer = sock
        return self._dealer

    def flush(self, inbox: list) -> None:
        """Relay what is left in ``inbox`` (the connection is closing: nobody to answer)."""
        while inbox:
            self.handle(inbox.pop(0))

    def close(self) -> None:
        if self._dealer is not None:
            self._dealer.close()
            self._dealer = None
