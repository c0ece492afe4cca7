"""Prometheus exposition with prometheus_client: control's own histograms, and the broker's figures
turned into metric families at each scrape.

One ``Telemetry`` per app holds a CollectorRegistry with

- histograms control measures itself (``phantomlink_http_request_duration_seconds`` per route,
  ``phantomlink_broker_command_duration_seconds`` per command); another histogram is one entry
  in ``HISTOGRAMS`` plus an ``observe(name, seconds, *label_values)`` call where it is measured;
- ``BrokerCollector``, which asks for the ``GET /metrics`` document when scraped (so a scrape
  while the broker is down fails with 503, which Prometheus records as ``up == 0``) and yields
  gauges, counters and summaries from it.

docs/guides/metrics.md says what each family means.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from flask import Flask, Response, request
from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric, SummaryMetricFamily)
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The *_created series (a start time per counter) only double the exposition for us.
disable_created_metrics()

# Sub-millisecond to seconds: REST calls take ~0.3-1 ms, a 503 about 1.2 s.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)

# name -> (help, label names, buckets): the histograms control observes itself.
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {
    "phantomlink_http_request_duration_seconds": (
        "REST request duration in control, from routing to the response (excludes the network)",
        ("method", "route", "status"), LATENCY_BUCKETS),
    "phantomlink_broker_command_duration_seconds": (
        "Round trip of one command from control to the broker and back (ZeroMQ REQ/REP)",
        ("command", "outcome"), LATENCY_BUCKETS),
}


class Telemetry:
    """One app's registry: its histograms and the broker's families."""

    def __init__(self, broker_document: Callable[[], dict[str, Any]]):
        self.registry = CollectorRegistry()
        self.histograms = {name: Histogram(name, help_text, labels, buckets=buckets,
                                           registry=self.registry)
                           for name, (help_text, labels, buckets) in HISTOGRAMS.items()}
        self.registry.register(BrokerCollector(broker_document))
        # (name, label values) -> the labelled histogram: labels() costs 2 us, a lookup 0.1 us.
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}

    def observe(self, name: str, seconds: float, *label_values: str) -> None:
        """Record one duration; label values in the order HISTOGRAMS declares them."""
        key = (name, label_values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.histograms[name].labels(*label_values)
        child.observe(seconds)

    def exposition(self) -> bytes:
        """The text format (0.0.4) of every family; raises what the broker document raises."""
        return generate_latest(self.registry)


# (metric, kind, help, per-session field of the /metrics JSON)
PER_SESSION = (
    ("phantomlink_session_packets_sent_total", "counter", "Packets published", "packets_sent"),
    ("phantomlink_session_dropped_packets_total", "counter",
     "Packets skipped because they were too late (transport faults' losses are "
     "phantomlink_session_packets_dropped_by_fault_total)", "dropped_packets"),
    ("phantomlink_session_connections", "gauge", "Live subscriptions naming the session",
     "connections"),
    ("phantomlink_session_running", "gauge", "1 while the session is playing", "is_running"),
    ("phantomlink_session_paused", "gauge", "1 while the session is paused", "is_paused"),
    ("phantomlink_session_current_packet", "gauge", "Packet id of the next packet to play",
     "current_packet"),
)
# (summary name, stat-gauge name, help, per-session field): each broker timing figure twice, as
# a summary (count, sum, p99: rate(sum)/rate(count) is the mean over any window) and as gauges
# of its mean/std/max/p99 since the session began.
TIMINGS = (
    ("phantomlink_session_lateness_seconds", "phantomlink_session_timing_error_seconds",
     "Lateness of each packet: send time minus its deadline (the bin's close)", "timing_error_ms"),
    ("phantomlink_session_build_seconds", "phantomlink_session_network_latency_seconds",
     "Time from starting to build a packet to handing it to ZeroMQ", "network_latency_ms"),
)
STAT_KEYS = ("mean", "std", "max", "p99")
# (counter, help, {fault kind: its count in the session's `perturbations` map}): what each
# transport fault did to the session's packets since it was created, by fault kind.
FAULTS = (
    ("phantomlink_session_packets_dropped_by_fault_total",
     "Packets never sent because a transport fault lost them (drop, burst_drop, freeze in "
     "mode skip): each leaves a gap in the sequence numbers", {"drop": "dropped",
                                                               "burst_drop": "burst_dropped",
                                                               "freeze": "frozen_skipped"}),
    ("phantomlink_session_packets_delayed_by_fault_total",
     "Packets sent later than due because a transport fault held them (latency, reorder, "
     "freeze in mode burst); a packet held by two faults counts once for each",
     {"latency": "delayed", "reorder": "reordered", "freeze": "frozen_held"}),
)
DUPLICATED = ("phantomlink_session_packets_duplicated_by_fault_total",
              "Second copies sent by the duplicate fault (same sequence number, duplicate: true)",
              "duplicated")
CLOCK_OFFSET = ("phantomlink_session_clock_offset_seconds",
                "Total shift of the session's packet schedule by the clock_drift fault "
                "(positive: later)", "clock_offset_ms")
PERTURBED = ("phantomlink_session_perturbed_packets_total",
             "Packets built with perturbations on, by when their counts were computed: ahead (in "
             "the broker's idle time) or at_deadline (when the packet fell due)",
             {"ahead": "ahead", "at_deadline": "at_deadline"})
# (metric, kind, help, key in the broker's `process` map, scale to base units)
PROCESS = (
    ("phantomlink_broker_resident_memory_bytes", "gauge", "Broker resident set size", "rss_mb", 1e6),
    ("phantomlink_broker_cpu_seconds_total", "counter", "Broker CPU time", "cpu_seconds", 1),
    ("phantomlink_broker_uptime_seconds", "gauge", "Broker uptime", "uptime_s", 1),
)
# (metric, kind, help, key of the broker's `metrics`): the data socket's subscriptions
SUBSCRIPTIONS = (
    ("phantomlink_broker_subscriptions_held", "gauge",
     "Subscriptions the broker counts, summed over data connections", "subscriptions_held"),
    ("phantomlink_broker_subscriber_connections", "gauge",
     "Data connections holding at least one counted subscription", "subscriber_connections"),
    ("phantomlink_broker_subscriptions_refused_total", "counter",
     "Subscriptions refused: their connection held PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION",
     "subscriptions_refused"),
    ("phantomlink_broker_subscriptions_ignored_total", "counter",
     "Subscriptions naming no topic the broker publishes", "subscriptions_ignored"),
)
TOTALS = (("total_sessions", "Sessions held by the broker"),
          ("active_sessions", "Sessions streaming: playing to at least one subscriber naming them"),
          ("total_connections", "Live subscriptions over all sessions"))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def _family(name: str, kind: str, help_text: str, labels: tuple[str, ...] = ()) -> Metric:
    # prometheus_client appends _total to a counter's samples itself.
    if kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


class BrokerCollector(Collector):
    """Families from the /metrics document, built anew at each scrape."""

    def __init__(self, document: Callable[[], dict[str, Any]]):
        self.document = document

    def describe(self) -> list[Metric]:
        return []  # names vary with the broker; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        doc = self.document()
        metrics = doc.get("metrics", {})
        sessions: dict[str, dict[str, Any]] = metrics.get("sessions", {})
        info = GaugeMetricFamily("phantomlink_info", "Service version", labels=("version",))
        info.add_metric([str(doc.get("version"))], 1)
        yield info
        for key, help_text in TOTALS:
            yield from _samples(_family(f"phantomlink_{key}", "gauge", help_text),
                                [((), metrics.get(key))])
        for name, kind, help_text, field in PER_SESSION:
            yield from _samples(_family(name, kind, help_text, ("session",)),
                                [((code,), s.get(field)) for code, s in sessions.items()])
        for summary_name, stat_name, help_text, field in TIMINGS:
            yield _summary(summary_name, help_text, sessions, field)
            yield from _samples(
                _family(stat_name, "gauge", help_text + " (ms figures since creation, in s)",
                        ("session", "stat")),
                [((code, stat), _ms((s.get(field) or {}).get(stat)))
                 for code, s in sessions.items() for stat in STAT_KEYS])
        yield from _faults(sessions)
        yield _prediction_latency(sessions)
        for name, kind, help_text, key in SUBSCRIPTIONS:
            yield from _samples(_family(name, kind, help_text), [((), metrics.get(key))])
        process = metrics.get("process") or {}
        for name, kind, help_text, key, scale in PROCESS:
            value = _number(process.get(key))
            yield from _samples(_family(name, kind, help_text),
                                [((), None if value is None else value * scale)])


def _faults(sessions: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """The transport faults' counters of every session (zeros for a session without faults)."""
    counts = {code: s.get("perturbations") or {} for code, s in sessions.items()}
    for name, help_text, by_kind in FAULTS:
        yield from _samples(_family(name, "counter", help_text, ("session", "kind")),
                            [((code, kind), c.get(field)) for code, c in counts.items()
                             for kind, field in by_kind.items()])
    name, help_text, field = DUPLICATED
    yield from _samples(_family(name, "counter", help_text, ("session",)),
                        [((code,), c.get(field)) for code, c in counts.items()])
    name, help_text, field = CLOCK_OFFSET
    yield from _samples(_family(name, "gauge", help_text, ("session",)),
                        [((code,), _ms(c.get(field))) for code, c in counts.items()])
    name, help_text, by_when = PERTURBED
    computed = {code: s.get("perturbation_compute") or {} for code, s in sessions.items()}
    yield from _samples(_family(name, "counter", help_text, ("session", "computed")),
                        [((code, when), c.get(field)) for code, c in computed.items()
                         for when, field in by_when.items()])


