"""The broker assembled: sessions, subscription accounting, persistence and the poll loop, plus
the command dispatch (one request frame -> one reply frame, never raising).

broker.lifecycle owns the sessions, broker.subscriptions the subscriber counts, broker.persistence
the state file's timing and restore, broker.loop the sockets and the real-time loop;
broker.handlers has one function per command.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import zmq

from broker.deadlines import Deadlines
from broker.handlers import HANDLERS
from broker.lifecycle import Sessions
from broker.loop import Loop
from broker.persistence import Persistence
from broker.recording import Recording
from broker.replies import Incremental, ReplyCache
from broker.subscriptions import Subscriptions
from protocol import curve
from protocol.commands import CommandError, ErrorCode, encode_error, encode_ok, parse_request
from protocol.config import Config

log = logging.getLogger("broker")
REPLY_MAX_AGE_S = 1.0        # list/metrics replies are reused for this long while nothing changes


class Broker:
    """One broker process's parts, wired together (all used from the loop thread only)."""

    def __init__(self, config: Config, recording: Recording, context: zmq.Context | None = None):
        self.config = config
        self.recording = recording
        self.sessions = Sessions(config, recording, Deadlines())
        self.subscriptions = Subscriptions(self.sessions)
        self.persistence = Persistence(self.sessions)
        self.sessions.state_status = self.persistence.status
        self.replies = ReplyCache(REPLY_MAX_AGE_S)
        self.loop = Loop(self.sessions, self.subscriptions, self.persistence,
                         self.handle_request, context)
        self.authenticator = None             # pyzmq's ZAP handler while CURVE is on
        self.curve_keys = None                # the broker's CURVE keys (set by bind)

    @property
    def state_path(self) -> Path:
        return self.persistence.path

    @property
    def stopping(self) -> bool:
        return self.loop.stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self.loop.stopping = value

    def bind(self) -> tuple[str, str]:
        """Bind both sockets; returns the real endpoints. zmq.ZMQError if an endpoint is taken,
        curve.CurveError if PHANTOM_CURVE_DIR lacks the broker's keys."""
        self.curve_keys = curve.server_keys(self.config.curve_dir)
        if self.curve_keys is not None:
            self.authenticator = curve.start_authenticator(self.loop.context, self.curve_keys)
        return self.loop.bind(self.config.pub_endpoint, self.config.control_endpoint, self.curve_keys)

    def bind_feedback(self) -> tuple[str, str]:
        """Bind the prediction sockets (ROUTER, PULL); returns the real endpoints."""
        return self.loop.bind_feedback(self.config.feedback_endpoint,
                                       self.config.feedback_push_endpoint, self.curve_keys)

    def close(self) -> None:
        self.loop.close()
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None

    def run(self) -> None:
        self.loop.run()

    def restore_state(self) -> int:
        return self.persistence.restore()

    def final_save(self) -> None:
        self.persistence.final_save()

    def handle_request(self, frames: list[bytes]) -> bytes | Incremental:
        """One reply for one request, whatever the request is; never raises. A reply over every
        session comes back as an Incremental for the loop to build between packets."""
        name = "?"
        try:
            if len(frames) != 1:
                raise CommandError(ErrorCode.BAD_REQUEST,
                                   f"a request is one frame, got {len(frames)}")
            command, args = parse_request(frames[0])
            name = command.name
            now = time.monotonic()
            cached = self.replies.get(name, self.sessions.generation, now)
            if cached is not None:
                return cached
            result = HANDLERS[name](self.sessions, args)
            if isinstance(result, Incremental):
                result.on_done = self.replies.putter(name, self.sessions.generation, now)
                return result
            return encode_ok(result)
        except CommandError as exc:
            return encode_error(exc.code, exc.message, exc.retry_after_s)
        except Exception as exc:  # a bug: report it, keep serving
            log.exception("internal error in command %s", name)
            return encode_error(ErrorCode.INTERNAL, f"{name}: {type(exc).__name__}: {exc}"[:500])
