"""One MeterProvider for the call metrics and otelbridge's own: read for OTLP (through the
spool) and for the Prometheus ``/metrics`` endpoint. The call histograms are aggregated
beside it, once for both (:mod:`otelbridge.delivery.histograms`), and added to what each
reader collects.

* OTLP: an ``InMemoryMetricReader`` is collected every ``OTEL_METRIC_EXPORT_INTERVAL`` by the
  daemon, encoded by the SDK's own encoder and spooled like spans, so metrics survive backend
  outages too. Temporality from ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``
  (``cumulative``, the default, or ``delta``). Exemplars (turn span ids) travel here. Left out
  when the metrics exporter is ``none``.
* Prometheus: the SDK's ``PrometheusMetricReader`` on a registry of our own (always cumulative;
  no exemplars — the Python exporter does not carry them); left out where nothing serves
  ``/metrics`` (``otelbridge backfill`` and ``drain``), which spares every counter point its
  second aggregation.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otelbridge import __version__
from otelbridge.cartesia.webhooks import KNOWN_EVENT_TYPES
from otelbridge.delivery.cardinality import DROP_KINDS, FOLD_KINDS, SeriesLimits
from otelbridge.delivery.environment import SIGNALS, Temporality
from otelbridge.delivery.meter import MetricRecorder
from otelbridge.delivery.spool import DROP_REASONS
from otelbridge.delivery.transport import OUTCOMES
from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import MetricPoint

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

LAG_BUCKETS_S: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(slots=True)
class Gauges:
    """Values the observable instruments report, refreshed by the daemon's housekeeping."""

    spool_depth: dict[str, int] = field(default_factory=lambda: {"traces": 0, "metrics": 0})
    spool_bytes: int = 0
    spool_oldest_age_s: float = 0.0
    inbox_depth: int = 0
    open_calls: int = 0
    #: 1 while this process holds the pipeline lease (processes, polls and sends)
    leader: int = 0


