"""Persistence of the sessions: what to save when, and recreating them at start-up.

Snapshots (every session's settings and playback anchor) are written when sessions change, at
most every SAVE_COALESCE_S, serialised a chunk per loop turn; while sessions exist a tiny alive
record (the time, plus last_accessed of sessions used since the snapshot) is written every
ALIVE_PERIOD_S. A playing session's position at any time follows from its anchor, so nothing is
rewritten just because time passes. At start-up (restore) a playing session resumes where it was
at the last alive time (at most one ALIVE_PERIOD_S back), and every session's sequence numbers
resume above anything it can have sent before the broker stopped (see docs/broker.md).
The file format and its atomic I/O live in broker.state.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

from broker import state as state_file
from broker.evaluation import EvalSettings
from broker.lifecycle import Sessions
from broker.session import ENDED, MAX_SPEED, MIN_SPEED, PAUSED, PLAYING, Session, check_speed
from protocol.commands import CommandError

log = logging.getLogger("broker")

SAVE_COALESCE_S = 0.2         # a change is saved within this long
ALIVE_PERIOD_S = 2.0          # the alive record (positions of playing sessions) this often
SNAPSHOT_CHUNK = 50           # sessions serialised per loop turn (about 0.2 ms), between packets
CHANGE_WINDOW_S = 1.0         # a change reaches the disk within this long (coalescing + write)
MAX_CLOCK_S = 100 * 365 * 86400.0   # an anchor further from now than this is not a real time


class Persistence:
    """Snapshots and alive records of the sessions, written by a writer thread; restore."""

    def __init__(self, sessions: Sessions):
        self.sessions = sessions
        self.path = state_file.state_path(sessions.config.state_path)
        self.alive_path = state_file.alive_path(self.path)
        self.writer: state_file.StateWriter | None = None
        self._job: tuple[list[Session], list[str]] | None = None
        self._last_save = 0.0
        self._last_alive = 0.0
        self.restore_report: dict[str, Any] = {"restored": 0, "skipped": 0, "problem": None,
                                               "set_aside": None}

    @property
    def busy(self) -> bool:
        """A snapshot is being built: the loop should keep turning until it is complete."""
        return self._job is not None

    def dataset_identity(self) -> dict[str, Any]:
        rec = self.sessions.recording
        return {"name": rec.name, "bins": rec.n_bins, "bin_ms": rec.bin_ms,
                "content_key": rec.content_key}

    def status(self) -> dict[str, Any]:
        """For ping and metrics: is the state safe on disk, and what did the restore do."""
        writer = self.writer
        error = writer.error if writer is not None else None
        return {"ok": error is None and self.restore_report["problem"] is None,
                "path": str(self.path), "save_error": error,
                "save_failures": writer.failures if writer is not None else 0,
                "last_saved_at": writer.last_write_at if writer is not None else None,
                "restore": dict(self.restore_report)}

    # -- when to save -----------------------------------------------------------------------------
    def on_housekeeping(self, now: float) -> None:
        """Once a second: the alive record every ALIVE_PERIOD_S while sessions exist."""
        if now - self._last_alive >= ALIVE_PERIOD_S and len(self.sessions.registry):
            self._last_alive = now
            body = state_file.alive_body(time.time(), self.sessions.touched)
            self._writer().submit(self.alive_path, body)

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
        self.sessions.touched = {}
        self._last_save = time.monotonic()
        self._advance()

    def _advance(self) -> None:
        pending, parts = self._job
        now = time.monotonic()
        offset = time.time() - now
        live = self.sessions.registry.sessions
        for _ in range(min(SNAPSHOT_CHUNK, len(pending))):
            s = pending.pop()
            if live.get(s.code) is s:          # deleted meanwhile: not saved
                s.sync(now)
                parts.append(state_file.serialise_session(s.saved(offset)))
        if not pending:
            body = state_file.assemble(parts[::-1], self.dataset_identity())
            self._writer().submit(self.path, body)
            self._job = None

    def _snapshot(self) -> str:
        """Every session's saved state, serialised in one go (used at shutdown)."""
        now = time.monotonic()
        offset = time.time() - now
        parts = []
        for s in self.sessions.registry.sessions.values():
            s.sync(now)
            parts.append(state_file.serialise_session(s.saved(offset)))
        return state_file.assemble(parts, self.dataset_identity())

    def _writer(self) -> state_file.StateWriter:
        if self.writer is None:
            self.writer = state_file.StateWriter()
        return self.writer

    def final_save(self) -> None:
        """At shutdown: write the last snapshot and alive record, and wait for them."""
        self._writer().close({self.path: self._snapshot(),
                              self.alive_path: state_file.alive_body(time.time(), {})})

    # -- restore ----------------------------------------------------------------------------------
    def restore(self) -> int:
        """Recreate the saved sessions; one log line says what happened. Never raises."""
        report = self.restore_report
        try:
            snapshot = state_file.read(self.path)
        except state_file.StateFileError as exc:
            self._reject(f"state file {self.path} unusable ({exc})", "corrupt")
            return 0
        if snapshot is None:
            return 0
        mine = self.dataset_identity()
        if snapshot.dataset != mine:
            self._reject(f"state file {self.path} belongs to another dataset "
                         f"({_describe(snapshot.dataset)}; this broker serves {_describe(mine)}): "
                         f"none of its {len(snapshot.entries)} sessions restored", "other-dataset")
            return 0
        alive = state_file.read_alive(self.path)
        alive_at = max(snapshot.saved_at, alive[0] if alive else 0.0)
        touched = alive[1] if alive and alive[0] >= snapshot.saved_at else {}
        problems = self._restore_entries(snapshot.entries, alive_at, touched)
        if problems:
            first = problems[0]
            self._reject(f"state file {self.path}: {len(problems)} of {len(snapshot.entries)} "
                         f"sessions invalid and skipped (first: {first}); restored "
                         f"{report['restored']}", "rejected", keep=True)
        else:
            log.info("restored %d sessions from %s (positions as of %.1f s before start)",
                     report["restored"], self.path, max(0.0, time.time() - alive_at))
        self.sessions.dirty = bool(problems)    # rewrite a clean file at once
        return report["restored"]

    def _reject(self, message: str, suffix: str, keep: bool = False) -> None:
        """One log line; the file moved aside (``keep``: a copy stays, the valid part restored)."""
        aside = state_file.set_aside(self.path, suffix)
        report = self.restore_report
        report["problem"] = message
        report["set_aside"] = str(aside) if aside else None
        where = f"moved to {aside}" if aside else "could not be moved aside"
        log.error("%s; %s%s", message, where, "" if keep else ", starting without its sessions")

    def _restore_entries(self, entries: list[Any], alive_at: float,
                         touched: dict[str, float]) -> list[str]:
        problems = []
        valid = []
        for entry in entries:
            try:
                valid.append(state_file.parse_entry(entry))
            except ValueError as exc:
                code = entry.get("code") if isinstance(entry, dict) else None
                problems.append(f"{str(code)[:64]!r}: {exc}")
        valid.sort(key=lambda e: touched.get(e["code"], e["last_accessed"]))
        now_wall = time.time()
        for entry in valid[-self.sessions.config.max_sessions:]:
            try:
                self._restore_one(entry, alive_at, now_wall, touched)
                self.restore_report["restored"] += 1
            except (CommandError, ValueError, TypeError) as exc:
                problems.append(f"{entry['code']!r}: {exc}")
        self.restore_report["skipped"] = len(problems)
        return problems

    def _restore_one(self, entry: dict[str, Any], alive_at: float, now_wall: float,
                     touched: dict[str, float]) -> None:
        bin_s = self.sessions.recording.bin_ms / 1000.0
        size = self.sessions.registry.playlist(entry["filter"]).size
        clock = resumed_clock(entry, bin_s, alive_at, now_wall, size)
        self.sessions.create(
            entry["code"], speed=entry["speed"], loop=entry["loop"],
            paused=entry["state"] == PAUSED, filter=entry["filter"], noise=entry["noise"],
            perturbations=entry.get("perturbations"),
            settings=EvalSettings.from_saved(entry.get("evaluation")),
            lsl=entry.get("lsl") is True,
            restored={"clock": clock,
                      "last_accessed": float(touched.get(entry["code"], entry["last_accessed"])),
                      "info": {"positions_as_of": alive_at, "restored_at": now_wall,
                               "sequence_saved": entry["next_tick"],
                               "sequence_resumed": clock["next_tick"]}})


