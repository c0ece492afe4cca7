"""The state file's format and I/O: atomic durable writes on a writer thread, strict reading.

Two files (see docs/broker.md, Persistence):
- the snapshot ``<state>`` (version 2): ``{"version": 2, "saved_at": unix_s, "dataset":
  {"name", "bins", "bin_ms", "content_key"}, "sessions": [Session.saved(), ...]}``, rewritten when
  sessions change;
- the alive record ``<state>.alive``: ``{"alive_at": unix_s, "touched": {code: last_accessed}}``,
  rewritten every few seconds while sessions exist (small: positions are computed from the
  snapshot's anchors and this time; only sessions used since the snapshot are listed).
Each write goes to a temporary file in the same directory, is flushed and fsynced, renamed over the
old file, and the directory is fsynced, so a crash leaves the old or the new file, never half of
one; a failed write removes its temporary file and is tried again every RETRY_S. Reading never trusts the file: anything that is not
exactly the expected shape is rejected with a reason (parse_entry), and an unreadable file is set
aside, never fatal.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.config import REPO_ROOT
from protocol.wire import ProtocolError, validate_code

log = logging.getLogger("broker.state")
STATE_VERSION = 2
DEFAULT_STATE_PATH = REPO_ROOT / "data" / "state" / "broker-sessions.json"
MAX_STATE_BYTES = 64 << 20
RETRY_S = 2.0                    # a file whose write failed is written again this often
STATES = ("playing", "paused", "ended")
_MAX_INT = 2 ** 53


def state_path(configured: Path | None) -> Path:
    return configured if configured is not None else DEFAULT_STATE_PATH


def alive_path(path: Path) -> Path:
    return path.with_name(path.name + ".alive")


def serialise_session(saved: dict[str, Any]) -> str:
    return json.dumps(saved, separators=(",", ":"), allow_nan=False)


def assemble(parts: list[str], dataset: dict[str, Any]) -> str:
    """The file's text from already serialised sessions (so big snapshots can be built in chunks)."""
    head = json.dumps({"version": STATE_VERSION, "saved_at": time.time(), "dataset": dataset},
                      separators=(",", ":"))
    return head[:-1] + ',"sessions":[' + ",".join(parts) + "]}"


def alive_body(now_wall: float, touched: dict[str, float]) -> str:
    """The alive record: the time, and last_accessed of sessions used since the snapshot."""
    return json.dumps({"alive_at": now_wall, "touched": touched}, separators=(",", ":"))


