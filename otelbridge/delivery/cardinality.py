"""Bounds on the series the call metrics can make, whatever the webhooks hold.

Every label a webhook chooses is admitted into a bounded set: agents (all of them), and per
agent its tool names, LogMetric names and evaluation names; the values of each string LogMetric;
roles, end reasons and evaluation statuses (small sets, since Cartesia may add values). A value
past its set's limit reads ``other`` (a LogMetric name: its observation counts in
``cartesia.log_metric.other``). When a set is full, a value idle for :data:`IDLE_EVICTION_S`
gives its place to a new one, and its series are dropped from the SDK's memory, so a fleet
whose agents change over time is not stuck with the first ones. Label values are cut at
:data:`MAX_LABEL_BYTES`. docs/cardinality.md states the worst case these bounds allow.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from otelbridge.mapping import conventions as c

if TYPE_CHECKING:  # settings import this module: the webhook process loads no SDK
    from opentelemetry.sdk.metrics import MeterProvider

OTHER: Final = "other"
#: a value not seen for this long may give its place (and its series) to a new one
IDLE_EVICTION_S: Final = 3600.0
#: label values longer than this (UTF-8 bytes) are cut, and end in ``~`` and 8 hex digits of
#: their SHA-256, so that two long values stay two series
MAX_LABEL_BYTES: Final = 64
#: distinct values kept of labels that are small vocabularies Cartesia may extend
VOCABULARY_LIMITS: Final[Mapping[str, int]] = {
    c.METRIC_ATTR_ROLE: 8,
    c.METRIC_ATTR_END_REASON: 32,
    c.EVALUATION_STATUS: 8,
}

#: values of the ``limit`` attribute of ``otelbridge.metrics.series_dropped``
DROP_KINDS: Final = (
    "agents",
    "tool_names",
    "log_metric_names",
    "log_metric_values",
    "evaluation_names",
    "vocabulary",
    "deployments",
)
#: values of the ``limit`` attribute of ``otelbridge.metrics.folded`` (a deployment's points
#: count in ``otelbridge.deployments.folded``)
FOLD_KINDS: Final = (*DROP_KINDS[:-1], "log_metric_kind", "label_bytes")


@dataclass(frozen=True, slots=True)
class SeriesLimits:
    """The bounds, from the settings (``OTELBRIDGE_METRIC_MAX_AGENTS`` …)."""

    agents: int = 100
    tool_names: int = 50
    log_metric_names: int = 50
    log_metric_values: int = 20
    deployments: int = 20

    def sdk_cardinality_limit(self) -> int:
        """The SDK's limit per instrument: every (agent, deployment) pair of the TTFB and latency
        histograms fits; only instruments that multiply it by a vocabulary can reach it, and
        their further series go to the SDK's ``otel.metric.overflow`` point."""
        return (self.agents + 1) * (self.deployments + 2) + 1


def label_value(value: str) -> tuple[str, bool]:
    """``value`` as a label: itself, or cut at :data:`MAX_LABEL_BYTES` with a digest (True)."""
    if len(value) * 4 <= MAX_LABEL_BYTES:
        return value, False
    encoded = value.encode("utf-8")
    if len(encoded) <= MAX_LABEL_BYTES:
        return value, False
    digest = hashlib.sha256(encoded).hexdigest()[:8]
    head = encoded[: MAX_LABEL_BYTES - 9].decode("utf-8", errors="ignore")
    return f"{head}~{digest}", True


class Admission:
    """At most ``limit`` values, the least recently seen first."""

    __slots__ = ("_limit", "_seen", "touch")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()
        #: an admitted value seen again at the time it was last admitted: the order
        #: :meth:`admit` would leave (the dict's own method: no Python frame per touch)
        self.touch: Callable[[str], None] = self._seen.move_to_end

    def admit(self, value: str, now: float) -> tuple[bool, str | None]:
        """(admitted, the value evicted to make room, if any)."""
        seen = self._seen
        if value in seen:
            seen.move_to_end(value)
            seen[value] = now
            return True, None
        evicted = None
        if len(seen) >= self._limit:
            if not seen:  # a limit of 0
                return False, None
            oldest, at = next(iter(seen.items()))
            if now - at < IDLE_EVICTION_S:
                return False, None
            del seen[oldest]
            evicted = oldest
        seen[value] = now
        return True, evicted

    def __contains__(self, value: object) -> bool:
        return value in self._seen

    def __len__(self) -> int:
        return len(self._seen)


def _aggregations(provider: MeterProvider) -> Iterator[Any]:
    """The SDK's per-instrument stores of series (its private state: the SDK has no public way
    to forget a series; tests/delivery/test_cardinality.py guards the pinned version)."""
    consumer = provider._measurement_consumer
    for storage in consumer._reader_storages.values():
        for matches in storage._instrument_view_instrument_matches.values():
            yield from matches


def forget_series(
    provider: MeterProvider, match: Mapping[str, Any], instrument: Callable[[str], bool] | None = None
) -> int:
    """Drop every series whose attributes include ``match`` (of the instruments ``instrument``
    accepts, or all); returns how many (counted once, not once per reader)."""
    dropped: set[tuple[str, frozenset[tuple[str, Any]]]] = set()
    for view_match in _aggregations(provider):
        name = view_match._name
        if instrument is not None and not instrument(name):
            continue
        with view_match._lock:
            series = view_match._attributes_aggregation
            for key in [k for k, agg in series.items() if includes(agg._attributes, match)]:
                attributes = series.pop(key)._attributes
                dropped.add((name, frozenset((attributes or {}).items())))
    return len(dropped)


