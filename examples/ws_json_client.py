"""WebSocket client, JSON: the same stream as text frames, as a browser would read it.

`?format=json` turns every message into a JSON text frame with the same structure as the msgpack
one (msgpack nil becomes null). Run it against `make run`:

    .venv/bin/python examples/ws_json_client.py --session json-demo --packets 40

In a browser the same URL works directly:

    const ws = new WebSocket("ws://localhost:8001/stream/json-demo?format=json");
    ws.onmessage = (e) => { const m = JSON.parse(e.data); if (m.type === "data") console.log(m.data.packet_id); };
"""
from __future__ import annotations

import argparse
import os
import json
import sys

import simple_websocket


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer $PHANTOM_AUTH_TOKEN` when the stack requires a token, else nothing."""
    token = os.environ.get("PHANTOM_AUTH_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://localhost:8001", help="the WebSocket bridge")
    parser.add_argument("--session", default="json-demo", help="session code (created if missing)")
    parser.add_argument("--packets", type=int, default=40, help="packets to print, then exit")
    args = parser.parse_args()

    url = f"{args.url}/stream/{args.session}?format=json"
    try:
        ws = simple_websocket.Client.connect(url, headers=auth_headers())
    except (OSError, simple_websocket.ConnectionError) as exc:
        return f"cannot connect to {url}: {exc} (is `make run` running?)"
    received = 0
    try:
        while received < args.packets:
            text = ws.receive(timeout=5)
            if text is None:
                return f"no data for 5 s from {url} (is the session paused?)"
            message = json.loads(text)
            if message["type"] == "metadata":
                print("metadata:", json.dumps({k: v for k, v in message["data"].items()
                                               if k not in ("unit_ids", "regions")}, indent=2))
                continue
            data = message["data"]
            print(json.dumps({"seq": data["sequence_number"], "packet_id": data["packet_id"],
                              "trial_id": data["trial_id"], "kinematics": data["kinematics"],
                              "intention": data["intention"]}))
            received += 1
    except simple_websocket.ConnectionClosed as exc:
        return f"closed by the bridge: {exc.reason} {exc.message or ''}"
    finally:
        ws.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
