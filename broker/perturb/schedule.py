"""When a perturbation is on: a start, an optional ramp up and an optional end, on the packet axis.

Times are given as packet ids (``start_packet``, ``ramp_packets``, ``end_packet``) or as playback
seconds on the recording clock (``start_s``, ``ramp_s``, ``end_s``; packet = seconds * 1000 /
bin_size_ms, the session's ``elapsed_seconds``). The level at packet p is

    0                                  p < start or p >= end
    ceil-step of (p - start) / ramp    during the ramp, in RAMP_STEPS equal steps up to 1
    1                                  otherwise

so the level is a function of the packet id alone (seeking, looping and filters give the same
level at the same packet), and is constant between the boundaries ``boundaries()`` lists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from protocol.commands import CommandError, ErrorCode

RAMP_STEPS = 32
MAX_PACKET = 2**40
SCHEDULE_FIELDS = ("start_packet", "start_s", "ramp_packets", "ramp_s", "end_packet", "end_s")


@dataclass(frozen=True)
class Schedule:
    start: int = 0
    ramp: int = 0
    end: int | None = None

    def level(self, packet_id: int) -> float:
        if packet_id < self.start or (self.end is not None and packet_id >= self.end):
            return 0.0
        if self.ramp <= 0:
            return 1.0
        step = math.floor((packet_id - self.start) * RAMP_STEPS / self.ramp) + 1
        return min(1.0, step / RAMP_STEPS)

    def boundaries(self) -> list[int]:
        """Packet ids at which the level may change (the level is constant in between)."""
        points = [self.start]
        if self.ramp > 0:
            points += [self.start + math.ceil(k * self.ramp / RAMP_STEPS) for k in range(1, RAMP_STEPS)]
        if self.end is not None:
            points.append(self.end)
        return points

    def to_dict(self) -> dict[str, Any]:
        out = {"start_packet": self.start, "ramp_packets": self.ramp}
        if self.end is not None:
            out["end_packet"] = self.end
        return out


def parse_schedule(item: dict[str, Any], bin_ms: int, number) -> Schedule:
    """The schedule fields of one perturbation; ``number(name, low, high, integer)`` reads one
    checked value (CommandError when it is wrong)."""
    def packets(by_packet: str, by_seconds: str) -> int | None:
        if by_packet in item and by_seconds in item:
            raise CommandError(ErrorCode.BAD_REQUEST, f"give {by_packet} or {by_seconds}, not both")
        if by_packet in item:
            return int(number(by_packet, 0, MAX_PACKET, True))
        if by_seconds in item:
            return int(round(number(by_seconds, 0, MAX_PACKET * bin_ms / 1000.0, False) * 1000.0 / bin_ms))
        return None

    start = packets("start_packet", "start_s") or 0
    ramp = packets("ramp_packets", "ramp_s") or 0
    end = packets("end_packet", "end_s")
    if end is not None and end <= start:
        raise CommandError(ErrorCode.OUT_OF_RANGE, f"end ({end}) must come after start ({start})")
    return Schedule(start, ramp, end)
