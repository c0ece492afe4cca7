"""The set of sessions: codes, limits with LRU eviction of idle sessions, TTL, filters, subscribers.

Idle means no subscription names the session (wildcard subscribers, which mirror every session,
do not keep one alive). Subscriptions are kept as sets of held prefixes (a prefix is held while at
least one data connection holds it counted; see broker.subscriptions), so a repeated report cannot
make a count drift. Everything here is bounded: at most
``max_sessions`` sessions, the prefixes that name sessions, one playlist per distinct filter.
"""
from __future__ import annotations

import random
import time
from array import array
from typing import Iterator

from broker.recording import Recording
from broker.session import Playlist, Session
from protocol.commands import CommandError, ErrorCode
from protocol.wire import ProtocolError, validate_code

_ADJECTIVES = ("swift", "calm", "bright", "quiet", "bold", "keen", "steady", "brisk", "clever",
               "gentle", "lucid", "nimble", "rapid", "sharp", "vivid", "wise", "amber", "cosmic")
_NOUNS = ("neural", "spike", "cortex", "axon", "dendrite", "synapse", "motor", "signal", "pulse",
          "neuron", "reach", "cursor", "vector", "wave", "burst", "channel", "array", "decoder")
MAX_PLAYLISTS = 64


class Registry:
    """Sessions by code plus the subscriber bookkeeping that decides which ones publish."""

    def __init__(self, recording: Recording, max_sessions: int, ttl_s: float,
                 evict_grace_s: float = 0.0):
        self.recording = recording
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.evict_grace_s = evict_grace_s     # only sessions untouched this long are evicted
        self.sessions: dict[str, Session] = {}
        self.subscriptions: dict[str, set[bytes]] = {}  # code -> live prefixes naming it
        self.wildcard_prefixes: set[bytes] = set()      # live prefixes matching every session
        self.full = Playlist(recording.n_bins)
        self._playlists: dict[tuple[str, int], Playlist] = {}
        self._ordinal = 0
        self._rng = random.Random()

    def __len__(self) -> int:
        return len(self.sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self.sessions.values()))

    def get(self, code: str) -> Session:
        session = self.sessions.get(code)
        if session is None:
            raise CommandError(ErrorCode.NOT_FOUND, f"no session {code[:64]!r}")
        return session

    def next_ordinal(self) -> int:
        self._ordinal += 1
        return self._ordinal

    # -- codes ------------------------------------------------------------------------------------
    def new_code(self) -> str:
        for digits in (2, 2, 2, 3, 4, 6):
            code = (f"{self._rng.choice(_ADJECTIVES)}-{self._rng.choice(_NOUNS)}-"
                    f"{self._rng.randrange(10 ** (digits - 1), 10 ** digits)}")
            if code not in self.sessions:
                return code
        raise CommandError(ErrorCode.INTERNAL, "could not find a free session code")

    @staticmethod
    def check_code(code: str) -> str:
        try:
            return validate_code(code)
        except ProtocolError as exc:
            raise CommandError(ErrorCode.BAD_REQUEST, str(exc)) from None

    # -- capacity ---------------------------------------------------------------------------------
    def make_room(self, now_wall: float | None = None) -> Session | None:
        """Before adding a session: evict the least recently used idle one if full.

        Only a session with no subscriber that nobody touched for ``evict_grace_s`` is evictable,
        so creating sessions never deletes one somebody is using between two commands. Returns
        the evicted session (for the caller to announce); raises `limit`, with the seconds until
        one may become evictable, if none is.
        """
        if len(self.sessions) < self.max_sessions:
            return None
        now_wall = time.time() if now_wall is None else now_wall
        idle = [s for s in self.sessions.values() if s.subscribers == 0]
        victim = min(idle, key=lambda s: s.last_accessed, default=None)
        if victim is None or now_wall - victim.last_accessed < self.evict_grace_s:
            wait = self.evict_grace_s - (now_wall - victim.last_accessed) if victim else self.evict_grace_s
            raise CommandError(ErrorCode.LIMIT, f"all {self.max_sessions} sessions are in use "
                               f"({len(idle)} idle for less than {self.evict_grace_s:g} s)",
                               retry_after_s=max(1.0, round(wait, 1)))
        del self.sessions[victim.code]
        return victim

    @property
    def wildcards(self) -> int:
        """Live wildcard prefixes (``""``, ``session/``, ``session/<partial>``)."""
        return len(self.wildcard_prefixes)

    def add(self, session: Session) -> None:
        session.subscribers = len(self.subscriptions.get(session.code, ()))
        self.sessions[session.code] = session

    def remove(self, code: str) -> Session:
        return self.sessions.pop(code)

    def expired(self, now_wall: float | None = None) -> list[Session]:
        """Idle sessions not accessed for longer than the TTL."""
        now_wall = time.time() if now_wall is None else now_wall
        return [s for s in self.sessions.values()
                if s.subscribers == 0 and now_wall - s.last_accessed > self.ttl_s]

    # -- subscriptions ----------------------------------------------------------------------------
    def set_subscription(self, code: str, prefix: bytes, live: bool) -> int:
        """Record that ``prefix`` (naming ``code``) is now held or no longer held by anyone;
        returns the number of live prefixes naming ``code``."""
        prefixes = self.subscriptions.setdefault(code, set())
        if live:
            prefixes.add(prefix)
        else:
            prefixes.discard(prefix)
        count = len(prefixes)
        if not count:
            del self.subscriptions[code]
        session = self.sessions.get(code)
        if session is not None:
            session.subscribers = count
        return count

    def should_publish(self, session: Session) -> bool:
        return session.subscribers > 0 or self.wildcards > 0

    # -- filters ----------------------------------------------------------------------------------
    def playlist(self, filter: dict | None) -> Playlist:
        """The playlist for a filter map (`{"target_id": n}` / `{"trial_id": n}` / empty or None)."""
        if not filter:
            return self.full
        if not isinstance(filter, dict):
            raise CommandError(ErrorCode.BAD_REQUEST, "filter must be a map")
        unknown = sorted(str(k) for k in filter if k not in ("target_id", "trial_id"))
        if unknown:
            raise CommandError(ErrorCode.BAD_REQUEST, f"unknown filter key(s): {', '.join(unknown)[:200]}")
        given = {k: v for k, v in filter.items() if v is not None}
        if len(given) > 1:
            raise CommandError(ErrorCode.BAD_REQUEST, "filter by target_id or by trial_id, not both")
        if not given:
            return self.full
        (kind, value), = given.items()
        if isinstance(value, bool) or not isinstance(value, int):
            raise CommandError(ErrorCode.BAD_REQUEST, f"filter {kind} must be an int")
        key = (kind, value)
        cached = self._playlists.get(key)
        if cached is None:
            cached = self._build_playlist(kind, value)
            if len(self._playlists) >= MAX_PLAYLISTS:
                self._playlists.pop(next(iter(self._playlists)))
            self._playlists[key] = cached
        return cached

    def _build_playlist(self, kind: str, value: int) -> Playlist:
        rec = self.recording
        if kind == "trial_id":
            trial = rec.trial_by_id(value)
            if trial is None:
                raise CommandError(ErrorCode.NOT_FOUND, f"no trial with trial_id {value}")
            trials = [trial]
        else:
            trials = rec.trials_for_target(value)
            if not trials:
                raise CommandError(ErrorCode.NOT_FOUND, f"no trial with target_id {value}")
        ids = sorted({b for t in trials for b in range(t.first_bin, t.stop_bin)})
        if not ids:
            raise CommandError(ErrorCode.NOT_FOUND, f"the trials with {kind} {value} have no bins")
        return Playlist(rec.n_bins, array("i", ids), {kind: value})
