"""Entry point: ``python -m bridges.ws [--dev]`` serves the WebSocket bridge on PHANTOM_WS_PORT.

Without ``--dev`` it runs under gunicorn's gthread worker (production); ``--dev`` uses Werkzeug's
threaded server instead (single process, handy for debugging). Exit codes: 0 after SIGTERM or
SIGINT, 2 for bad configuration, 1 when it cannot start.
"""
from __future__ import annotations

import argparse
import logging
import resource
import sys

from bridges.ws.serve import port_free, serve_gunicorn, serve_werkzeug
from protocol import curve
from protocol.logs import configure_process

log = logging.getLogger("bridges.ws")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridges.ws", description=__doc__.splitlines()[0])
    parser.add_argument("--dev", action="store_true",
                        help="serve with Werkzeug's threaded server instead of gunicorn")
    args = parser.parse_args(argv)
    config = configure_process(log)
    if config is None:
        return 2
    try:
        curve.client_keys(config.curve_dir)     # each worker loads them; fail here, once, if bad
    except curve.CurveError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    _raise_fd_limit()
    problem = port_free(config.host, config.ws_port)
    if problem:
        log.error("%s", problem)
        return 1
    return serve_werkzeug(config) if args.dev else serve_gunicorn(config)


def _raise_fd_limit() -> None:
    """Each client costs about three descriptors (WebSocket, SUB's TCP connection, its mailbox)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    sys.exit(main())
