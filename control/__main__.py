"""``python -m control``: serve the REST API with waitress until SIGTERM/SIGINT.

Start-up: load the Config (exit 2 on bad settings), listen on ``config.host:config.control_port`` (port 0
lets the OS choose; exit 1 if it cannot listen), then log one ``READY control url=... broker=...``
line with the real address. SIGTERM or SIGINT stops serving, closes the broker sockets, exit 0.
"""
from __future__ import annotations

import logging
import signal
import sys

import waitress

from control import create_app
from protocol.curve import CurveError
from protocol.logs import configure_process, ready_logger

log = logging.getLogger("control")
ready_log = ready_logger("control")

# Waitress threads: each holds at most one REQ socket and one request to the single-threaded
# broker, so more threads only queue there; a few let /health and slow clients not block others.
THREADS = 8
# Waitress writes a response's headers and its body separately and, with its default send_bytes=1,
# sends each at once from the worker thread: two send() calls and often two wake-ups of the client
# per response. Below this many bytes it buffers instead, so a JSON answer (headers ~130-180 bytes,
# body a few hundred) leaves in one send() from the worker; a response smaller than this in all is
# sent by waitress's I/O thread, which the worker wakes at the end of every request anyway.
SEND_BYTES = 256


def _listen_address(server) -> tuple[str, int]:
    """The address waitress really bound (port 0 resolved), for one or several sockets."""
    if hasattr(server, "effective_port"):
        host, port = server.effective_host, server.effective_port
    else:
        host, port = server.effective_listen[0]
    host = str(host)
    return (f"[{host}]" if ":" in host else host), int(port)


def _stop(signum, frame):
    # waitress's run() catches SystemExit, closes its sockets and returns.
    raise SystemExit(0)


def main() -> int:
    config = configure_process(log)
    if config is None:
        return 2
    try:
        app = create_app(config)
    except CurveError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    except ValueError as exc:  # an endpoint ZeroMQ cannot use
        log.error("bad configuration: PHANTOM_CONTROL_ENDPOINT: %s", exc)
        return 2
    client = app.extensions["phantomlink"]["broker"]
    try:
        server = waitress.create_server(app, host=config.host, port=config.control_port, threads=THREADS,
                                        send_bytes=SEND_BYTES, ident="PhantomLink",
                                        clear_untrusted_proxy_headers=True,
                                        max_request_body_size=16 << 20)
    except (OSError, ValueError) as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.control_port, exc)
        client.close()
        return 1
    host, port = _listen_address(server)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    ready_log.info("READY control url=http://%s:%d broker=%s", host, port, config.control_endpoint)
    try:
        server.run()
    finally:
        server.close()
        client.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