def reserve_ticks(bin_s: float) -> int:
    """Sequence numbers a session may use up before its latest change reaches the disk: the
    most it can send in CHANGE_WINDOW_S at the highest speed."""
    return math.ceil(CHANGE_WINDOW_S * MAX_SPEED / bin_s)


def resumed_clock(entry: dict[str, Any], bin_s: float, alive_at: float, now_wall: float,
                  size: int) -> dict[str, Any]:
    """Session clock arguments of a saved entry, for a playlist of ``size`` bins.

    Position: where a playing session was at ``alive_at`` (computed from its anchor). Sequence:
    above any tick it can have sent until now (ticks follow its clock: at most the bins closed by
    now), plus reserve_ticks for a change (say a speed-up) not yet on disk when it stopped.
    """
    if entry["anchor_pos"] >= size:
        raise ValueError(f"position {entry['anchor_pos']} outside its {size}-bin playlist")
    if not check_speed(entry["speed"]):
        raise ValueError(f"speed {entry['speed']} outside [{MIN_SPEED:g}, {MAX_SPEED:g}]")
    if not abs(now_wall - entry["anchor_wall"]) < MAX_CLOCK_S:
        raise ValueError(f"anchor_wall {entry['anchor_wall']} is not a time of this century")
    interval = bin_s / entry["speed"]
    state, pos, bound = entry["state"], entry["anchor_pos"], entry["next_tick"]
    if state == PLAYING:
        closed = max(0, math.floor((alive_at - entry["anchor_wall"]) / interval))
        raw = entry["anchor_pos"] + closed
        if entry["loop"]:
            pos = raw % size
        elif raw >= size:
            state, pos = ENDED, size - 1
        else:
            pos = raw
        upto_now = max(0, math.floor((now_wall - entry["anchor_wall"]) / interval)) + 1
        bound = max(bound, entry["anchor_tick"] + upto_now)
    return dict(created_at=entry["created_at"], next_tick=bound + reserve_ticks(bin_s),
                position=pos, ended=state == ENDED, sent=entry["packets_sent"],
                skipped=entry["packets_skipped"], stagger=True)


def _describe(dataset: dict[str, Any]) -> str:
    return (f"{str(dataset.get('name'))[:80]}, {str(dataset.get('bins'))[:12]} bins of "
            f"{str(dataset.get('bin_ms'))[:8]} ms, content {str(dataset.get('content_key'))[:16]}")