def _ms(value: Any) -> float | None:
    number = _number(value)
    return None if number is None else number / 1000


def _samples(family: Metric, values: list[tuple[tuple[str, ...], Any]]) -> Iterator[Metric]:
    for labels, value in values:
        number = _number(value)
        if number is not None:
            family.add_metric(list(labels), number)  # type: ignore[attr-defined]
    yield family


def _summary(name: str, help_text: str, sessions: dict[str, dict[str, Any]],
             field: str) -> Metric:
    """count and sum over every packet since creation; the 0.99 quantile over the last 1024."""
    family = SummaryMetricFamily(name, help_text, labels=("session",))
    for code, s in sessions.items():
        stat = s.get(field) or {}
        count, mean, p99 = _number(stat.get("count")), _ms(stat.get("mean")), _ms(stat.get("p99"))
        if count is None or mean is None:
            continue
        family.add_metric([code], count, mean * count)
        if p99 is not None and count:
            family.add_sample(name, {"session": code, "quantile": "0.99"}, p99)
    return family


def _prediction_latency(sessions: dict[str, dict[str, Any]]) -> Metric:
    """Per session and decoder: a bin's publication -> the prediction's arrival at the broker
    (the broker's histogram: docs/evaluation.md)."""
    family = HistogramMetricFamily(
        "phantomlink_prediction_latency_seconds",
        "Time from a bin's publication to a decoder's prediction of it reaching the broker",
        labels=("session", "decoder"))
    for code, s in sessions.items():
        for decoder, d in (s.get("decoders") or {}).items():
            hist = d.get("latency_histogram") or {}
            buckets, cumulative = [], 0
            for le_ms, count in zip(hist.get("le_ms", []), hist.get("counts", [])):
                cumulative += count
                buckets.append(("+Inf" if le_ms is None else repr(le_ms / 1000), cumulative))
            if buckets:
                family.add_metric([code, decoder], buckets, (_number(hist.get("sum_ms")) or 0) / 1000)
    return family


def instrument(app: Flask, telemetry: Telemetry) -> None:
    """Time every request into phantomlink_http_request_duration_seconds (route = the URL rule,
    so the label set stays bounded: `unmatched` for unknown paths).

    The clock starts in a WSGI wrapper, before Flask builds the request, and stops in an
    after_request hook that knows the matched rule and the status (a few us in all).
    """
    inner = app.wsgi_app

    def timed(environ: dict[str, Any], start_response: Callable) -> Any:
        environ[STARTED_KEY] = time.perf_counter()
        return inner(environ, start_response)

    app.wsgi_app = timed  # type: ignore[method-assign]

    @app.after_request
    def _observe(response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
        started = req.environ.get(STARTED_KEY)
        if started is not None:
            rule = req.url_rule.rule if req.url_rule is not None else "unmatched"
            telemetry.observe("phantomlink_http_request_duration_seconds",
                              time.perf_counter() - started, req.method, rule,
                              str(response.status_code))
        return response


STARTED_KEY = "phantomlink.started"
