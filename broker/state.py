"""Session persistence: the JSON state file, written atomically, read back at start-up.

File (version 1): ``{"version": 1, "saved_at": unix_s, "dataset": {"name", "bins"},
"sessions": [Session.saved(), ...]}``. Written to a temporary file in the same directory, flushed,
fsynced and renamed over the old one, so a crash leaves either the old or the new file, never half.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from protocol.config import REPO_ROOT

log = logging.getLogger("broker.state")
STATE_VERSION = 1
DEFAULT_STATE_PATH = REPO_ROOT / "data" / "state" / "broker-sessions.json"


def state_path(configured: Path | None) -> Path:
    return configured if configured is not None else DEFAULT_STATE_PATH


def save(path: Path, sessions: list[dict[str, Any]], dataset: dict[str, Any]) -> None:
    """Replace the state file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": STATE_VERSION, "saved_at": time.time(), "dataset": dataset,
                       "sessions": sessions}, separators=(",", ":"))
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
