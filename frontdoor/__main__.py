"""``python -m frontdoor``: the reverse proxy on PHANTOM_PORT until SIGTERM/SIGINT.

Exit codes: 0 after SIGTERM or SIGINT, 2 for bad configuration, 1 when it cannot start (no caddy
binary, the port is taken, Caddy refuses its configuration or exits).
"""
from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading

from frontdoor import caddy
from protocol.config import Config
from protocol.logs import configure_process, ready_logger

log = logging.getLogger("frontdoor")
ready_log = ready_logger("frontdoor")

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def ready_line(config: Config, host: str, port: int, version: str) -> str:
    control, bridges = config.upstreams()
    shown = f"[{host}]" if ":" in host else host
    return (f"READY frontdoor url=http://{shown}:{port} streams=ws://{shown}:{port}/stream "
            f"control={','.join(control)} ws={','.join(bridges)} proxy=caddy/{version}")


def caddy_version(binary: str) -> str:
    try:
        done = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise caddy.StartError(f"cannot run {binary}: {exc}") from None
    if done.returncode != 0:
        raise caddy.StartError(f"{binary} version exited {done.returncode}: {done.stderr.strip()[:200]}")
    return done.stdout.split()[0] if done.stdout.split() else "unknown"


def run(config: Config) -> int:
    binary = caddy.caddy_binary()
    version = caddy_version(binary)
    sock = caddy.listen(config.host, config.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    proc = caddy.start(binary, sock, config)
    reader = caddy.LogReader(proc)
    try:
        if not reader.serving.wait(START_TIMEOUT_S) or proc.poll() is not None:
            reader.join(2.0)        # its last lines say why
            raise caddy.StartError(f"caddy did not start (exit {proc.poll()}): "
                                   f"{reader.last_error or 'no reason logged'}")
        host, port = sock.getsockname()[:2]
        ready_log.info(ready_line(config, host, port, version))
        while not stop.wait(0.5):
            if proc.poll() is not None:
                log.error("caddy exited with %s: %s", proc.returncode, reader.last_error or "no reason logged")
                return 1
        return _stop(proc, reader)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()


def _stop(proc: subprocess.Popen, reader: caddy.LogReader) -> int:
    proc.terminate()
    try:
        code = proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("caddy did not stop within %.0f s; killing it", STOP_TIMEOUT_S)
        proc.kill()
        code = proc.wait()
    reader.join(2.0)
    log.info("stopped (caddy exit %s)", code)
    return 0 if code == 0 else 1


def main() -> int:
    config = configure_process(log)
    if config is None:
        return 2
    try:
        return run(config)
    except caddy.StartError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
