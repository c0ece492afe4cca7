"""`python -m broker`: load the dataset, bind, restore sessions, print READY, serve until a signal.

Exit codes: 0 after SIGTERM/SIGINT (sockets closed, state saved), 2 for bad configuration,
1 for any other start-up failure (missing dataset, endpoint in use); each failure is one log line.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import signal
import sys
import time

import zmq

from broker import scheduling
from protocol.memory import Trimmer
from protocol.curve import CurveError
from protocol.logs import configure_process, ready_logger

log = logging.getLogger("broker")
ready_log = ready_logger("broker")
PR_SET_TIMERSLACK = 29


def _tighten_timer_slack() -> None:
    """Ask Linux to wake us within ~1 us of a sleep's end instead of the default 50 us slack."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _load(config):
    from broker.binning import load_recording  # noqa: PLC0415 (heavy imports after config checks)
    from broker.synthetic import ensure_dataset  # noqa: PLC0415
    began = time.monotonic()
    path = ensure_dataset(config)
    recording = load_recording(path, config.bin_ms)
    log.info("dataset %s: %d bins of %d ms, %d units, %d trials, loaded in %.2f s", recording.name,
             recording.n_bins, recording.bin_ms, recording.n_units, len(recording.trials),
             time.monotonic() - began)
    return recording


def main() -> int:
    config = configure_process(log)
    if config is None:
        return 2
    try:
        recording = _load(config)
    except Exception as exc:  # one line, whatever the dataset layer raised
        log.error("cannot load the dataset: %s: %s", type(exc).__name__, exc)
        return 1
    from broker.server import Broker  # noqa: PLC0415
    # before the zmq context starts its I/O thread, which inherits both (broker.scheduling)
    scheduling.start(config.broker_priority, config.broker_cpu)
    broker = Broker(config, recording)
    try:
        pub, control = broker.bind()
        feedback, feedback_push = broker.bind_feedback()
    except CurveError as exc:
        log.error("bad configuration: %s", exc)
        broker.close()
        return 2
    except zmq.ZMQError as exc:
        log.error("cannot bind %s / %s / %s / %s: %s", config.pub_endpoint, config.control_endpoint,
                  config.feedback_endpoint, config.feedback_push_endpoint, exc)
        broker.close()
        return 1

    def stop(signum, _frame):
        broker.stopping = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _tighten_timer_slack()
    restored = broker.restore_state()
    # Everything built so far (recording, pre-encoded frames) lives until exit: keep the cyclic
    # collector from walking it again and again while packets are due.
    gc.collect()
    gc.freeze()
    trimmer = Trimmer().start()     # freed messages' pages go back to the system (protocol.memory)
    ready_log.info("READY broker pub=%s control=%s feedback=%s feedback_push=%s dataset=%s bins=%d "
                   "sessions=%d state=%s curve=%s", pub, control, feedback, feedback_push,
                   recording.name.replace(" ", "_"), recording.n_bins, restored, broker.state_path,
                   "on" if broker.authenticator is not None else "off")
    try:
        broker.run()
    finally:
        trimmer.stop()
        broker.close()
        broker.final_save()
    log.info("broker stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
