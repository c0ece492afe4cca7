"""The outlet host: one mirrored session's four LSL outlets, in a process of their own.

Why a process per session: liblsl 1.18's ``lsl_destroy_outlet`` can crash its process (SIGSEGV in
the outlet's teardown) when an inlet is connecting at that moment (docs/lsl.md, "Known issues").
A host never destroys an outlet. When its session stops being mirrored, the bridge kills it and the
kernel closes the outlets' sockets at once: inlets see the end, discovery stops answering, and no
teardown code runs, so there is nothing left to crash. A host that dies anyway takes only its own
session's outlets with it; the bridge logs it and starts the session a new host.

Hosts are forked from multiprocessing's forkserver, which has imported this module (pylsl, numpy,
msgpack) and read liblsl's configuration (preload.py), and created no outlet and no thread of
liblsl's: a host starts in milliseconds and shares those pages with the others.

The wire between the bridge and a host is one AF_UNIX SOCK_SEQPACKET pair, one message per
datagram, its first byte saying what it is:

| direction      | message                 | meaning                                               |
|----------------|-------------------------|-------------------------------------------------------|
| bridge -> host | ``P`` + payload         | a packet's msgpack payload, as the broker sent it     |
| bridge -> host | ``M`` + payload         | a metadata payload (the session's speed)              |
| bridge -> host | ``S`` + speed (ASCII)   | the speed from a session event                        |
| bridge -> host | ``C``                   | the broker restarted: decide its clock again          |
| host -> bridge | ``R``                   | the four outlets exist                                |
| host -> bridge | ``E`` + reason (UTF-8)  | they could not be created; the host exits             |
| host -> bridge | ``1`` / ``0``           | an outlet gained its first consumer / none has one    |

The bridge's end is non-blocking, so a host that falls a whole socket buffer behind loses packets
(the bridge counts and logs them) and never stalls the other sessions. End of file on the host's
end (the bridge closed it, exited or died) ends the host.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

import pylsl

from bridges.lsl.markers import TrialEvents
from bridges.lsl.streams import Clocks, SessionOutlets
from protocol import ProtocolError, decode
from protocol.config import Config
from protocol.logs import setup_logging

log = logging.getLogger("bridges.lsl")

CONSUMERS_S = 0.1        # while consumed, how often the outlets are asked whether they still are
MAX_MESSAGE = 1 << 17    # the largest datagram either side sends (a packet is a few KiB)
MALFORMED = (ProtocolError, KeyError, TypeError, ValueError, AttributeError, IndexError)

PACKET, META, SPEED, CLOCK = b"P", b"M", b"S", b"C"
READY, FAILED, CONSUMED, UNCONSUMED = b"R", b"E", b"1", b"0"


class ConsumerWatch:
    """Tells the bridge when the session gains its first consumer and when it loses its last.

    While nobody consumes, one thread per outlet blocks in liblsl's ``wait_for_consumers`` (no
    wake-ups at all). Once one returns, the watch asks ``have_consumers`` every CONSUMERS_S until
    no outlet has a consumer, says so, and re-arms the waiting threads.
    """

    def __init__(self, outlets: list[pylsl.StreamOutlet], notify: Any):
        self._outlets = outlets
        self._notify = notify
        self._arrived = threading.Event()
        self._rearm = [threading.Event() for _ in outlets]
        for outlet, rearm in zip(outlets, self._rearm):
            threading.Thread(target=self._wait, args=(outlet, rearm), daemon=True,
                             name="lsl-consumers").start()
        threading.Thread(target=self._run, daemon=True, name="lsl-watch").start()

    def _wait(self, outlet: pylsl.StreamOutlet, rearm: threading.Event) -> None:
        while True:
            if outlet.wait_for_consumers(pylsl.FOREVER):
                self._arrived.set()
                rearm.wait()
                rearm.clear()

    def _run(self) -> None:
        while True:
            self._arrived.wait()
            self._notify(CONSUMED)
            while any(o.have_consumers() for o in self._outlets):
                time.sleep(CONSUMERS_S)
            self._arrived.clear()
            self._notify(UNCONSUMED)
            for rearm in self._rearm:
                rearm.set()


def serve(sock: socket.socket, code: str, config: Config, dataset: dict[str, Any],
          trials: list[dict[str, Any]], speed: float) -> None:
    """The host's whole life; it leaves with os._exit, never destroying an outlet."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the bridge decides when a host ends
    setup_logging(config.log_level)
    try:
        outlets = SessionOutlets(code, config, dataset,
                                 TrialEvents(trials, int(dataset["bin_size_ms"])), Clocks(), speed)
    except Exception as exc:  # liblsl out of sockets or threads
        _send(sock, FAILED + f"{type(exc).__name__}: {exc}".encode()[:1000])
        os._exit(1)
    _send(sock, READY)
    ConsumerWatch([outlets.neural, outlets.kinematics, outlets.intention, outlets.markers],
                  lambda state: _send(sock, state))
    buffer = bytearray(MAX_MESSAGE)
    view = memoryview(buffer)
    while True:
        try:
            size = sock.recv_into(buffer)
        except OSError:
            size = 0
        if size == 0:                 # the bridge closed its end, exited or died
            os._exit(0)
        try:
            _handle(outlets, view[:1].tobytes(), view[1:size])
        except MALFORMED as exc:
            log.warning("session %s: skipped a malformed message: %s: %s", code,
                        type(exc).__name__, exc)
        except Exception:  # a bug of ours or liblsl's: report it and keep serving
            log.exception("session %s: failed to handle a message", code)


def _handle(outlets: SessionOutlets, kind: bytes, body: memoryview) -> None:
    if kind == PACKET:
        msg = decode(body)
        if not isinstance(msg, dict) or msg.get("type") != "data":
            raise ValueError("not a data payload")
        outlets.push(msg["data"])
    elif kind == META:
        outlets.speed = metadata_speed(decode(body))
    elif kind == SPEED:
        outlets.speed = positive(float(bytes(body)))
    elif kind == CLOCK:
        outlets.clocks = Clocks()     # the broker may run on another host now
    else:
        raise ValueError(f"unknown message kind {kind!r}")


def metadata_speed(msg: Any) -> float:
    """The playback speed in a `metadata` payload."""
    if not isinstance(msg, dict) or msg.get("type") != "metadata":
        raise ValueError("not a metadata payload")
    return positive(msg["data"]["session"]["speed"])


def positive(speed: Any) -> float:
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0:
        raise ValueError(f"speed must be a positive number, got {speed!r}")
    return float(speed)


def _send(sock: socket.socket, message: bytes) -> None:
    try:
        sock.send(message)
    except OSError:
        os._exit(0)                   # the bridge is gone: so are we
