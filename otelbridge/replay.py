"""``otelbridge replay PATH...``: saved calls or webhook streams -> traces and metrics.

Every file is read and every record validated before anything is exported; a bad record is
reported on one line (file, record, field) and skipped, good ones are still exported. The
exit status is 0 only when every record was good and everything was delivered.

What it prints comes partly from the records (call ids, agent and tool names, roles, end
reasons): the console trees (:mod:`otelbridge.delivery.console`) and the problem lines print
them with their control characters escaped (:func:`otelbridge.logs.escape_controls`), so a
record cannot send escape sequences to the terminal or forge a line.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from pydantic import ValidationError

from otelbridge.cartesia.errors import describe_validation_error
from otelbridge.cartesia.models import AgentCall, parse_call
from otelbridge.cartesia.webhooks import parse_webhook_event
from otelbridge.delivery import console
from otelbridge.delivery.environment import ExporterKind, OtelEnvironment, Signal
from otelbridge.delivery.meter import MetricRecorder
from otelbridge.delivery.otlp import MAX_SPANS_PER_REQUEST, encode_traces
from otelbridge.delivery.resource import service_resource
from otelbridge.delivery.telemetry import collect_request, otlp_reader
from otelbridge.delivery.transport import Transport, display_endpoint, make_transport
from otelbridge.ingest.assembly import CallAssembler
from otelbridge.ingest.files import InputFileError, Record, RecordKind, read_records
from otelbridge.logs import escape_controls
from otelbridge.mapping import MappedCall, UnplaceableCallError, map_call
from otelbridge.mapping.deployments import RecentDeployments, fold, folded_count
from otelbridge.retry import backoff
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
    #: points whose deployment read ``other`` (past OTELBRIDGE_DEPLOYMENTS_PER_AGENT)
    deployments_folded: int = 0
    undelivered: int = 0

    @property
    def ok(self) -> bool:
        return not (self.bad_records or self.bad_files or self.undelivered)


#: tries per request before replay gives up on it (the daemon's sender never gives up)
SEND_ATTEMPTS = 3


class Replay:
    def __init__(
        self, settings: Settings, exporters: Mapping[Signal, ExporterKind], out: TextIO, err: TextIO
    ) -> None:
        self.settings = settings
        self.exporters = dict(exporters)
        self.environment = OtelEnvironment()
        self.out, self.err = out, err
        self.report = ReplayReport()
        self._api_calls: dict[str, tuple[AgentCall, None]] = {}
        self._assembler = CallAssembler()

    def problem(self, where: str, message: str) -> None:
        self.err.write(f"otelbridge replay: {escape_controls(f'{where}: {message}')}\n")

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
        # A call saved from the API is the source of truth: it wins over the one assembled
        # from webhooks field by field, keeping what only the webhooks carry (agent_name).
        calls: dict[str, tuple[AgentCall, int | None]] = {
            a.call.id: (a.call, a.fallback_end_ns) for a in self._assembler.calls()
        }
        for call_id, (api_call, _) in self._api_calls.items():
            assembled = calls.get(call_id)
            calls[call_id] = (
                (api_call, None) if assembled is None else (api_call.merged_with(assembled[0]), assembled[1])
            )
        mapped = []
        agents: dict[str, str] = {}
        options = self.settings.mapping_options()
        for call, fallback in calls.values():
            try:
                mapped.append(map_call(call, options, fallback_end_ns=fallback))
                agents[call.id] = call.agent_id
            except UnplaceableCallError as exc:
                self._bad(f"call {call.id}", str(exc).removeprefix(f"call {call.id}: "))
        # the deployment bound ranks by call start: label in that order, as the daemon would live
        recent = RecentDeployments(self.settings.deployments_per_agent)
        for one in sorted(mapped, key=lambda m: m.start_ns):
            one.points = fold(one.points, recent.labeller(agents[one.call_id], one.start_ns))
            self.report.deployments_folded += folded_count(one.points)
        self.report.calls = len(mapped)
        self.report.spans = sum(len(m.spans) for m in mapped)
        self.report.points = sum(len(m.points) for m in mapped)
        return mapped

    # --- delivery --------------------------------------------------------------------------
    def resource(self) -> Resource:
        return service_resource(self.settings)

    def deliver(self, mapped: list[MappedCall]) -> None:
        if self.exporters["traces"] == "console" and mapped:
            self.out.write(console.render_all(mapped) + "\n")
        if all(kind != "otlp" for kind in self.exporters.values()):
            return
        resource = self.resource()
        transport = make_transport(self.exporters)
        try:
            if self.exporters["traces"] == "otlp":
                self._deliver_spans(transport, mapped, resource)
            if self.exporters["metrics"] != "none":
                self._deliver_metrics(transport, mapped, resource)
        finally:
            transport.close()

    def _send(self, transport: Transport, signal: Signal, body: bytes) -> bool:
        """One request, retried as the daemon's sender would (backoff, Retry-After) a few times."""
        rng = random.Random()  # noqa: S311 - jitter, not cryptography
        for attempt in range(SEND_ATTEMPTS):
            result = transport.send(signal, body)
            if result.outcome == "ok":
                if result.rejected:
                    self.report.undelivered += result.rejected
                    self.problem(transport.endpoint(signal), f"the backend rejected {result.message}")
                return True
            if result.outcome == "reject" or attempt == SEND_ATTEMPTS - 1:
                self.problem(transport.endpoint(signal), f"{result.status}: {result.message}")
                return False
            wait = backoff(attempt, self.settings.retry_initial_backoff, self.settings.retry_max_backoff, rng)
            if result.retry_after is not None:
                wait = min(max(wait, result.retry_after), self.settings.retry_max_backoff)
            time.sleep(wait)
        return False  # pragma: no cover - the loop returns

    def _deliver_spans(self, transport: Transport, mapped: list[MappedCall], resource: Resource) -> None:
        failed = 0
        batch: list[MappedCall] = []
        size = 0
        for call in [*mapped, None]:
            if call is None or (batch and size + len(call.spans) > MAX_SPANS_PER_REQUEST):
                if batch:
                    spans = [s for m in batch for s in m.spans]
                    if not self._send(transport, "traces", encode_traces(spans, resource)):
                        failed += len(spans)
                batch, size = [], 0
            if call is not None:
                batch.append(call)
                size += len(call.spans)
        if failed:
            self.report.undelivered += failed
            self.problem(
                transport.endpoint("traces"), f"{failed} of {self.report.spans} spans were not delivered"
            )

    def _deliver_metrics(self, transport: Transport, mapped: list[MappedCall], resource: Resource) -> None:
        if not self.report.points:
            return
        limits = self.settings.series_limits()
        reader = otlp_reader(self.environment.temporality(), limits)
        provider = MeterProvider(resource=resource, metric_readers=[reader])
        recorder = MetricRecorder(provider, limits)
        for call in mapped:
            recorder.record(call.points)
        collected = collect_request(reader, recorder, self.environment.temporality(), resource)
        provider.shutdown()
        if collected is None:
            return
        body, _ = collected
        if not self._send(transport, "metrics", body):
            self.report.undelivered += self.report.points
            self.problem(transport.endpoint("metrics"),
                         f"{self.report.points} metric points were not delivered")  # fmt: skip

    def _where(self, signal: Signal) -> str:
        kind = self.exporters[signal]
        if kind == "otlp":
            return f"to {display_endpoint(self.environment, signal)}"
        return "to the console" if kind == "console" else "not sent (exporter none)"

    def summary(self) -> str:
        r = self.report
        line = (
            f"otelbridge replay: {r.calls} calls, {r.spans} spans {self._where('traces')}, "
            f"{r.points} metric points {self._where('metrics')}; {r.records} records read"
        )
        extras = []
        if r.bad_records:
            extras.append(f"{r.bad_records} bad records skipped")
        if r.bad_files:
            extras.append(f"{r.bad_files} files unreadable")
        if r.ignored_events:
            extras.append(f"{r.ignored_events} events of unknown type ignored")
        if r.deployments_folded:
            extras.append(
                f"{r.deployments_folded} points of deployments past "
                "OTELBRIDGE_DEPLOYMENTS_PER_AGENT read 'other'"
            )
        if r.undelivered:
            extras.append(f"{r.undelivered} items NOT delivered")
        return line + (f"; {', '.join(extras)}" if extras else "")


def run_replay(
    paths: Sequence[Path],
    settings: Settings,
    exporters: Mapping[Signal, ExporterKind],
    out: TextIO,
    err: TextIO,
) -> int:
    replay = Replay(settings, exporters, out, err)
    for path in paths:
        replay.read(path)
    mapped = replay.map()
    replay.deliver(mapped)
    err.write(replay.summary() + "\n")
    return 0 if replay.report.ok else 1
