"""Persistence of the sessions: when to snapshot, building snapshots in chunks, restoring at start.

The file format and atomic writing live in broker.state; this module decides what goes in and
when (see docs/broker.md, Persistence), and recreates the saved sessions at start-up.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from broker import state as state_file
from broker.evaluation import EvalSettings
from broker.lifecycle import Sessions
from broker.session import PAUSED, PLAYING, Session
from protocol.commands import CommandError

log = logging.getLogger("broker")

SAVE_COALESCE_S = 0.2         # a change is saved within this long
SAVE_PERIOD_S = 2.0           # positions of playing sessions are saved this often
SNAPSHOT_CHUNK = 50           # sessions serialised per loop turn (about 0.2 ms), between packets


class Persistence:
    """Snapshots of every session, serialised a chunk per loop turn, written by a writer thread."""

    def __init__(self, sessions: Sessions):
        self.sessions = sessions
        self.path = state_file.state_path(sessions.config.state_path)
        self.writer: state_file.StateWriter | None = None
        self._job: tuple[list[Session], list[str]] | None = None
        self._last_save = 0.0

    @property
    def busy(self) -> bool:
        """A snapshot is being built: the loop should keep turning until it is complete."""
        return self._job is not None

    def _dataset_summary(self) -> dict[str, Any]:
        rec = self.sessions.recording
        return {"name": rec.name, "bins": rec.n_bins}

    # -- when to save -----------------------------------------------------------------------------
    def on_housekeeping(self, now: float) -> None:
        """Once a second: positions of playing sessions move, so they are saved periodically."""
        if now - self._last_save >= SAVE_PERIOD_S and any(
                s.state == PLAYING for s in self.sessions.registry.sessions.values()):
            self.sessions.dirty = True

    def on_turn(self, now: float) -> None:
        """Every loop turn: advance a snapshot being built, or start one if changes are due."""
        if self._job is not None:
            self._advance()
        elif self.sessions.dirty and now - self._last_save >= SAVE_COALESCE_S:
            self.save()

    # -- snapshots --------------------------------------------------------------------------------
    def save(self) -> None:
        """Start a snapshot; the loop serialises it a chunk per turn, then the writer thread
        writes it. Changes made meanwhile mark the state dirty again, so they are saved next."""
        self._job = (list(self.sessions.registry.sessions.values()), [])
        self.sessions.dirty = False
        self._last_save = time.monotonic()
        self._advance()

    def _advance(self) -> None:
        pending, parts = self._job
        now = time.monotonic()
        live = self.sessions.registry.sessions
        for _ in range(min(SNAPSHOT_CHUNK, len(pending))):
            s = pending.pop()
            if live.get(s.code) is s:          # deleted meanwhile: not saved
                s.sync(now)
                parts.append(state_file.serialise_session(s.saved()))
        if not pending:
            self._writer().submit(state_file.assemble(parts[::-1], self._dataset_summary()))
            self._job = None

    def _snapshot(self) -> str:
        """Every session's saved state, serialised in one go (used at shutdown)."""
        now = time.monotonic()
        parts = []
        for s in self.sessions.registry.sessions.values():
            s.sync(now)
            parts.append(state_file.serialise_session(s.saved()))
        return state_file.assemble(parts, self._dataset_summary())

    def _writer(self) -> state_file.StateWriter:
        if self.writer is None:
            self.writer = state_file.StateWriter(self.path)
        return self.writer

    def final_save(self) -> None:
        """At shutdown: write the last snapshot and wait for it."""
        self._writer().close(self._snapshot())

    # -- restore ----------------------------------------------------------------------------------
    def restore(self) -> int:
        """Recreate the saved sessions (invalid entries are logged and skipped)."""
        saved = state_file.load(self.path)
        saved.sort(key=lambda d: d.get("last_accessed", 0)
                   if isinstance(d.get("last_accessed"), (int, float)) else 0)
        restored = 0
        for entry in saved[-self.sessions.config.max_sessions:]:
            try:
                s = self.sessions.create(
                    entry.get("code"), speed=entry.get("speed", 1.0), loop=bool(entry.get("loop", True)),
                    paused=entry.get("state") == PAUSED, filter=entry.get("filter"),
                    noise=entry.get("noise"), restored=entry,
                    settings=EvalSettings.from_saved(entry.get("evaluation")))
                restored += 1
                log.debug("restored %s at packet %d", s.code, s.current_packet())
            except (CommandError, TypeError, ValueError) as exc:
                log.warning("state file: skipping session %r: %s", str(entry.get("code"))[:64], exc)
        self.sessions.dirty = False
        return restored
