"""WebSocket client, msgpack: print a session's metadata, then a line per packet.

The binary form is the broker's own msgpack bytes, the cheapest to decode. Needs only
simple-websocket and msgpack (`pip install simple-websocket msgpack`). Run it against `make run`:

    .venv/bin/python examples/ws_msgpack_client.py --session my-experiment --packets 80
    .venv/bin/python examples/ws_msgpack_client.py --session calib --target-id 0

Connecting creates the session if it does not exist. The stream's first message is always the
metadata (`type == "metadata"`); more metadata can arrive later (when the session changes or another
client joins), so dispatch on `type`.
"""
from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlencode

import msgpack
import simple_websocket


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer $PHANTOM_AUTH_TOKEN` when the stack requires a token, else nothing."""
    token = os.environ.get("PHANTOM_AUTH_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def stream_url(base: str, session: str, target_id: int | None, trial_id: int | None) -> str:
    query = {"format": "msgpack"}      # explicit: metadata first, then packets
    query.update((k, v) for k, v in (("target_id", target_id), ("trial_id", trial_id)) if v is not None)
    return f"{base}/stream/{session}?{urlencode(query)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://localhost:8001", help="the WebSocket bridge")
    parser.add_argument("--session", default="msgpack-demo", help="session code (created if missing)")
    parser.add_argument("--packets", type=int, default=80, help="packets to print, then exit")
    parser.add_argument("--target-id", type=int, help="play only trials reaching for this target")
    parser.add_argument("--trial-id", type=int, help="play only this trial")
    args = parser.parse_args()

    url = stream_url(args.url, args.session, args.target_id, args.trial_id)
    try:
        ws = simple_websocket.Client.connect(url, headers=auth_headers())
    except (OSError, simple_websocket.ConnectionError) as exc:
        return f"cannot connect to {url}: {exc} (is `make run` running?)"
    received = 0
    try:
        while received < args.packets:
            frame = ws.receive(timeout=5)
            if frame is None:
                return f"no data for 5 s from {url} (is the session paused?)"
            message = msgpack.unpackb(frame)
            if message["type"] == "metadata":
                meta = message["data"]
                print(f"metadata: {meta['dataset']}, {meta['num_channels']} units, "
                      f"{meta['frequency_hz']:g} Hz, {meta['total_packets']} packets, "
                      f"session state {meta['session']['state']}")
                continue
            print(describe(message["data"]))
            received += 1
    except simple_websocket.ConnectionClosed as exc:
        return f"closed by the bridge: {exc.reason} {exc.message or ''}"
    finally:
        ws.close()
    return 0


def describe(data: dict) -> str:
    kin, intent = data["kinematics"], data["intention"]
    counts = data["spikes"]["spike_counts"]
    where = "gap" if data["trial_id"] is None else f"trial {data['trial_id']}"
    pos = "-" if kin["x"] is None else f"({kin['x']:7.1f}, {kin['y']:7.1f}) mm"
    target = "-" if intent["target_id"] is None else f"target {intent['target_id']}"
    return (f"#{data['sequence_number']:5d} packet {data['packet_id']:6d} {where:>10}  "
            f"{sum(counts):3d} spikes in {len(counts)} units  cursor {pos}  {target}")


if __name__ == "__main__":
    sys.exit(main())