def includes(attributes: Mapping[str, Any] | None, match: Mapping[str, Any]) -> bool:
    """Does a series with ``attributes`` carry every label of ``match``?"""
    if not attributes:
        return False
    return all(attributes.get(k) == v for k, v in match.items())


# --- the worst case, as docs/cardinality.md states it ---------------------------------------
#: Prometheus lines of one histogram series: a bucket per boundary, +Inf, _sum and _count
def _histogram_lines(boundaries: int) -> int:
    return boundaries + 3


_SDK_DEFAULT_BOUNDARIES: Final = 15  # the SDK's default histogram buckets (0, 5, 10, … 10000)
_FINAL_STATUSES: Final = 3  # completed, failed, cancelled: call metrics are of final calls only


@dataclass(frozen=True, slots=True)
class WorstCase:
    instrument: str
    labels: str
    series: int
    lines_per_series: int

    @property
    def lines(self) -> int:
        return self.series * self.lines_per_series


def worst_case(limits: SeriesLimits) -> list[WorstCase]:
    """The most series each instrument can hold under ``limits``, and its Prometheus lines."""
    agents = limits.agents + 1  # and other
    pairs = limits.agents * (limits.deployments + 2) + 1  # deployments, none and other; other: 1
    roles = VOCABULARY_LIMITS[c.METRIC_ATTR_ROLE] + 1
    reasons = VOCABULARY_LIMITS[c.METRIC_ATTR_END_REASON] + 1
    statuses = VOCABULARY_LIMITS[c.EVALUATION_STATUS] + 1
    names = limits.log_metric_names + 1
    cap = limits.sdk_cardinality_limit() + 1  # and the SDK's overflow point

    def rows(name: str, labels: str, series: int, lines: int) -> WorstCase:
        return WorstCase(name, labels, min(series, cap), lines)

    ttfb = _histogram_lines(len(c.TTFB_BUCKETS_S))
    log_seconds = _histogram_lines(len(c.LOG_METRIC_SECONDS_BUCKETS))
    return [
        rows(c.METRIC_TTS_TTFB, "agent × deployment", pairs, ttfb),
        rows(c.METRIC_STT_TTFB, "agent × deployment", pairs, ttfb),
        rows(c.METRIC_RESPONSE_LATENCY, "agent × deployment", pairs,
             _histogram_lines(len(c.RESPONSE_LATENCY_BUCKETS_S))),
        rows(c.METRIC_TURN_DURATION, "agent × deployment × role", pairs * roles,
             _histogram_lines(len(c.TURN_DURATION_BUCKETS_S))),
        rows(c.METRIC_CALL_DURATION, "agent × deployment × status", pairs * _FINAL_STATUSES,
             _histogram_lines(len(c.CALL_DURATION_BUCKETS_S))),
        rows(c.METRIC_CALLS, "agent × deployment × status × end reason",
             pairs * _FINAL_STATUSES * reasons, 1),
        rows(c.METRIC_TURNS, "agent × role × interrupted", agents * roles * 2, 1),
        rows(c.METRIC_TURNS_INTERRUPTED, "agent × deployment", pairs, 1),
        rows(c.METRIC_TOOL_CALLS, "agent × tool name", limits.agents * (limits.tool_names + 1) + 1, 1),
        # one instrument per name, each under the SDK's limit, so the bound is the names': every
        # agent's names sent as strings (a counter per value; as numbers, a histogram each)
        _log_metrics(agents, limits, log_seconds),
        rows(c.METRIC_LOG_METRIC_OTHER, "agent", agents, 1),
        rows(c.METRIC_EVALUATIONS, "agent × evaluation name × status", agents * names * statuses, 1),
        rows(c.METRIC_EVALUATION_VALUE, "agent × evaluation name", agents * names,
             _histogram_lines(_SDK_DEFAULT_BOUNDARIES)),
    ]  # fmt: skip


def _log_metrics(agents: int, limits: SeriesLimits, histogram_lines: int) -> WorstCase:
    names = agents * limits.log_metric_names
    as_strings = names * (limits.log_metric_values + 1)
    if as_strings >= names * histogram_lines:
        return WorstCase(f"{c.METRIC_LOG_METRIC_PREFIX}{{name}}", "agent × name × value", as_strings, 1)
    return WorstCase(f"{c.METRIC_LOG_METRIC_PREFIX}{{name}}", "agent × name", names, histogram_lines)


def worst_case_table(limits: SeriesLimits | None = None) -> str:
    """The Markdown table of docs/cardinality.md (a test keeps the page in step)."""
    cases = worst_case(limits or SeriesLimits())
    out = [
        "| instrument | labels | series at most | Prometheus lines per series | lines |",
        "|---|---|---:|---:|---:|",
    ]
    out += [
        f"| `{w.instrument}` | {w.labels} | {w.series:,} | {w.lines_per_series} | {w.lines:,} |"
        for w in cases
    ]
    out.append(
        f"| **all** | | **{sum(w.series for w in cases):,}** | | **{sum(w.lines for w in cases):,}** |"
    )
    return "\n".join(out)
