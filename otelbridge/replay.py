"""``otelbridge replay PATH...``: saved calls or webhook streams -> traces and metrics.

Every file is read and every record validated before anything is exported; a bad record is
reported on one line (file, record, field) and skipped, good ones are still exported. The
exit status is 0 only when every record was good and everything was delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult
from pydantic import ValidationError

from otelbridge.cartesia.errors import describe_validation_error
from otelbridge.cartesia.models import AgentCall, parse_call
from otelbridge.cartesia.webhooks import parse_webhook_event
from otelbridge.delivery import console, exporters
from otelbridge.delivery.meter import MetricRecorder
from otelbridge.delivery.resource import service_resource
from otelbridge.delivery.sdk import MAX_SPANS_PER_REQUEST, to_readable_spans
from otelbridge.ingest.assembly import CallAssembler
from otelbridge.ingest.files import InputFileError, Record, RecordKind, read_records
from otelbridge.mapping import MappedCall, UnplaceableCallError, map_call
from otelbridge.settings import Settings


@dataclass(slots=True)
class ReplayReport:
    records: int = 0
    bad_records: int = 0
    bad_files: int = 0
    ignored_events: int = 0
    calls: int = 0
    spans: int = 0
    points: int = 0
    undelivered: int = 0

    @property
    def ok(self) -> bool:
        return not (self.bad_records or self.bad_files or self.undelivered)


class Replay:
    def __init__(self, settings: Settings, exporter: str, out: TextIO, err: TextIO):
        self.settings = settings
        self.exporter = exporter
        self.out, self.err = out, err
        self.report = ReplayReport()
        self._api_calls: dict[str, tuple[AgentCall, None]] = {}
        self._assembler = CallAssembler()

    def problem(self, where: str, message: str) -> None:
        self.err.write(f"otelbridge replay: {where}: {message}\n")

    # --- reading -------------------------------------------------------------------------
    def read(self, path: Path) -> None:
        try:
            _, records = read_records(path)
            for record in records:
                self._take(path, record)
        except InputFileError as exc:
            self.report.bad_files += 1
            self.problem(str(path), str(exc))

    def _take(self, path: Path, record: Record) -> None:
        self.report.records += 1
        where = f"{path}: {record.label}" + (f" (call {record.call_hint})" if record.call_hint else "")
        if record.error is not None:
            self._bad(where, record.error)
            return
        try:
            if record.kind is RecordKind.CALL:
                call = parse_call(record.payload)
                previous = self._api_calls.get(call.id)
                if previous is None or call.is_final or not previous[0].is_final:
                    self._api_calls[call.id] = (call, None)
            else:
                event = parse_webhook_event(record.payload)
                if not self._assembler.add(event):
                    self.report.ignored_events += 1
        except ValidationError as exc:
            self._bad(where, describe_validation_error(exc))

    def _bad(self, where: str, message: str) -> None:
        self.report.bad_records += 1
        self.problem(where, f"{message} (skipped)")

    # --- mapping ---------------------------------------------------------------------------
    def map(self) -> list[MappedCall]:
        # A call saved from the API is complete; it wins over one assembled from webhooks.
        calls: dict[str, tuple[AgentCall, int | None]] = {
            a.call.id: (a.call, a.fallback_end_ns) for a in self._assembler.calls()
        }
        calls.update(self._api_calls)
        mapped = []
        options = self.settings.mapping_options()
        for call, fallback in calls.values():
            try:
                mapped.append(map_call(call, options, fallback_end_ns=fallback))
            except UnplaceableCallError as exc:
                self._bad(f"call {call.id}", str(exc).removeprefix(f"call {call.id}: "))
        self.report.calls = len(mapped)
        self.report.spans = sum(len(m.spans) for m in mapped)
        self.report.points = sum(len(m.points) for m in mapped)
        return mapped

    # --- delivery --------------------------------------------------------------------------
    def resource(self) -> Resource:
        return service_resource(self.settings)

    def deliver(self, mapped: list[MappedCall]) -> None:
        if self.exporter == "none":
            return
        if self.exporter == "console":
            if mapped:
                self.out.write(console.render_all(mapped) + "\n")
            return
        resource = self.resource()
        self._deliver_spans(mapped, resource)
        self._deliver_metrics(mapped, resource)

    def _deliver_spans(self, mapped: list[MappedCall], resource: Resource) -> None:
        exporter = exporters.span_exporter()
        try:
            batch: list[MappedCall] = []
            size = 0
            for call in [*mapped, None]:
                if call is None or (batch and size + len(call.spans) > MAX_SPANS_PER_REQUEST):
                    if batch:
                        spans = to_readable_spans((s for m in batch for s in m.spans), resource)
                        if exporter.export(spans) is not SpanExportResult.SUCCESS:
                            self.report.undelivered += len(spans)
                    batch, size = [], 0
                if call is not None:
                    batch.append(call)
                    size += len(call.spans)
        finally:
            exporter.shutdown()
        if self.report.undelivered:
            self.problem(
                exporters.endpoint("traces"),
                f"{self.report.undelivered} of {self.report.spans} spans were not delivered",
            )

    def _deliver_metrics(self, mapped: list[MappedCall], resource: Resource) -> None:
        if not self.report.points:
            return
        reader = InMemoryMetricReader()
        provider = MeterProvider(resource=resource, metric_readers=[reader])
        recorder = MetricRecorder(
            provider,
            max_log_metric_names=self.settings.log_metric_max_names,
            max_string_values=self.settings.log_metric_max_values,
        )
        for call in mapped:
            recorder.record(call.points)
        data = reader.get_metrics_data()
        provider.shutdown()
        if data is None:
            return
        exporter = exporters.metric_exporter()
        try:
            result = exporter.export(data)
        finally:
            exporter.shutdown()
        if result is not MetricExportResult.SUCCESS:
            self.report.undelivered += self.report.points
            self.problem(exporters.endpoint("metrics"),
                         f"{self.report.points} metric points were not delivered")  # fmt: skip

    def summary(self) -> str:
        r = self.report
        where = {
            "otlp": f" to {exporters.endpoint('traces')}",
            "console": " to the console",
            "none": " (exporter none: nothing sent)",
        }[self.exporter]
        line = (
            f"otelbridge replay: {r.calls} calls, {r.spans} spans, {r.points} metric points"
            f"{where}; {r.records} records read"
        )
        extras = []
        if r.bad_records:
            extras.append(f"{r.bad_records} bad records skipped")
        if r.bad_files:
            extras.append(f"{r.bad_files} files unreadable")
        if r.ignored_events:
            extras.append(f"{r.ignored_events} events of unknown type ignored")
        if r.undelivered:
            extras.append(f"{r.undelivered} items NOT delivered")
        return line + (f"; {', '.join(extras)}" if extras else "")


def run_replay(paths: Sequence[Path], settings: Settings, exporter: str, out: TextIO, err: TextIO) -> int:
    replay = Replay(settings, exporter, out, err)
    for path in paths:
        replay.read(path)
    mapped = replay.map()
    replay.deliver(mapped)
    err.write(replay.summary() + "\n")
    return 0 if replay.report.ok else 1
