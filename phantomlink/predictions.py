"""Building the prediction message a decoder sends back (docs/protocol.md, *Predictions*)."""
from __future__ import annotations

import time
from typing import Any, Sequence

from phantomlink.packets import Packet


def prediction(packet: Packet, velocity: Sequence[float], *, decoder: str = "default",
               position: Sequence[float] | None = None, target_id: int | None = None) -> dict[str, Any]:
    """The answer to ``packet``: velocity in mm/s (and optionally the cursor position in mm).

    It carries the packet's arrival time and the send time on this client's clock, so the server
    can report the client's own view of its latency beside its own."""
    msg: dict[str, Any] = {
        "type": "prediction", "session": packet.session, "packet_id": packet.packet_id,
        "sequence_number": packet.sequence_number,
        "velocity": [float(velocity[0]), float(velocity[1])], "decoder": decoder,
        "received_at": packet.received_at,
    }
    if position is not None:
        msg["position"] = [float(position[0]), float(position[1])]
    if target_id is not None:
        msg["target_id"] = int(target_id)
    msg["sent_at"] = time.time()
    return msg
