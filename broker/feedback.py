"""Predictions arriving on the broker's feedback sockets: checked, scored into the session's
evaluation, and in lock-step sessions the release of the next bin (loop thread only).

Two sockets take the same message (protocol.predictions): a ROUTER (PHANTOM_FEEDBACK_ENDPOINT) for
DEALER clients and the WebSocket bridge, answered with a ``prediction_error`` map when a
prediction is bad; and a PULL (PHANTOM_FEEDBACK_PUSH_ENDPOINT) for PUSH clients, which cannot be
answered: bad ones are counted and logged. Accepted predictions get no reply.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from broker.evaluation import Answer, Evaluation
from broker.lifecycle import Sessions
from protocol.predictions import (UNKNOWN_SESSION, BadPrediction, decode_message, error_reply,
                                  parse_prediction)

log = logging.getLogger("broker")

LOG_EVERY = 1000            # after the first bad prediction of a kind, log one in this many


class Feedback:
    """Turns one prediction message into an evaluation record, or an error reply."""

    def __init__(self, sessions: Sessions):
        self.sessions = sessions
        self.accepted = 0
        self.rejected: dict[str, int] = {}      # error code -> count (all sessions)
        self.pending: list[tuple[Evaluation, Answer]] = []   # accepted, scored after the send

    def on_message(self, payload: bytes) -> dict[str, Any] | None:
        """Handle one prediction; returns the error reply for a bad one, None when accepted.

        An answer that releases a lock-step session's next bin is scored after that bin went
        out (``score_pending``, which the loop calls after sending): the decoder waits for the
        bin, not for the bookkeeping. Its score is fixed at arrival either way."""
        try:
            p = parse_prediction(decode_message(payload))
        except BadPrediction as exc:
            self._count_malformed(exc.fields)
            return self._reject(exc, exc.fields)
        s = self.sessions.registry.sessions.get(p.session)
        now = time.monotonic()
        try:
            if s is None or s.evaluation is None:
                raise BadPrediction(UNKNOWN_SESSION, f"no session {p.session!r}")
            answer, latest = s.evaluation.accept(p, now, time.time())  # counts its own rejections
        except BadPrediction as exc:
            return self._reject(exc, {"session": p.session, "packet_id": p.packet_id,
                                      "sequence_number": p.sequence_number, "decoder": p.decoder})
        self.accepted += 1
        if latest and s.lockstep and s.lockstep_waiting:
            s.release(now)
            self.sessions.schedule(s)
            self.pending.append((s.evaluation, answer))
        else:
            s.evaluation.score(answer)
        return None

    def score_pending(self) -> None:
        """Score the answers held back while the bins they released went out."""
        for evaluation, answer in self.pending:
            evaluation.score(answer)
        self.pending.clear()

    def _count_malformed(self, fields: dict[str, Any]) -> None:
        """A malformed prediction that names an existing session counts against its decoder."""
        s = self.sessions.registry.sessions.get(fields.get("session"))
        if s is not None and s.evaluation is not None:
            s.evaluation.count_invalid(fields.get("decoder"))

    def _reject(self, exc: BadPrediction, fields: dict[str, Any]) -> dict[str, Any]:
        count = self.rejected.get(exc.code, 0) + 1
        self.rejected[exc.code] = count
        if count == 1 or count % LOG_EVERY == 0:
            log.info("bad prediction (%s, %d so far) for session %s: %s", exc.code, count,
                     str(fields.get("session", "?"))[:64], exc.message)
        return error_reply(exc.code, exc.message, fields)

    def summary(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": dict(self.rejected)}