class SelfMetrics:
    """otelbridge's own instruments (names in docs/conventions.md, "Self-metrics")."""

    def __init__(self, provider: MeterProvider, gauges: Gauges, recorder: MetricRecorder) -> None:
        """``recorder``: the call metrics' recorder, whose folded and dropped tallies are
        reported here."""
        meter = provider.get_meter(c.SELF_SCOPE, __version__)
        self.gauges = gauges
        self._recorder = recorder
        self.events = meter.create_counter(
            c.SELF_EVENTS, "{event}", "Stored webhook events processed into spans, by event type"
        )
        self.processing_errors = meter.create_counter(
            c.SELF_PROCESSING_ERRORS, "{event}", "Stored events skipped because processing failed"
        )
        self.late_log_items = meter.create_counter(
            c.SELF_LATE_LOG_ITEMS,
            "{item}",
            "Log items that arrived after their call's root span was exported",
        )
        self.spans = meter.create_counter(c.SELF_SPANS, "{span}", "Spans spooled for export")
        self.deployments_folded = meter.create_counter(
            c.SELF_DEPLOYMENTS_FOLDED,
            "{point}",
            "Metric points whose cartesia.deployment.id reads other: past OTELBRIDGE_DEPLOYMENTS_PER_AGENT",
        )
        self.export_attempts = meter.create_counter(
            c.SELF_EXPORT_ATTEMPTS,
            "{request}",
            "OTLP export attempts by signal and outcome (ok, retry, reject)",
        )
        self.export_rejected = meter.create_counter(
            c.SELF_EXPORT_REJECTED, "{item}", "Spans or data points the backend rejected in a partial_success"
        )
        self.dead_letters = meter.create_counter(
            c.SELF_DEAD_LETTERS, "{request}", "Requests the backend refused for good, kept in dead_letters"
        )
        self.dropped = meter.create_counter(
            c.SELF_SPOOL_DROPPED,
            "{request}",
            "Unsent requests dropped by the spool caps, by reason (size, age)",
        )
        self.lag = meter.create_histogram(
            c.SELF_EXPORT_LAG,
            "s",
            "From a call's end to the export of its root span",
            explicit_bucket_boundaries_advisory=LAG_BUCKETS_S,
        )
        meter.create_observable_gauge(
            c.SELF_SPOOL_DEPTH, [self._spool_depth], "{request}", "Requests waiting in the spool"
        )
        meter.create_observable_gauge(
            c.SELF_SPOOL_BYTES, [lambda _: [Observation(self.gauges.spool_bytes)]], "By", "Bytes in the spool"
        )
        meter.create_observable_gauge(
            c.SELF_SPOOL_OLDEST_AGE,
            [lambda _: [Observation(self.gauges.spool_oldest_age_s)]],
            "s",
            "Age of the oldest request in the spool",
        )
        meter.create_observable_gauge(
            c.SELF_INBOX_DEPTH,
            [lambda _: [Observation(self.gauges.inbox_depth)]],
            "{event}",
            "Stored webhook events not yet processed",
        )
        meter.create_observable_gauge(
            c.SELF_OPEN_CALLS,
            [lambda _: [Observation(self.gauges.open_calls)]],
            "{call}",
            "Calls started but not yet exported whole",
        )
        meter.create_observable_gauge(
            c.SELF_LEADER,
            [lambda _: [Observation(self.gauges.leader)]],
            "1",
            "1 on the replica that processes, polls and sends; 0 on the others",
        )

        meter.create_observable_counter(
            c.SELF_METRICS_FOLDED,
            [lambda _: self._by_limit(self._recorder.folded, FOLD_KINDS)],
            "{point}",
            "Call-metric points a series bound changed: a label read other or was cut, by limit",
        )
        meter.create_observable_counter(
            c.SELF_METRICS_SERIES_DROPPED,
            [lambda _: self._by_limit(self._recorder.dropped, DROP_KINDS)],
            "{series}",
            "Call-metric series dropped from memory because their label fell out of a bound, by limit",
        )

        self._start_at_zero()

    @staticmethod
    def _by_limit(counts: Mapping[str, int], kinds: Iterable[str]) -> list[Observation]:
        return [Observation(counts.get(kind, 0), {c.SELF_ATTR_LIMIT: kind}) for kind in kinds]

    def _start_at_zero(self) -> None:
        """Every counter series whose labels are known up front starts at 0, so ``increase()``
        sees 0 rather than no data and ``absent()`` alerts do not fire on a healthy daemon."""
        for counter in (self.spans, self.processing_errors, self.late_log_items, self.deployments_folded):
            counter.add(0)
        for event_type in sorted(KNOWN_EVENT_TYPES):
            self.events.add(0, {c.SELF_ATTR_TYPE: event_type})
        for signal in SIGNALS:
            for outcome in OUTCOMES:
                self.export_attempts.add(0, {c.SELF_ATTR_SIGNAL: signal, c.SELF_ATTR_OUTCOME: outcome})
            self.export_rejected.add(0, {c.SELF_ATTR_SIGNAL: signal})
            self.dead_letters.add(0, {c.SELF_ATTR_SIGNAL: signal})
            for reason in DROP_REASONS:
                self.dropped.add(0, {c.SELF_ATTR_SIGNAL: signal, c.SELF_ATTR_REASON: reason})

    def _spool_depth(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"signal": s}) for s, n in self.gauges.spool_depth.items()]


def count_points(data: MetricsData) -> int:
    return sum(
        len(m.data.data_points) for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    )


def cardinality_limits(limits: SeriesLimits) -> dict[type, int]:
    """The SDK's per-instrument limit, set from the bounds rather than left at its 2,000."""
    limit = limits.sdk_cardinality_limit()
    kinds = (Counter, Histogram, ObservableCounter, UpDownCounter, ObservableUpDownCounter, ObservableGauge)
    return dict.fromkeys(kinds, limit)


def aggregation_temporality(temporality: Temporality) -> AggregationTemporality:
    """The SDK's value of ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` as read."""
    return AggregationTemporality.DELTA if temporality == "delta" else AggregationTemporality.CUMULATIVE


def otlp_reader(temporality: Temporality, limits: SeriesLimits | None = None) -> InMemoryMetricReader:
    """The reader whose collections go over OTLP, with the temporality asked for (sums and
    histograms; up-down counters and gauges are cumulative whatever is asked, as the SDK does)."""
    chosen = aggregation_temporality(temporality)
    instruments: Sequence[type] = (Counter, Histogram, ObservableCounter)
    preferred = dict.fromkeys(instruments, chosen)
    preferred |= {
        UpDownCounter: AggregationTemporality.CUMULATIVE,
        ObservableUpDownCounter: AggregationTemporality.CUMULATIVE,
        ObservableGauge: AggregationTemporality.CUMULATIVE,
    }
    return InMemoryMetricReader(
        preferred_temporality=preferred, cardinality_limits=cardinality_limits(limits or SeriesLimits())
    )


