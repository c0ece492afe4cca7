"""``python -m frontdoor``: the reverse proxy (nginx) on PHANTOM_PORT until SIGTERM/SIGINT.

``--print-config`` prints the nginx configuration it would run and exits. Exit codes: 0 after
SIGTERM or SIGINT, 2 for bad configuration, 1 when it cannot start (no nginx binary, the port is
taken, missing TLS files, nginx refuses its configuration or exits).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from frontdoor import nginx
from frontdoor.nginx_conf import render
from protocol.config import REPO_ROOT, Config
from protocol.logs import configure_process, ready_logger

log = logging.getLogger("frontdoor")
ready_log = ready_logger("frontdoor")

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
RUNTIME_ROOT = REPO_ROOT / "data" / "frontdoor"     # one temporary folder per running door


def ready_line(config: Config, host: str, port: int, version: str) -> str:
    control, bridges = config.upstreams()
    shown = f"[{host}]" if ":" in host else host
    tls = f" tls=https://{shown}:{config.tls_port}" if config.tls_cert else ""
    return (f"READY frontdoor url=http://{shown}:{port} streams=ws://{shown}:{port}/stream{tls} "
            f"control={','.join(control)} ws={','.join(bridges)} proxy={version}")


def nginx_version(binary: str) -> str:
    try:
        done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise nginx.StartError(f"cannot run {binary}: {exc}") from None
    text = (done.stdout + done.stderr).strip()
    return text.rsplit(" ", 1)[-1] if done.returncode == 0 else "nginx/unknown"


def check_tls_files(config: Config) -> None:
    for name, path in (("PHANTOM_TLS_CERT", config.tls_cert), ("PHANTOM_TLS_KEY", config.tls_key)):
        if path is not None and not path.is_file():
            raise nginx.StartError(f"{name}={path}: no such file")


def run(config: Config, runtime: Path) -> int:
    binary = nginx.nginx_binary()
    version = nginx_version(binary)
    check_tls_files(config)
    if config.tls_cert:
        nginx.choose_port(config.host, config.tls_port)
    port = nginx.choose_port(config.host, config.port)
    conf = runtime / "nginx.conf"
    conf.write_text(render(config, config.host, port, runtime))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    proc = nginx.start(binary, conf, runtime)
    reader = nginx.LogReader(proc)
    try:
        _wait_serving(proc, reader, "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host, port)
        ready_log.info(ready_line(config, config.host, port, version))
        while not stop.wait(0.5):
            if proc.poll() is not None:
                log.error("nginx exited with %s: %s", proc.returncode, reader.last_error or "no reason logged")
                return 1
        return _stop(proc, reader)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_serving(proc: subprocess.Popen, reader: nginx.LogReader, host: str, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (reader.workers.is_set() and nginx.accepts(host, port)):
        if proc.poll() is not None or time.monotonic() > deadline:
            reader.join(2.0)        # its last lines say why
            raise nginx.StartError(f"nginx did not start (exit {proc.poll()}): "
                                   f"{reader.last_error or 'no reason logged'}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, reader: nginx.LogReader) -> int:
    proc.terminate()            # nginx's fast shutdown: open connections are closed
    try:
        code = proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("nginx did not stop within %.0f s; killing it", STOP_TIMEOUT_S)
        proc.kill()
        code = proc.wait()
    reader.join(2.0)
    log.info("stopped (nginx exit %s)", code)
    return 0 if code == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frontdoor", description=__doc__.splitlines()[0])
    parser.add_argument("--print-config", action="store_true",
                        help="print the nginx configuration from the PHANTOM_* settings and exit")
    args = parser.parse_args(argv)
    config = configure_process(log)
    if config is None:
        return 2
    if args.print_config:
        print(render(config, config.host, config.port, RUNTIME_ROOT / "run"))
        return 0
    RUNTIME_ROOT.mkdir(parents=True, exist_ok=True)
    runtime = Path(tempfile.mkdtemp(prefix="door-", dir=RUNTIME_ROOT))
    try:
        return run(config, runtime)
    except nginx.StartError as exc:
        log.error("%s", exc)
        return 1
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