# -- writing --------------------------------------------------------------------------------------
def write(path: Path, body: str) -> None:
    """Replace ``path`` durably and atomically; OSError on failure (no temporary file is left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateWriter:
    """Writes the latest submitted body of each file on a thread of its own (older pending bodies
    of the same file are dropped). A body whose write failed is written again every RETRY_S
    until it succeeds or a newer body of that file replaces it, so freeing space (or fixing the
    directory) is enough for the state to be saved again.

    ``error`` is the reason of one of the files whose last write failed, None once every file has
    been written again: a small file that still fits on a full disk does not hide the failure of
    a bigger one. Going from all saved to failing is logged once, and back once; the failed
    writes in between are only counted (``failures``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[Path, str] = {}
        self._retry: dict[Path, str] = {}              # bodies whose write failed
        self._retry_at = 0.0                           # monotonic s of the next retry
        self._reasons: dict[Path, str] = {}            # why each failing file failed
        self._closed = False
        self.error: str | None = None
        self.last_write_at: float | None = None        # Unix s of the last successful write
        self.failures = 0                              # failed writes since start
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
        self._thread.start()

    def submit(self, path: Path, body: str) -> None:
        with self._cond:
            self._pending[path] = body
            self._retry.pop(path, None)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    if not self._retry:
                        self._cond.wait()
                    elif (left := self._retry_at - time.monotonic()) > 0:
                        self._cond.wait(left)
                    else:
                        self._pending, self._retry = self._retry, {}
                if not self._pending:
                    return                             # closed (a failed body stays unsaved)
                path, body = self._pending.popitem()
            if not self._write(path, body):
                with self._cond:
                    if path not in self._pending:      # else a newer body replaces it
                        self._retry[path] = body
                        self._retry_at = time.monotonic() + RETRY_S

    def _write(self, path: Path, body: str) -> bool:
        try:
            write(path, body)
        except OSError as exc:
            self.failures += 1
            message = f"cannot save session state to {path}: {exc.strerror or exc}"
            if not self._reasons:
                log.error("%s (sessions are kept in memory; saving is retried every %g s)",
                          message, RETRY_S)
            self._reasons[path] = self.error = message
            return False
        self.last_write_at = time.time()
        if self._reasons.pop(path, None) is not None:
            if self._reasons:
                self.error = next(iter(self._reasons.values()))
            else:
                self.error = None
                log.info("session state saved to %s again", path)
        return True

    def close(self, final: dict[Path, str] | None = None) -> None:
        """Write ``final`` (if given) after anything pending, then stop the thread."""
        with self._cond:
            self._pending.update(final or {})
            self._closed = True
            self._cond.notify()
        self._thread.join(10)


# -- reading --------------------------------------------------------------------------------------
class StateFileError(ValueError):
    """The state file as a whole cannot be used (the reason is the message)."""


@dataclass(frozen=True)
class Snapshot:
    saved_at: float
    dataset: dict[str, Any]
    entries: list[Any]                 # raw entries; parse_entry checks each


def read(path: Path) -> Snapshot | None:
    """The snapshot at ``path``, None if there is none; StateFileError if it is unusable."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"unreadable: {exc.strerror or exc}") from None
    if len(raw) > MAX_STATE_BYTES:
        raise StateFileError(f"larger than {MAX_STATE_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StateFileError(f"not JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise StateFileError("not a JSON object")
    if data.get("version") != STATE_VERSION:
        raise StateFileError(f"unsupported state version {str(data.get('version'))[:20]!r}")
    sessions, dataset, saved_at = data.get("sessions"), data.get("dataset"), data.get("saved_at")
    if not isinstance(sessions, list) or not isinstance(dataset, dict) or not _finite(saved_at):
        raise StateFileError("`sessions`, `dataset` or `saved_at` missing or of the wrong type")
    return Snapshot(float(saved_at), dataset, sessions)


def read_alive(path: Path) -> tuple[float, dict[str, float]] | None:
    """The last alive record beside the snapshot (time, touched), None if absent or unusable."""
    try:
        with open(alive_path(path), "rb") as f:
            data = json.loads(f.read(MAX_STATE_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not _finite(data.get("alive_at")):
        return None
    touched = data.get("touched")
    touched = {k: float(v) for k, v in touched.items()
               if isinstance(k, str) and _finite(v)} if isinstance(touched, dict) else {}
    return float(data["alive_at"]), touched


def set_aside(path: Path, suffix: str) -> Path | None:
    """Move the snapshot out of the way (kept for inspection); None if even that fails."""
    aside = path.with_name(f"{path.name}.{suffix}")
    try:
        os.replace(path, aside)
    except OSError:
        return None
    return aside


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_INT


_CHECKS = {
    "created_at": _finite, "last_accessed": _finite, "anchor_wall": _finite, "speed": _finite,
    "state": lambda v: v in STATES, "loop": lambda v: isinstance(v, bool),
    "next_tick": _count, "anchor_tick": _count, "anchor_pos": _count,
    "packets_sent": _count, "packets_skipped": _count,
    "filter": lambda v: v is None or isinstance(v, dict),
    "noise": lambda v: v is None or isinstance(v, dict),
}
_OPTIONAL = {"evaluation": lambda v: v is None or isinstance(v, dict),
             "perturbations": lambda v: v is None or isinstance(v, dict)}   # parsed again on create


def parse_entry(entry: Any) -> dict[str, Any]:
    """One saved session, checked field by field; ValueError naming the first bad field."""
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    try:
        validate_code(entry.get("code"))
    except ProtocolError as exc:
        raise ValueError(f"code: {exc}") from None
    for name, ok in _CHECKS.items():
        if name not in entry:
            raise ValueError(f"{name} is missing")
        if not ok(entry[name]):
            raise ValueError(f"{name} has a bad value {str(entry[name])[:40]!r}")
    for name, ok in _OPTIONAL.items():
        if name in entry and not ok(entry[name]):
            raise ValueError(f"{name} has a bad value {str(entry[name])[:40]!r}")
    return entry
