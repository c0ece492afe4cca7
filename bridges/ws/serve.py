"""Running the bridge: gunicorn's gthread worker (production) or Werkzeug's threaded server (--dev).

flask-sock cannot run under waitress (simple-websocket takes the socket from Werkzeug, gunicorn,
eventlet or gevent only). gunicorn is embedded through ``BaseApplication`` so that
``python -m bridges.ws`` is the whole command. Each WebSocket client holds one thread of the
worker's pool (plus simple-websocket's reader thread) for as long as it is connected, so the pool
has a thread for each of the ``PHANTOM_WS_MAX_CLIENTS`` clients a worker admits plus ``HTTP_THREADS``
for ``/health`` and refused handshakes, all started at boot (bridges.ws.worker): the worker's thread
count never creeps. ``GUNICORN_CMD_ARGS`` (e.g. ``--workers 4 --threads 1000``) overrides the
defaults below; every worker has its own fan-out thread and SUB sockets, so the broker's counts
stay true with any number.
"""
from __future__ import annotations

import logging
import signal
import socket
import threading
from typing import Any

from protocol.config import Config
from protocol.logs import ready_logger

log = logging.getLogger("bridges.ws")
ready_log = ready_logger("bridges.ws")

HTTP_THREADS = 32           # pool threads beyond PHANTOM_WS_MAX_CLIENTS: /health, refused handshakes
KEEPALIVE_CONNECTIONS = 512     # connections beyond the pool's threads (gthread counts kept-alive ones)
GRACE_S = 2.0               # clients get this long to take their 1001 close before being cut


def ready_line(config: Config, host: str, port: int, server: str, **extra: Any) -> str:
    fields = {"url": f"ws://{host}:{port}", "health": f"http://{host}:{port}/health",
              "pub": config.pub_endpoint, "control": config.control_endpoint, "server": server, **extra}
    return "READY ws " + " ".join(f"{k}={v}" for k, v in fields.items())


def port_free(host: str, port: int) -> str | None:
    """None if (host, port) can be bound now, else the reason; port 0 is always free."""
    if port == 0:
        return None
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    finally:
        probe.close()
    return None


def serve_gunicorn(config: Config) -> int:
    from gunicorn.app.base import BaseApplication

    class _Gunicorn(BaseApplication):
        def load_config(self) -> None:
            for key, value in _gunicorn_options(config).items():
                self.cfg.set(key, value)
            env_args = self.cfg.parser().parse_args(self.cfg.get_cmd_args_from_env())
            for key, value in vars(env_args).items():
                if value is not None and key != "args":
                    self.cfg.set(key.lower(), value)

        def load(self):
            from bridges.ws.app import create_app
            return create_app(config)

    _Gunicorn().run()       # exits the process itself (0 after SIGTERM)
    return 0


def _gunicorn_options(config: Config) -> dict[str, Any]:
    def when_ready(arbiter: Any) -> None:
        host, port = arbiter.LISTENERS[0].getsockname()[:2]
        ready_log.info(ready_line(config, host, port, "gunicorn", workers=arbiter.cfg.workers,
                                  threads=arbiter.cfg.threads))

    threads = pool_threads(config)
    return {
        "bind": [f"{config.host}:{config.ws_port}"],
        "workers": 1,
        "worker_class": "bridges.ws.worker.BridgeWorker",     # gthread, its pool started at boot
        "threads": threads,
        "worker_connections": threads + KEEPALIVE_CONNECTIONS,
        "graceful_timeout": int(GRACE_S) + 3,
        "keepalive": 5,
        "loglevel": config.log_level.lower(),
        "errorlog": "-",
        "proc_name": "phantomlink-ws",
        "control_socket_disable": True,     # a shared ~/.gunicorn/gunicorn.ctl would collide
        "when_ready": when_ready,
        "post_worker_init": _install_worker_signals,
    }


def pool_threads(config: Config) -> int:
    """Threads of a worker's pool: one per admitted client plus HTTP_THREADS (512 by default)."""
    return config.ws_max_clients + HTTP_THREADS


def _install_worker_signals(worker: Any) -> None:
    """Close the clients before gunicorn's own handling, which would wait on their threads."""
    bridge = worker.wsgi.extensions["phantom_ws"]

    def chained(original):
        def handler(sig: int, frame: Any) -> None:
            threading.Thread(target=bridge.shutdown, args=(GRACE_S,), name="ws-shutdown").start()
            original(sig, frame)
        return handler

    signal.signal(signal.SIGTERM, chained(worker.handle_exit))
    signal.signal(signal.SIGINT, chained(worker.handle_quit))
    signal.signal(signal.SIGQUIT, chained(worker.handle_quit))
    signal.siginterrupt(signal.SIGTERM, False)


def serve_werkzeug(config: Config) -> int:
    from werkzeug.serving import make_server

    from bridges.ws.app import create_app

    app = create_app(config)
    try:
        server = make_server(config.host, config.ws_port, app, threaded=True)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.ws_port, exc.strerror or exc)
        app.extensions["phantom_ws"].fanout.stop()
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, name="werkzeug", daemon=True).start()
    host, port = server.server_address[:2]
    ready_log.info(ready_line(config, host, port, "werkzeug"))
    while not stop.wait(0.5):
        pass
    app.extensions["phantom_ws"].shutdown(GRACE_S)
    server.shutdown()
    server.server_close()
    return 0
