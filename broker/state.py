"""Session persistence: the JSON state file, written atomically, read back at start-up.

File (version 1): ``{"version": 1, "saved_at": unix_s, "dataset": {"name", "bins"},
"sessions": [Session.saved(), ...]}``. Written to a temporary file in the same directory, flushed,
fsynced and renamed over the old one, so a crash leaves either the old or the new file, never half.
The broker loop serialises a snapshot a few sessions per turn (between packets); StateWriter's
thread does the file I/O, so neither a big snapshot nor a slow disk delays a packet.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from protocol.config import REPO_ROOT

log = logging.getLogger("broker.state")
STATE_VERSION = 1
DEFAULT_STATE_PATH = REPO_ROOT / "data" / "state" / "broker-sessions.json"


def state_path(configured: Path | None) -> Path:
    return configured if configured is not None else DEFAULT_STATE_PATH


def serialise_session(saved: dict[str, Any]) -> str:
    return json.dumps(saved, separators=(",", ":"))


def assemble(parts: list[str], dataset: dict[str, Any]) -> str:
    """The file's text from already serialised sessions (so big snapshots can be built in chunks)."""
    head = json.dumps({"version": STATE_VERSION, "saved_at": time.time(), "dataset": dataset},
                      separators=(",", ":"))
    return head[:-1] + ',"sessions":[' + ",".join(parts) + "]}"


def serialise(sessions: list[dict[str, Any]], dataset: dict[str, Any]) -> str:
    return assemble([serialise_session(s) for s in sessions], dataset)


def save(path: Path, sessions: list[dict[str, Any]], dataset: dict[str, Any]) -> None:
    """Replace the state file atomically (synchronously)."""
    write(path, serialise(sessions, dataset))


def write(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path) -> list[dict[str, Any]]:
    """The saved sessions, or [] when there is no file; a corrupt file is set aside, not fatal."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {data.get('version')!r}"
                             if isinstance(data, dict) else "not a JSON object")
        sessions = data.get("sessions")
        if not isinstance(sessions, list):
            raise ValueError("`sessions` is not a list")
        return [s for s in sessions if isinstance(s, dict)]
    except ValueError as exc:
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        log.warning("state file %s unreadable (%s); moved to %s, starting empty", path, exc, aside)
        return []


class StateWriter:
    """Writes the latest submitted snapshot on a thread of its own; older pending ones are dropped."""

    def __init__(self, path: Path):
        self.path = path
        self._cond = threading.Condition()
        self._pending: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
        self._thread.start()

    def submit(self, body: str) -> None:
        with self._cond:
            self._pending = body
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                body, self._pending = self._pending, None
                if body is None:
                    return
            try:
                write(self.path, body)
            except OSError as exc:
                log.error("cannot save session state to %s: %s", self.path, exc)

    def close(self, final: str | None = None) -> None:
        """Write ``final`` (if given) after anything pending, then stop the thread."""
        with self._cond:
            if final is not None:
                self._pending = final
            self._closed = True
            self._cond.notify()
        self._thread.join(10)
