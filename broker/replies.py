"""Replies over every session, built a piece at a time between packets (list, metrics).

A reply over n sessions is msgpack spliced from pieces: a head (the envelope, any fixed fields and
the array/map header for n), one piece per session, then a tail (fields summed over the pieces).
The loop advances a reply within a time budget per turn, so a walk over 1000 sessions never holds
a packet up; the reply reflects the sessions as they were when it was asked for, each at the
moment its piece was built.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import msgpack

from broker.frames import map_header
from protocol.wire import PROTOCOL_VERSION

_pack = msgpack.Packer(use_bin_type=True).pack


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    return b"\xdc" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xdd" + n.to_bytes(4, "big")


def _map_header(n: int) -> bytes:
    return map_header(n) if n < 1 << 16 else b"\xdf" + n.to_bytes(4, "big")


def ok_envelope() -> bytes:
    """``{"v": 1, "ok": true, "result": `` with the result still to follow."""
    return b"\x83" + _pack("v") + _pack(PROTOCOL_VERSION) + _pack("ok") + _pack(True) + _pack("result")


def pairs(fields: dict[str, Any]) -> bytes:
    """A map's key/value pairs without its header."""
    return b"".join(_pack(k) + _pack(v) for k, v in fields.items())


class Incremental:
    """An ok-reply whose result is ``{**fixed, key: <one piece per item>, **totals()}``.

    ``piece(item)`` returns the packed piece (a list element, or a map key + value when
    ``as_map``); ``totals()`` is called once every piece is built.
    """

    def __init__(self, fixed: dict[str, Any], key: str, items: Sequence[Any],
                 piece: Callable[[Any], bytes], totals: Callable[[], dict[str, Any]],
                 n_totals: int, as_map: bool = False):
        n = len(items)
        container = _map_header(n) if as_map else array_header(n)
        self.parts = [ok_envelope(), _map_header(len(fixed) + 1 + n_totals), pairs(fixed),
                      _pack(key), container]
        self.items = list(items)
        self.next = 0
        self.piece = piece
        self.totals = totals
        self.n_totals = n_totals
        self.on_done: Callable[[bytes], None] | None = None   # e.g. ReplyCache.put

    def advance(self, until: float) -> bytes | None:
        """Build pieces until ``until`` (monotonic; at least one piece); the reply once complete."""
        items, parts = self.items, self.parts
        while self.next < len(items):
            parts.append(self.piece(items[self.next]))
            self.next += 1
            if time.monotonic() >= until:
                return None
        totals = self.totals()
        assert len(totals) == self.n_totals
        parts.append(pairs(totals))
        body = b"".join(parts)
        if self.on_done is not None:
            self.on_done(body)
        return body


class ReplyCache:
    """The last reply of each walk-every-session command, reused while no session was created,
    changed, deleted or (un)subscribed and it is younger than ``max_age_s``: any number of
    polling clients cost at most one walk per command per ``max_age_s``. Time-driven figures in
    a reused reply (positions, counters, timing) are at most ``max_age_s`` old."""

    def __init__(self, max_age_s: float):
        self.max_age_s = max_age_s
        self._entries: dict[str, tuple[int, float, bytes]] = {}

    def get(self, name: str, generation: int, now: float) -> bytes | None:
        entry = self._entries.get(name)
        if entry is None or entry[0] != generation or now - entry[1] > self.max_age_s:
            return None
        return entry[2]

    def putter(self, name: str, generation: int, started: float) -> Callable[[bytes], None]:
        """What to call with the finished reply (its age counts from when it was started)."""
        def put(body: bytes) -> None:
            self._entries[name] = (generation, started, body)
        return put
