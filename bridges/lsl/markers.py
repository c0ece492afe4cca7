"""Which trial a trial event in a packet belongs to, looked up in the dataset's trials table.

A packet lists the events whose time falls in its bin, but the bin's own `trial_id` is not always
their trial: `trial_start` usually falls in the bin before the trial's first bin (a bin belongs to
the trial that contains its left edge), which is a gap or the previous trial. So the Markers stream
finds each event's trial by time instead: the trial whose event time lies in
``[timestamp, timestamp + bin)`` of the packet.
"""
from __future__ import annotations

import bisect
from typing import Any, Iterable

# The trials-table field holding each event's time (the `trial` command's shape).
EVENT_TIME_FIELDS = {"trial_start": "start_time", "target_on": "target_on_time",
                     "go_cue": "go_cue_time", "move_onset": "move_onset_time",
                     "trial_end": "stop_time"}
_EPS = 1e-7      # s; event times and bin edges are whole microseconds at most


class TrialEvents:
    """Event name + bin -> trial id, for every trial of the dataset (shared by all sessions)."""

    def __init__(self, trials: Iterable[dict[str, Any]], bin_ms: int):
        trials = list(trials)
        self.bin_s = bin_ms / 1000.0
        self._times: dict[str, list[float]] = {}
        self._ids: dict[str, list[int]] = {}
        for name, field in EVENT_TIME_FIELDS.items():
            pairs = sorted((float(t[field]), int(t["trial_id"])) for t in trials
                           if isinstance(t.get(field), (int, float)))
            self._times[name] = [time for time, _ in pairs]
            self._ids[name] = [trial_id for _, trial_id in pairs]

    def trial_of(self, event: str, bin_left: float) -> int | None:
        """The trial whose ``event`` happened in the bin starting at ``bin_left`` (s), or None."""
        times = self._times.get(event)
        if not times:
            return None
        i = bisect.bisect_left(times, bin_left - _EPS)
        if i < len(times) and times[i] < bin_left + self.bin_s - _EPS:
            return self._ids[event][i]
        return None

    def label(self, event: str, bin_left: float) -> str:
        """The marker string: ``"<event> trial=<id>"``, or the bare event name if no trial matches."""
        trial_id = self.trial_of(event, bin_left)
        return event if trial_id is None else f"{event} trial={trial_id}"
