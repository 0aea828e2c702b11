"""What the mapping produces: plain, SDK-free records of spans, span events and metric points.

:mod:`otelbridge.delivery.otlp` turns spans into OTLP; :mod:`otelbridge.delivery.meter` feeds
points to the SDK's metrics.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

AttributeValue = str | bool | int | float | Sequence[str]
Attributes = dict[str, AttributeValue]


@dataclass(slots=True)
class EventRecord:
    name: str
    time_ns: int
    attributes: Attributes = field(default_factory=dict)
    #: attributes left out past the count limit (OTLP's ``dropped_attributes_count``)
    dropped_attributes: int = 0


#: the sort key of span events (attrgetter: no Python call per event)
event_time = operator.attrgetter("time_ns")


@dataclass(slots=True)
class SpanRecord:
    """One span. ``key`` is its identity within the call (see :mod:`otelbridge.mapping.ids`);
    ``error`` is the ERROR status description, ``None`` for an unset status."""

    key: str
    name: str
    trace_id: int
    span_id: int
    parent_span_id: int | None
    start_ns: int
    end_ns: int
    attributes: Attributes = field(default_factory=dict)
    events: list[EventRecord] = field(default_factory=list)
    error: str | None = None
    #: attributes left out past the count limit (OTLP's ``dropped_attributes_count``)
    dropped_attributes: int = 0

    @property
    def is_root(self) -> bool:
        return self.parent_span_id is None


class InstrumentKind(StrEnum):
    HISTOGRAM = "histogram"
    COUNTER = "counter"


@dataclass(slots=True)  # not frozen: a frozen init costs a setattr per field, per point
class MetricPoint:
    """One observation, never changed once made (:func:`dataclasses.replace` makes another).
    Metrics cannot carry past timestamps, so a point has no time: it is recorded when delivered.
    ``span_key``/``span_id`` name the span the observation came from (the exemplar, and what
    lets a stream of partial exports skip points already sent)."""

    instrument: str
    kind: InstrumentKind
    unit: str
    description: str
    value: int | float
    attributes: dict[str, str | bool | int]
    span_key: str
    trace_id: int
    span_id: int


@dataclass(slots=True)
class MappedCall:
    call_id: str
    trace_id: int
    spans: list[SpanRecord]
    points: list[MetricPoint]

    @property
    def root(self) -> SpanRecord | None:
        return next((s for s in self.spans if s.is_root), None)

    @property
    def start_ns(self) -> int:
        """When the call started (its root span's start)."""
        root = self.root
        return root.start_ns if root is not None else min((s.start_ns for s in self.spans), default=0)