def with_metrics(data: MetricsData | None, metrics: list[Metric], resource: Resource) -> MetricsData | None:
    """``data`` (a reader's collection, None when it had nothing) with ``metrics`` added to the
    call metrics' scope (made when the SDK has none)."""
    if not metrics:
        return data
    resources = list(data.resource_metrics) if data is not None else []
    if not resources:
        resources = [ResourceMetrics(resource, [], "")]
    first, scopes = resources[0], list(resources[0].scope_metrics)
    for index, scope in enumerate(scopes):
        if scope.scope.name == c.INSTRUMENTATION_SCOPE:
            scopes[index] = ScopeMetrics(scope.scope, [*scope.metrics, *metrics], scope.schema_url)
            break
    else:
        scopes.append(ScopeMetrics(InstrumentationScope(c.INSTRUMENTATION_SCOPE, __version__), metrics, ""))
    resources[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
    return MetricsData(resources)


def collect_request(
    reader: InMemoryMetricReader, recorder: MetricRecorder, temporality: Temporality, resource: Resource
) -> tuple[bytes, int] | None:
    """(encoded ExportMetricsServiceRequest, data points) of a collection of ``reader`` and of
    ``recorder``'s histograms, or None when there is nothing."""
    histograms = recorder.histograms.collect(aggregation_temporality(temporality))
    data = with_metrics(reader.get_metrics_data(), histograms, resource)
    if data is None:
        return None
    items = count_points(data)
    if not items:
        return None
    return encode_metrics(data).SerializeToString(), items


class Telemetry:
    """The MeterProvider, its two readers, the call-metric recorder and the self-metrics."""

    def __init__(
        self,
        resource: Resource,
        *,
        temporality: Temporality = "cumulative",
        limits: SeriesLimits | None = None,
        prometheus: bool = True,
        otlp: bool = True,
    ) -> None:
        """Each reader aggregates every point again: ``prometheus`` keeps the series for
        ``/metrics`` (off where nothing serves them, as in ``otelbridge backfill``), ``otlp``
        those for the metrics exporter (off when it is ``none``)."""
        limits = limits or SeriesLimits()
        self.temporality = temporality
        self.otlp_reader = otlp_reader(temporality, limits) if otlp else None
        readers: list[MetricReader] = [self.otlp_reader] if self.otlp_reader is not None else []
        self.registry: CollectorRegistry | None = None
        self.resource = resource
        if prometheus:  # imported here: prometheus_client is not small, and backfill has no use
            from prometheus_client import CollectorRegistry

            self.registry = CollectorRegistry(auto_describe=True)
            readers.append(_prometheus_reader(self.registry, limits, self))
        self.provider = MeterProvider(resource=resource, metric_readers=readers)
        self.recorder = MetricRecorder(self.provider, limits)
        self.gauges = Gauges()
        self.self_metrics = SelfMetrics(self.provider, self.gauges, self.recorder)
        #: the id of the newest stored point recorded into the meter
        self.recorded_through = 0
        #: identifies this process's cumulative series in the spool
        self.epoch = uuid.uuid4().hex

    def record(self, points: Iterable[tuple[int, MetricPoint]]) -> None:
        batch = list(points)
        self.recorder.record(point for _, point in batch)
        if batch:
            self.recorded_through = max(self.recorded_through, *(point_id for point_id, _ in batch))

    def collect_otlp(self) -> tuple[bytes, int] | None:
        """The OTLP request of what was recorded (None: nothing, or no OTLP reader)."""
        if self.otlp_reader is None:
            return None
        return collect_request(self.otlp_reader, self.recorder, self.temporality, self.resource)

    def prometheus_text(self) -> bytes:
        from prometheus_client import generate_latest

        if self.registry is None:
            raise RuntimeError("this Telemetry keeps no series for /metrics (prometheus=False)")
        return bytes(generate_latest(self.registry))

    def shutdown(self) -> None:
        self.provider.shutdown()


def _prometheus_reader(
    registry: CollectorRegistry, limits: SeriesLimits, telemetry: Telemetry
) -> MetricReader:
    """The SDK's Prometheus reader, each of whose collections (a scrape of ``/metrics``) also
    shows the call histograms, cumulative."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    class WithHistograms(PrometheusMetricReader):
        def _receive_metrics(self, metrics_data: MetricsData | None, timeout_millis: float = 10_000,
                             **kwargs: Any) -> None:  # fmt: skip
            histograms = telemetry.recorder.histograms.cumulative()
            merged = with_metrics(metrics_data, histograms, telemetry.resource)
            if merged is not None:
                super()._receive_metrics(merged, timeout_millis, **kwargs)

    reader: MetricReader = WithHistograms(registry=registry, cardinality_limits=cardinality_limits(limits))
    return reader
