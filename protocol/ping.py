"""``python -m protocol.ping [endpoint]``: one ping to the broker's command socket; exit 0 if it answers.

A container health check for the broker (and anything that must reach it): it sends the `ping`
command over a fresh REQ socket (linger 0) to ``endpoint`` or PHANTOM_CONTROL_ENDPOINT and waits
PHANTOM_CONTROL_TIMEOUT_MS at most. Prints one line either way; exit 1 when there is no answer.
"""
from __future__ import annotations

import sys

import zmq

from protocol.commands import CommandError, encode_request, parse_reply
from protocol.config import ConfigError, load_config


def ping(endpoint: str, timeout_ms: int) -> str:
    """The broker's ping reply as text; TimeoutError on silence, CommandError on an error reply."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(encode_request("ping", {}))
        if not sock.poll(timeout_ms, zmq.POLLIN):
            raise TimeoutError(f"no answer from {endpoint} within {timeout_ms} ms")
        return str(parse_reply(sock.recv()))
    finally:
        sock.close(linger=0)


def main(argv: list[str]) -> int:
    try:
        config = load_config()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    endpoint = argv[0] if argv else config.control_endpoint
    try:
        print(f"broker at {endpoint}: {ping(endpoint, config.control_timeout_ms)}")
    except (TimeoutError, CommandError, zmq.ZMQError) as exc:
        print(f"broker at {endpoint} unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
