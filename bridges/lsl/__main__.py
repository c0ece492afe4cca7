"""Entry point of the LSL bridge: `python -m bridges.lsl` (configuration, logging, signals, exit codes).

Exit codes: 0 after SIGTERM/SIGINT, 2 for bad configuration, 1 for any other start-up failure.
With PHANTOM_LSL_ENABLED=false it logs that LSL is disabled and idles until SIGTERM, so a Procfile
can keep its `lsl` line whatever the setting.

On SIGTERM the bridge closes its ZeroMQ sockets, kills its outlet hosts (a process per mirrored
session, bridges/lsl/host.py) and leaves with os._exit: the kernel closes every outlet's sockets at
once, so inlets see the end and discovery stops answering immediately. No outlet is destroyed one
by one, which costs about 25 ms each and can crash liblsl 1.18 (docs/lsl.md, "Known issues").
"""
from __future__ import annotations

import logging
import os
import signal
import sys

import zmq

from bridges.lsl.bridge import Bridge, Stopped
from protocol.config import Config
from protocol import curve
from protocol.logs import configure_process, ready_logger

log = logging.getLogger("bridges.lsl")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _StopSignal(BaseException):
    """Raised by the idle mode's signal handler to end signal.pause().

    A BaseException, like KeyboardInterrupt, so that code it interrupts (logging's handleError
    swallows Exception) cannot absorb it.
    """


def _raise_stop(*_: object) -> None:
    raise _StopSignal


def _idle() -> int:
    """LSL switched off: wait for a stop signal without creating any socket or outlet."""
    # A handler that raises (rather than a flag) cannot lose a signal that lands just before pause().
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stop)
    try:
        log.info("LSL is disabled (PHANTOM_LSL_ENABLED is false): no outlets; idling until SIGTERM")
        ready_logger("bridges.lsl").info("READY lsl enabled=false")
        while True:
            signal.pause()
    except _StopSignal:
        log.info("LSL bridge stopped")
    return 0


def main() -> int:
    config = configure_process(log)
    if config is None:
        return 2
    if not config.lsl_enabled:
        return _idle()
    try:
        curve.client_keys(config.curve_dir)
    except curve.CurveError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    code = _serve(config)
    logging.shutdown()
    os._exit(code)


def _serve(config: Config) -> int:
    ctx = curve.client_context(config.curve_dir)     # CURVE client sockets if configured
    try:
        bridge = Bridge(config, ctx)
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda *_: bridge.stop())
        try:
            bridge.start()
            bridge.run()
        except Stopped:
            pass
        finally:
            bridge.close()
    except Exception as exc:  # start-up failures: one line with the reason, non-zero exit
        log.error("LSL bridge failed: %s: %s", type(exc).__name__, exc)
        return 1
    finally:
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
