"""The export side of ``otelbridge serve``, in its own process: ``python -m otelbridge.pipeline``.

Why a second process: the webhook side must acknowledge thousands of webhooks a second, and
mapping, encoding, metric recording and exporting are CPU work that would share one GIL with
it (measured in docs/benchmarks.md). The two processes share nothing but the SQLite files:

    main process (otelbridge.daemon)          pipeline process (this module)
    webhook listener -> inbox.db  ──────────► Processor -> state.db (calls, ledger, spool, points)
                      stdin: config, wakes,    Sender per signal -> OTLP
                      webhook counts, health   Telemetry (meter) -> spooled OTLP metrics, /metrics
                                               admin listener (/healthz, /readyz, /metrics)

Protocol on stdin, one line each: the first line is the JSON config; then ``w`` (new inbox
rows), ``c {json}`` (cumulative webhook counts by type and outcome), ``h {json}`` (the webhook
side's health), ``stop`` (drain within the shutdown timeout, then exit 0). The main process's
death kills this one at once (``PR_SET_PDEATHSIG``, :func:`die_with_parent`); elsewhere, end of
input without ``stop`` means the same: exit at once, abandoning exports in flight — everything
is durable, and the next start carries on. ``/healthz`` fails when the main process has not
reported for 10 s. ``pipeline.lock`` in the state directory keeps a second pipeline
from running on the same files.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.resources import Resource

from otelbridge import __version__
from otelbridge.admin import Readiness, build_admin_app
from otelbridge.allocator import fix_mmap_threshold, tune_garbage_collection
from otelbridge.cartesia.client import CartesiaClient
from otelbridge.coredumps import disable_core_dumps
from otelbridge.delivery.environment import SIGNALS, OtelEnvironment
from otelbridge.delivery.otlp import encode_traces
from otelbridge.delivery.resource import service_resource
from otelbridge.delivery.sender import SWEEP_BYTES, Sender
from otelbridge.delivery.spool import Spool
from otelbridge.delivery.telemetry import Telemetry
from otelbridge.delivery.transport import Transport, make_transport, probe
from otelbridge.httplimits import HttpLimits, connection_cap, raise_fd_limit
from otelbridge.ingest.poller import Poller, Stored, take_calls
from otelbridge.ingest.processor import BatchResult, Processor, load_unexported_points
from otelbridge.logs import active_redactor, configure_logging
from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import SpanRecord
from otelbridge.settings import ADMIN_PROBE_RESERVE, Settings
from otelbridge.store import (
    DatabaseUnreachableError,
    FreeSpace,
    StoreWriteError,
    database_secrets,
    open_engine,
)
from otelbridge.web import address, quiet_server

log = logging.getLogger("otelbridge.pipeline")

SWEEP_INTERVAL_S = 30.0
HOUSEKEEPING_INTERVAL_S = 2.0
#: delivery counts as stuck when a sender loop has not looked at the spool for this long
STUCK_AFTER_NS = 60 * 1_000_000_000
#: the webhook side counts as gone when it has not reported for this long
WEBHOOK_SILENT_NS = 10 * 1_000_000_000
LOCK_WAIT_S = 30.0
#: points stored before a metrics collection comes early (a few hundred bytes each in state.db)
POINTS_PER_COLLECTION = 50_000
#: listed calls processed per transaction (a page is 100)
CALLS_PER_TAKE = 25
#: listed calls wait while the spool holds more than this (see Pipeline._room_for_listed_calls)
LISTED_SPOOL_HIGH_BYTES = 64 * 1024 * 1024
LISTED_WAIT_S = 0.05
LISTED_STALL_S = 30.0
#: a replica that does not lead tries for the lease this often
LEASE_RETRY_S = 2.0
#: how often the leader renews its lease (it is lost after the engine's TTL without renewal)
LEASE_RENEW_S = 2.0
#: the exit status of a pipeline that lost its lease (the main process starts a fresh one)
EXIT_LEASE_LOST = 3
#: a loop that keeps failing the same way logs its traceback once, then one line this often
REPEATED_FAILURE_LOG_S = 60.0


@dataclass(slots=True)
class WebhookSide:
    """What the main process last reported."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    inbox_error: str | None = None
    stopping: bool = False
    heard_ns: int = field(default_factory=time.time_ns)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        resource: Resource,
        *,
        transport: Transport | None = None,
        api_key: str | None = None,
        database_url: str | None = None,
        prometheus: bool = True,
    ) -> None:
        """``prometheus``: keep the series for the admin port's ``/metrics`` (off for a
        one-shot command that serves none)."""
        self.settings = settings
        self.engine = open_engine(settings.state_dir, database_url, role="pipeline")
        #: who processes, polls and sends: one pipeline per state directory (a file lease), or
        #: one leader among the replicas sharing a database (a lease row)
        self.lease = self.engine.lease("pipeline")
        self.leader = False
        #: the leader's transactions, each fenced by the lease where it can be lost
        self.state = self.engine.state(fence=self.lease)
        #: what every replica writes whether it leads or not (its own metrics, readiness)
        self.shared = self.state if self.engine.single_process else self.engine.state()
        self._state_reader = self.engine.state_reader()
        self._inbox = self.engine.inbox()
        self._acks = self.engine.acks()  # the sender's record of acknowledged exports
        self.spool = Spool(
            max_bytes=settings.spool_max_bytes,
            max_age_ns=int(settings.spool_max_age * 1e9),
            delivered=self._delivered,
        )
        self.environment = OtelEnvironment()
        self.exporters = self.environment.exporters(settings.exporter)
        self.telemetry = Telemetry(
            resource,
            temporality=self.environment.temporality(),
            limits=settings.series_limits(),
            prometheus=prometheus,
            otlp=self.exporters["metrics"] != "none",
        )
        self.metrics = self.telemetry.self_metrics
        self.webhooks = WebhookSide()
        self.telemetry.provider.get_meter(c.SELF_SCOPE, __version__).create_observable_counter(
            c.SELF_WEBHOOKS,
            [self._webhook_counts],
            "{webhook}",
            "Webhook deliveries by event type and outcome",
        )

        def encode(spans: list[SpanRecord]) -> bytes:
            return encode_traces(spans, resource)

        self.processor = Processor(
            self.state,
            self._inbox,
            self.spool,
            settings.mapping_options(),
            encode,
            call_timeout_ns=int(settings.call_timeout * 1e9),
            retention_ns=int(settings.state_retention * 1e9),
            deployments_per_agent=settings.deployments_per_agent,
        )
        self.transport = transport or make_transport(self.exporters)
        self.sender = Sender(
            self.state,
            self.transport,
            self.metrics,
            initial_backoff_s=settings.retry_initial_backoff,
            max_backoff_s=settings.retry_max_backoff,
            reader=self._state_reader,
            acks=self._acks,
            recover=False,  # when this process takes the lease (run_loops)
            sweep_max_bytes=min(SWEEP_BYTES, settings.spool_max_bytes // 4),
        )
        self.wake = anyio.Event()
        self._processing = anyio.Lock()
        #: one metrics collection at a time; none after the final one (collect_metrics)
        self._collecting = anyio.Lock()
        self._collected_last = False
        #: points stored since the last metrics collection; past POINTS_PER_COLLECTION the
        #: collection comes early (set by _account, awaited by the metrics loop)
        self._points_waiting = 0
        self._collect_early = anyio.Event()
        #: the spool's bytes when listed calls last gave up waiting for it to shrink
        self._spool_stalled_at: int | None = None
        self.stopping = False
        self.poller: Poller | None = None
        self.client: CartesiaClient | None = None
        if api_key and settings.poll_interval > 0:
            self.client = CartesiaClient(
                api_key=api_key, base_url=settings.cartesia_base_url, version=settings.cartesia_version
            )
            self.poller = Poller(
                self.client,
                self.state,
                self._inbox,
                agent_ids=settings.agent_id_list(),
                interval_s=settings.poll_interval,
                concurrency=settings.poll_concurrency,
                refresh_s=settings.agent_refresh_interval,
                give_up_ns=int(settings.running_call_give_up * 1e9),
                on_stored=self.poke,
                evaluations=settings.evaluations,
                store=self.take_calls,
            )

    async def take_calls(
        self, raws: Sequence[dict[str, Any]], source: str, remember_running: bool, now_ns: int
    ) -> Stored:
        """A page of listed calls, validated and processed at once (a
        :data:`~otelbridge.ingest.poller.StoreCalls` for this lease holder's poller or backfill):
        committed with their spans, so the page counts as stored just as an inbox append would."""

        stored = Stored()
        # a transaction per few calls: the first export leaves early, and webhooks waiting for
        # the processor get it between them
        for start in range(0, len(raws), CALLS_PER_TAKE):
            await self._room_for_listed_calls()
            chunk = raws[start : start + CALLS_PER_TAKE]
            take = functools.partial(take_calls, self.processor, chunk, source, remember_running, now_ns)
            async with self._processing:
                part, result = await anyio.to_thread.run_sync(take)
            self._account(result)
            stored.add(part)
        return stored

    async def _room_for_listed_calls(self) -> None:
        """Wait while the spool holds more than LISTED_SPOOL_HIGH_BYTES (or a quarter of its
        cap): listed calls can wait, the API keeps them (the page's cursor has not moved), and
        the spool's cap, which drops the oldest requests, is for what cannot wait. A backfill
        would otherwise outrun its sender and take the spool towards the cap. Once the spool
        has not shrunk for LISTED_STALL_S (the backend is down), the calls go on into it."""
        high = min(LISTED_SPOOL_HIGH_BYTES, self.settings.spool_max_bytes // 4)
        lowest, since = None, anyio.current_time()
        while (held := await anyio.to_thread.run_sync(self._spool_bytes)) > high:
            if self._spool_stalled_at is not None and held >= self._spool_stalled_at:
                return  # still not shrinking since the last wait gave up: no new wait
            if lowest is None or held < lowest:
                lowest, since = held, anyio.current_time()
            elif anyio.current_time() - since >= LISTED_STALL_S:
                log.warning(
                    "the spool holds %.0f MB and has not shrunk for %.0f s: listed calls are "
                    "processed into it anyway (the backend may be down)", held / 1e6, LISTED_STALL_S,
                )  # fmt: skip
                self._spool_stalled_at = held
                return
            self.sender.notify()
            await anyio.sleep(LISTED_WAIT_S)
        self._spool_stalled_at = None

    def _spool_bytes(self) -> int:
        """What the spool holds for the backend: its acknowledged rows wait for a delete."""
        with self._state_reader.reading() as tx:
            held = tx.spool_bytes()
        return max(0, held - self.sender.acknowledged_bytes())

    def _delivered(self) -> list[int]:
        """The spool ids the backend acknowledged that may still be spooled (the spool's caps
        do not count them as dropped)."""
        return self.sender.acknowledged_ids()

    def poke(self) -> None:
        """New inbox rows (webhooks, polled calls): wake the processor."""
        self.wake.set()

    def _webhook_counts(self, _: CallbackOptions) -> list[Observation]:
        return [
            Observation(n, {c.SELF_ATTR_TYPE: t, c.SELF_ATTR_OUTCOME: o})
            for (t, o), n in self.webhooks.counts.items()
        ]

    def export_target(self) -> str:
        return ", ".join(
            f"{sig} {self.transport.endpoint(sig) if self.exporters[sig] == 'otlp' else self.exporters[sig]}"
            for sig in SIGNALS
        )

    def close(self) -> None:
        self.telemetry.shutdown()
        self.transport.close()
        stores = {id(s): s for s in (self.state, self.shared, self._state_reader, self._inbox, self._acks)}
        for store in stores.values():
            store.close()
        self.lease.release()

    # --- loops ---------------------------------------------------------------------------------
    async def run_loops(self, tg: anyio.abc.TaskGroup) -> None:
        """Every replica collects its own metrics and keeps its gauges; the lease holder also
        processes, sends and polls (at once where the lease was taken before the start)."""
        tg.start_soon(resilient, "metrics collection", self._metrics_loop)
        tg.start_soon(resilient, "housekeeping", self._housekeeping_loop)
        if self.lease.held:
            await self._lead(tg)
        else:
            tg.start_soon(self._campaign, tg)

    async def _campaign(self, tg: anyio.abc.TaskGroup) -> None:
        """Wait for the lease (another replica leads meanwhile), then lead. The schema is made
        first: a database that was down when this replica started is waited for here."""
        while not await anyio.to_thread.run_sync(self._try_lease):
            await anyio.sleep(LEASE_RETRY_S)
        log.info("this replica leads now: processing, polling and sending")
        await self._lead(tg)

    def _try_lease(self) -> bool:
        try:
            self.engine.ensure_schema()
        except DatabaseUnreachableError:
            return False
        return self.lease.acquire(0.0)

    async def _lead(self, tg: anyio.abc.TaskGroup) -> None:
        self.leader = True
        self.telemetry.gauges.leader = 1
        # Acknowledged exports a crash left in the spool are deleted unsent, and points stored
        # but not yet in a spooled metrics request (a crash or kill -9 before the last
        # collection) are recorded again, once.
        await anyio.to_thread.run_sync(self.sender.recover)
        self.telemetry.record(await anyio.to_thread.run_sync(load_unexported_points, self.state))
        tg.start_soon(resilient, "processor", self._process_loop)
        for signal_name in SIGNALS:
            tg.start_soon(resilient, f"{signal_name} sender", functools.partial(self.sender.run, signal_name))
        if self.poller is not None:
            tg.start_soon(resilient, "List Calls poller", self.poller.run)
        tg.start_soon(self._keep_lease)

    async def _keep_lease(self) -> None:
        """Renew the lease; on any failed renewal, stop at once: every leader transaction is
        fenced, so nothing more could commit, and the main process starts a fresh pipeline
        (a new holder id) that waits for the lease like any other replica."""
        while True:
            await anyio.sleep(LEASE_RENEW_S)
            if not await anyio.to_thread.run_sync(self.lease.renew):
                log.error("the pipeline lease was lost (not renewed in time): stepping down")
                os._exit(EXIT_LEASE_LOST)

    async def probe_endpoints(self) -> None:
        """An empty export to each OTLP endpoint, beside start-up (it delays nothing): one clear
        WARNING per endpoint that does not answer, instead of silence until the first export;
        its Fix follows from how the probe failed (e.g. OTLP/HTTP sent to a gRPC port)."""
        from otelbridge.delivery.transport import failure_fix

        for signal_name in SIGNALS:
            if self.exporters[signal_name] != "otlp":
                continue
            result = await anyio.to_thread.run_sync(probe, self.transport, signal_name)
            if result.outcome != "ok":
                log.warning(
                    "the OTLP %s endpoint %s does not take exports (%s: %s); webhooks are still "
                    "stored and sent when it does. Fix: %s; `otelbridge check` probes it again",
                    signal_name, self.transport.endpoint(signal_name), result.status, result.message,
                    failure_fix(self.transport, signal_name, result),
                )  # fmt: skip

    async def _process_loop(self) -> None:
        next_sweep = anyio.current_time() + SWEEP_INTERVAL_S
        while True:
            self.wake = anyio.Event()
            await self.process_all()
            if anyio.current_time() >= next_sweep:
                await self.sweep()
                next_sweep = anyio.current_time() + SWEEP_INTERVAL_S
            with anyio.move_on_after(0.5):
                await self.wake.wait()

    async def sweep(self, *, every_open_call: bool = False) -> BatchResult:
        """One processor sweep (calls silent for ``call_timeout``, or ``every_open_call``,
        exported as they stand, at most 500; old state forgotten), never beside the processing
        loop or the poller."""
        sweep = functools.partial(self.processor.sweep, every_open_call=every_open_call)
        async with self._processing:  # the poller's take_calls uses the processor too
            result = await anyio.to_thread.run_sync(sweep)
        self._account(result)
        return result

    async def process_all(self) -> None:
        async with self._processing:  # the loop and a drain never process side by side
            while True:
                result = await anyio.to_thread.run_sync(self.processor.process_batch)
                self._account(result)
                if not result.events:
                    return

    def _account(self, result: BatchResult) -> None:
        self.telemetry.record(result.points)
        self._points_waiting += len(result.points)
        if self._points_waiting >= POINTS_PER_COLLECTION:
            self._collect_early.set()
        if result.fallen_deployments:
            self.telemetry.recorder.forget_deployments(result.fallen_deployments)
        for event_type, count in result.events_by_type.items():
            self.metrics.events.add(count, {c.SELF_ATTR_TYPE: event_type})
        if result.spans:
            self.metrics.spans.add(result.spans)
            self.sender.notify()
        if result.failed_events:
            self.metrics.processing_errors.add(result.failed_events)
        if result.late_log_items:
            self.metrics.late_log_items.add(result.late_log_items)
        if result.deployments_folded:
            self.metrics.deployments_folded.add(result.deployments_folded)
        for (signal_name, reason), (requests, items) in result.dropped.by.items():
            self.metrics.dropped.add(requests, {c.SELF_ATTR_SIGNAL: signal_name, c.SELF_ATTR_REASON: reason})
            log.error(
                "SPOOL CAP REACHED: dropped %d unsent %s request(s) (%d item(s)) because of their %s; "
                "raise OTELBRIDGE_SPOOL_MAX_%s or fix the backend",
                requests, signal_name, items, reason, "BYTES" if reason == "size" else "AGE",
            )  # fmt: skip

    async def _metrics_loop(self) -> None:
        """A collection every OTEL_METRIC_EXPORT_INTERVAL, or sooner once POINTS_PER_COLLECTION
        points wait in the points table (kept until a collection has them): a backfill or a
        burst of webhooks would otherwise grow that table for a whole interval."""
        interval = self.environment.metric_interval_s()
        while True:
            self._collect_early = anyio.Event()
            if self._points_waiting < POINTS_PER_COLLECTION:  # else points came during the last
                with anyio.move_on_after(interval):
                    await self._collect_early.wait()
            await self.collect_metrics()

    async def collect_metrics(self, *, final: bool = False) -> None:
        """Spool a metrics request of what was recorded. ``final``: the last one (a stop's drain,
        a one-shot command's flush); the metrics loop collects no more after it, since a
        collection landing after the wait for an empty spool would be left unsent."""
        async with self._collecting:
            if self._collected_last:
                return
            self._collected_last = final
            await self._collect()

    async def _collect(self) -> None:
        through = self.telemetry.recorded_through
        self._points_waiting = 0
        if self.exporters["metrics"] == "none":  # /metrics still serves them; nothing to send
            if self.leader:
                await anyio.to_thread.run_sync(self._forget_points, through)
            return
        collected = self.telemetry.collect_otlp()
        if collected is None:
            return
        body, items = collected
        epoch = self.telemetry.epoch
        cumulative = self.telemetry.temporality == "cumulative"

        leader = self.leader

        def spool_it() -> None:
            now = time.time_ns()
            with (self.state if leader else self.shared).transaction() as tx:
                newest = tx.spool_add("metrics", body, items, now, epoch=epoch)
                if cumulative:
                    tx.spool_supersede_metrics(epoch, newest)
                if leader:  # the points are the leader's: in its meter now, and in this request
                    tx.forget_points(through)

        await anyio.to_thread.run_sync(spool_it)
        self.sender.notify()

    def _forget_points(self, through: int) -> None:
        with self.state.transaction() as tx:
            tx.forget_points(through)

    async def _housekeeping_loop(self) -> None:
        while True:
            await anyio.to_thread.run_sync(self._refresh_gauges)
            await anyio.sleep(HOUSEKEEPING_INTERVAL_S)

    def _refresh_gauges(self) -> None:
        gauges = self.telemetry.gauges
        with self.shared.reading() as tx:
            stats = tx.spool_stats()
            gauges.open_calls = tx.open_calls()
        gauges.spool_depth = dict(stats.depth)
        gauges.spool_bytes = stats.bytes
        oldest = stats.oldest_ns
        gauges.spool_oldest_age_s = 0.0 if oldest is None else max(0.0, (time.time_ns() - oldest) / 1e9)
        gauges.inbox_depth = self._inbox.backlog()

    async def flush(self, stall_s: float) -> dict[str, int]:
        """Process everything stored and send until the spool is empty, or has not shrunk for
        ``stall_s`` (the backend refuses or is down); what is left, by signal."""
        await self.process_all()
        await self.collect_metrics(final=True)
        self.sender.notify()
        best, best_at = None, time.monotonic()
        while True:
            depth = await anyio.to_thread.run_sync(self.spool_depth)
            total = sum(depth.values())
            if total == 0:
                return depth
            if best is None or total < best:
                best, best_at = total, time.monotonic()
            elif time.monotonic() - best_at > stall_s:
                return depth
            await anyio.sleep(0.1)

    def inbox_backlog(self) -> int:
        return self._inbox.backlog()

    def spool_depth(self) -> dict[str, int]:
        with self.state.reading() as tx:
            return tx.spool_stats().depth

    async def drain(self, timeout_s: float) -> None:
        """Process what is stored, spool a last metrics collection, send for ``timeout_s``. A
        step that fails (a full disk) is logged and the stop goes on: what is stored stays for
        the next start, and the process still exits cleanly."""
        started = time.monotonic()
        failed = False
        where = self.settings.state_dir if self.engine.single_process else "the database"
        steps: list[tuple[Callable[[], Awaitable[None]], str]] = [
            (functools.partial(self.collect_metrics, final=True), "spool a last metrics collection")
        ]
        # with a local state directory this process is the only one that can process it
        leads = self.leader or self.engine.single_process
        if leads:
            steps.insert(0, (self.process_all, "process the stored events"))
        for step, what in steps:
            try:
                await step()
            except Exception as exc:
                failed = True
                log.error(
                    "stopping: could not %s (%s: %s); what is stored stays in %s for the next start",
                    what, type(exc).__name__, exc, where,
                )  # fmt: skip
        if not leads:  # what this replica received is the leader's to process and send
            if not failed:
                log.info("stopped: another replica leads and exports what this one received")
            return
        self.sender.notify()
        try:
            with anyio.move_on_after(max(0.0, timeout_s - (time.monotonic() - started))):
                while sum((await anyio.to_thread.run_sync(self.spool_depth)).values()):
                    await anyio.sleep(0.05)
            left = await anyio.to_thread.run_sync(self.spool_depth)
        except Exception as exc:
            log.error("stopping: cannot read the spool (%s: %s); it is kept in %s for the next start",
                      type(exc).__name__, exc, where)  # fmt: skip
            return
        if sum(left.values()):
            log.warning(
                "stopping with %d trace and %d metrics request(s) unsent; they are kept in %s and sent "
                "at the next start", left["traces"], left["metrics"], where,
            )  # fmt: skip
        elif not failed:
            log.info("stopped: everything received was exported")

    # --- admin ------------------------------------------------------------------------------------
    async def metrics_text(self) -> bytes:
        return await anyio.to_thread.run_sync(self.telemetry.prometheus_text)

    async def readiness(self) -> Readiness:
        checks: dict[str, dict[str, Any]] = {}
        local = self.engine.single_process
        space = FreeSpace(self.settings.state_dir, self.settings.min_free_bytes) if local else None

        def probe() -> str | None:
            # free space against the floor first: on a full disk a one-page write still fits
            # in the WAL's old frames and would pass
            problem = None if space is None else space.problem(fresh=True)
            if problem is not None:
                return problem
            try:
                self._inbox.probe()  # a real write: an empty transaction writes nothing
                self.shared.probe()
            except StoreWriteError as exc:
                return str(exc)
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
            return None

        with anyio.move_on_after(2.0) as scope:
            problem = await anyio.to_thread.run_sync(probe, abandon_on_cancel=True)
        if scope.cancelled_caught:
            store = "the state store" if local else "the database"
            problem = f"{store} did not take a write within 2s"
        if problem is None and self.webhooks.inbox_error:
            problem = self.webhooks.inbox_error
        checks["state_store"] = {"ok": problem is None, "reason": problem or "writable"}
        now = time.time_ns()
        silent = now - self.webhooks.heard_ns > WEBHOOK_SILENT_NS
        checks["webhooks"] = {
            "ok": not silent,
            "reason": "the webhook listener has not reported for 10s" if silent else "listening",
        }
        if self.leader:
            stalled = [
                sig for sig, st in self.sender.states.items() if now - st.heartbeat_ns > STUCK_AFTER_NS
            ]
            reason = f"the {', '.join(stalled)} delivery loop has not run for 60s" if stalled else "running"
        else:  # webhooks are still taken here; the lease holder sends them
            stalled, reason = [], "another replica leads: it processes and sends"
        delivery: dict[str, Any] = {"ok": not stalled, "reason": reason, "leader": self.leader}
        for sig, st in self.sender.states.items():
            delivery[sig] = {"failures": st.failures, "last_error": st.last_error}
        checks["delivery"] = delivery
        gauges = self.telemetry.gauges
        full = gauges.spool_bytes >= 0.9 * self.settings.spool_max_bytes
        checks["spool"] = {
            "ok": not full,
            "reason": "over 90% of OTELBRIDGE_SPOOL_MAX_BYTES" if full else "room left",
            "requests": sum(gauges.spool_depth.values()),
            "bytes": gauges.spool_bytes,
            "oldest_age_s": round(gauges.spool_oldest_age_s, 3),
        }
        stopping = self.stopping or self.webhooks.stopping
        checks["shutdown"] = {"ok": not stopping, "reason": "stopping" if stopping else "running"}
        if self.poller is not None:
            # informational: a polling problem must not take the webhook listener out of service
            stopped = {a: st.stopped for a, st in self.poller.statuses.items() if st.stopped}
            checks["polling"] = {
                "ok": True,
                "reason": f"{len(stopped)} agent(s) stopped" if stopped else "polling",
                "discovery_error": self.poller.discovery_error,
                "agents": {
                    a: {"stopped": st.stopped, "last_error": st.last_error, "calls": st.calls}
                    for a, st in self.poller.statuses.items()
                },
            }
        # Error texts come from backends and APIs, which may echo a key: redacted as the log is.
        redacted = active_redactor().tree(checks)
        assert isinstance(redacted, dict)
        return Readiness(all(check["ok"] for check in checks.values()), redacted)

    def liveness(self) -> str | None:
        """Why the daemon is not alive (``/healthz`` 503), or None. Alive while the webhook
        process reports (every second); during a drain after ``stop`` it reports no more."""
        if self.stopping or time.time_ns() - self.webhooks.heard_ns <= WEBHOOK_SILENT_NS:
            return None
        return (
            f"the webhook process has not reported for {WEBHOOK_SILENT_NS // 1_000_000_000}s: it is stopped, "
            "hung or gone and webhooks are not being taken. Fix: restart otelbridge serve"
        )

    # --- the main process's messages ---------------------------------------------------------------
    def take(self, line: str) -> bool:
        """Apply one stdin line; False for ``stop``."""
        kind, _, payload = line.strip().partition(" ")
        if kind == "w":
            self.wake.set()
        elif kind == "c":
            self.webhooks.counts = {(t, o): n for t, o, n in json.loads(payload)}
            self.webhooks.heard_ns = time.time_ns()
        elif kind == "h":
            health = json.loads(payload)
            self.webhooks.inbox_error = health.get("inbox_error")
            self.webhooks.stopping = bool(health.get("stopping"))
            self.webhooks.heard_ns = time.time_ns()
        elif kind == "stop":
            return False
        return True


async def resilient(
    name: str,
    loop: Callable[[], Awaitable[None]],
    *,
    delay_s: float = 1.0,
    quiet_s: float = REPEATED_FAILURE_LOG_S,
) -> None:
    """Run ``loop`` forever: an unexpected error (a full disk, a bug) is logged and the loop
    starts again ``delay_s`` later instead of taking the daemon down. Nothing is lost: every
    loop works from the durable state. A failure like the one before (same type and message,
    within ``quiet_s`` of running) logs its traceback once, then one line per ``quiet_s`` with
    the count: a full disk failing every second would otherwise write 60 tracebacks a minute."""
    last: str | None = None
    repeats = 0
    next_line = 0.0
    while True:
        started = time.monotonic()
        try:
            await loop()
        except Exception as exc:
            now = time.monotonic()
            what = f"{type(exc).__name__}: {exc}"
            if what != last or now - started > quiet_s:
                log.exception("the %s loop failed (%s); restarting it in %gs", name, what, delay_s)
                last, repeats, next_line = what, 0, now + quiet_s
            else:
                repeats += 1
                if now >= next_line:
                    log.error(
                        "the %s loop failed again %d time(s) in %gs (%s); restarting it every %gs",
                        name, repeats, quiet_s, what, delay_s,
                    )  # fmt: skip
                    repeats, next_line = 0, now + quiet_s
            await anyio.sleep(delay_s)


async def run_pipeline() -> int:
    async with anyio.wrap_file(sys.stdin.buffer) as stdin:
        config = json.loads(await stdin.readline())
        settings = Settings(**config["settings"])
        # The API key is redacted (the OTLP header values too: configure_logging adds them);
        # this process never holds the webhook secrets (see daemon.pipeline_environment).
        database_url = config.get("database_url")
        hidden = ([config["api_key"]] if config.get("api_key") else []) + database_secrets(database_url)
        configure_logging(settings.log_format, settings.log_level, secrets=hidden)
        admin_sock = socket.socket(fileno=config["admin_fd"])
        # the resource is read here, not in the webhook process, which then loads no SDK
        pipeline = Pipeline(
            settings, service_resource(settings), api_key=config.get("api_key"), database_url=database_url
        )
        try:
            # One pipeline per state directory: wait for one orphaned by a kill -9 to exit. With
            # a shared database the lease is campaigned for while serving (run_loops).
            if pipeline.engine.single_process and not await anyio.to_thread.run_sync(
                pipeline.lease.acquire, LOCK_WAIT_S
            ):
                raise RuntimeError(f"another pipeline holds the lease of {settings.state_dir}")
            return await _serve(pipeline, admin_sock, stdin)
        finally:
            if pipeline.client is not None:
                await pipeline.client.aclose()
            pipeline.close()


def admin_limits(settings: Settings) -> HttpLimits:
    """The admin listener's limits: the default ones, its own cap, per-client cap and idle
    timeout; past a cap the oldest idle connection is closed for room, and with none idle
    ADMIN_PROBE_RESERVE connections more answer /healthz and /readyz only, so that neither idle
    sockets nor slow /metrics clients fail a liveness probe (httplimits)."""
    return HttpLimits(
        idle_timeout=settings.admin_idle_timeout,
        max_connections=connection_cap(settings.admin_max_connections, raise_fd_limit()),
        max_per_client=settings.admin_max_connections_per_client,
        evict_idle=True,
        probe_reserve=ADMIN_PROBE_RESERVE,
        probe_paths=frozenset({b"/healthz", b"/readyz"}),
        listener="admin",
    )


async def _serve(pipeline: Pipeline, admin_sock: socket.socket, stdin: anyio.AsyncFile[bytes]) -> int:
    admin = quiet_server(
        build_admin_app(pipeline.readiness, pipeline.metrics_text, pipeline.liveness),
        admin_limits(pipeline.settings),
    )
    async with anyio.create_task_group() as tg:
        await pipeline.run_loops(tg)
        admin_done = anyio.Event()

        async def serve_admin() -> None:
            try:
                await admin.serve(sockets=[admin_sock])
            finally:
                admin_done.set()

        tg.start_soon(serve_admin)
        tg.start_soon(pipeline.probe_endpoints)
        log.info("pipeline: exporting to %s; admin on %s", pipeline.export_target(), address(admin_sock))
        orderly = False
        while line := await stdin.readline():
            if not pipeline.take(line.decode()):
                orderly = True
                break
        if orderly:
            pipeline.stopping = True
            await pipeline.drain(pipeline.settings.shutdown_timeout)
            admin.should_exit = True
            with anyio.move_on_after(5):
                await admin_done.wait()
        else:
            log.warning("the webhook side is gone: stopping at once (everything stored is kept)")
            # At once: a cancelled task group would wait for the worker threads, and an export
            # in flight holds one until its timeout, keeping the admin port and answering
            # /readyz. Abandoning it loses nothing: what the backend has not acknowledged is
            # still in state.db, and every SQLite commit is durable (as after a kill -9).
            os._exit(0)
        tg.cancel_scope.cancel()
    return 0


#: the pipeline yields the CPU to the webhook process under contention: acknowledging webhooks
#: (or Cartesia retries and the load grows) matters more than exporting a second sooner.
NICENESS = 10


#: prctl(2) option: the signal the kernel sends this process when its parent dies
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None) -> None:
    """Have the kernel SIGKILL this process the moment the webhook process dies (``kill -9``
    included), so that no orphan keeps the admin port and answers the probes for it. Linux only;
    elsewhere the end of stdin stops it (:func:`_serve`)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)  # the parent died before prctl took effect: nobody will ever send "stop"


def main() -> int:
    die_with_parent(int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else None)
    disable_core_dumps()  # exec reset the daemon's PR_SET_DUMPABLE
    # Ctrl-C in a terminal and a systemd stop (KillMode=control-group) signal every process of
    # the group: stopping is the daemon's to order ("stop" on stdin, or the end of stdin), so
    # that the pipeline drains first instead of dying under the daemon's graceful shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fix_mmap_threshold()
    tune_garbage_collection()
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    return anyio.run(run_pipeline, backend_options={"use_uvloop": True})


if __name__ == "__main__":
    sys.exit(main())
