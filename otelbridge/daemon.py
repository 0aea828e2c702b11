"""``otelbridge serve``: every part in one anyio task group.

    webhook listener ─► SqliteInbox (group commit, inbox.db) ─► 2xx
                              │ notify
                              ▼
                        Processor (state.db: calls, ledger, spool, points, one transaction)
                              │ notify                     │ points
                              ▼                            ▼
                        Sender per signal ─► OTLP     Telemetry (meter) ─► /metrics, spooled OTLP metrics

Shutdown (SIGTERM/SIGINT): stop taking webhooks (in-flight ones finish and are committed),
process the inbox, spool a last metrics collection, send until the spool is empty or
``shutdown_timeout`` passes, stop. What is not sent stays in the spool for the next start.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.types import ASGIApp

from otelbridge.admin import Readiness, build_admin_app
from otelbridge.delivery.resource import service_resource
from otelbridge.delivery.sdk import encode_trace_request, to_readable_spans
from otelbridge.delivery.sender import Sender
from otelbridge.delivery.spool import SIGNALS, Spool
from otelbridge.delivery.telemetry import Telemetry, interval_from_env, temporality_from_env
from otelbridge.delivery.transport import ConsoleTransport, DiscardTransport, Transport, transport_from_env
from otelbridge.ingest.inbox import SqliteInbox, inbox_depth
from otelbridge.ingest.processor import BatchResult, Processor, load_unexported_points
from otelbridge.ingest.receiver import build_webhook_app
from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import SpanRecord
from otelbridge.settings import Settings
from otelbridge.store import Database, open_inbox, open_state

log = logging.getLogger("otelbridge.daemon")

WEBHOOK_PATH = "/webhooks/cartesia"
SWEEP_INTERVAL_S = 30.0
HOUSEKEEPING_INTERVAL_S = 2.0
#: delivery counts as stuck when a sender loop has not looked at the spool for this long
STUCK_AFTER_NS = 60 * 1_000_000_000


class StartupError(Exception):
    """otelbridge serve cannot start: the message names the setting and the fix."""


def bind(host: str, port: int, setting: str) -> socket.socket:
    """Bind the listening socket ourselves: a clear message instead of uvicorn's exit."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(
            f"{setting}: cannot resolve {host!r} ({exc.strerror}). Fix: use an IP address"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"{setting}: cannot listen on {host}:{port} ({exc.strerror}). "
            "Fix: choose a free port or stop what uses it"
        ) from None
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server(app: ASGIApp) -> _Server:
    config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        server_header=False,
        log_config=None,
        timeout_graceful_shutdown=5,
        http="httptools",
    )
    return _Server(config)


@dataclass(frozen=True, slots=True)
class Endpoints:
    webhook_url: str
    admin_url: str


def make_transport(settings: Settings) -> Transport:
    if settings.exporter == "console":
        return ConsoleTransport()
    if settings.exporter == "none":
        return DiscardTransport()
    return transport_from_env()


class Daemon:
    def __init__(
        self, settings: Settings, secrets: list[bytes], *, transport: Transport | None = None
    ) -> None:
        self.settings = settings
        self._secrets = secrets
        state_dir = settings.state_dir
        self.state: Database = open_state(state_dir)
        self._inbox_db = open_inbox(state_dir)
        self._inbox_reader = open_inbox(state_dir)
        self._inbox_wake = anyio.Event()
        self.inbox = SqliteInbox(self._inbox_db, on_commit=self._on_commit)
        self.spool = Spool(max_bytes=settings.spool_max_bytes, max_age_ns=int(settings.spool_max_age * 1e9))
        resource = service_resource(settings)
        self.telemetry = Telemetry(
            resource,
            temporality=temporality_from_env(),
            max_log_metric_names=settings.log_metric_max_names,
            max_string_values=settings.log_metric_max_values,
        )
        self.metrics = self.telemetry.self_metrics

        def encode(spans: list[SpanRecord]) -> bytes:
            return bytes(encode_trace_request(to_readable_spans(spans, resource)).SerializeToString())

        self.processor = Processor(
            self.state,
            self._inbox_reader,
            self.spool,
            settings.mapping_options(),
            encode,
            call_timeout_ns=int(settings.call_timeout * 1e9),
            retention_ns=int(settings.state_retention * 1e9),
        )
        self.transport = transport or make_transport(settings)
        self.sender = Sender(
            self.state,
            self.spool,
            self.transport,
            self.metrics,
            initial_backoff_s=settings.retry_initial_backoff,
            max_backoff_s=settings.retry_max_backoff,
        )
        self._stopping = False
        self._stop = anyio.Event()
        self._webhook_server: _Server | None = None
        self._admin_server: _Server | None = None

    # --- wiring -------------------------------------------------------------------------------
    def _on_commit(self) -> None:
        self._inbox_wake.set()

    def _on_outcome(self, event_type: str, outcome: str) -> None:
        self.metrics.webhooks.add(1, {c.SELF_ATTR_TYPE: event_type, c.SELF_ATTR_OUTCOME: outcome})

    async def run(self, *, task_status: TaskStatus[Endpoints] = anyio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        webhook_sock = bind(
            s.listen_host, s.listen_port, f"OTELBRIDGE_LISTEN_HOST/PORT={s.listen_host}:{s.listen_port}"
        )
        try:
            admin_sock = bind(
                s.admin_host, s.admin_port, f"OTELBRIDGE_ADMIN_HOST/PORT={s.admin_host}:{s.admin_port}"
            )
        except StartupError:
            webhook_sock.close()
            raise
        webhook_app = build_webhook_app(
            inbox=self.inbox,
            secrets=self._secrets,
            max_body_bytes=s.max_body_bytes,
            on_outcome=self._on_outcome,
            path=WEBHOOK_PATH,
        )
        self._webhook_server = _server(webhook_app)
        self._admin_server = _server(build_admin_app(self.readiness, self._metrics_text))
        endpoints = Endpoints(
            f"http://{_address(webhook_sock)}{WEBHOOK_PATH}", f"http://{_address(admin_sock)}"
        )
        # Points stored but not yet in a spooled metrics request (a crash or kill -9 before
        # the last collection): record them again, once.
        self.telemetry.record(await anyio.to_thread.run_sync(load_unexported_points, self.state))
        webhook_done, admin_done, inbox_done = anyio.Event(), anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:

            async def serve(server: _Server, sock: socket.socket, done: anyio.Event) -> None:
                try:
                    await server.serve(sockets=[sock])
                finally:
                    done.set()

            async def inbox_task() -> None:
                try:
                    await self.inbox.run()
                finally:
                    inbox_done.set()

            tg.start_soon(inbox_task)
            tg.start_soon(_resilient, "processor", self._process_loop)
            for signal_name in SIGNALS:
                tg.start_soon(
                    _resilient, f"{signal_name} sender", functools.partial(self.sender.run, signal_name)
                )
            tg.start_soon(_resilient, "metrics collection", self._metrics_loop)
            tg.start_soon(_resilient, "housekeeping", self._housekeeping_loop)
            tg.start_soon(serve, self._admin_server, admin_sock, admin_done)
            tg.start_soon(serve, self._webhook_server, webhook_sock, webhook_done)
            while not (self._webhook_server.started and self._admin_server.started):
                if webhook_done.is_set() or admin_done.is_set():
                    raise StartupError("a listener stopped while starting; see the log above")
                await anyio.sleep(0.01)
            log.info(
                "otelbridge serve: webhooks on %s, admin on %s, state in %s, exporting to %s",
                endpoints.webhook_url,
                endpoints.admin_url,
                s.state_dir.resolve(),
                self._export_target(),
            )
            if not self._secrets:
                log.warning(
                    "webhook authentication is OFF (--allow-unauthenticated): anyone who can "
                    "reach %s can send events",
                    endpoints.webhook_url,
                )
            task_status.started(endpoints)

            if threading.current_thread() is threading.main_thread():
                tg.start_soon(self._watch_signals)
            await self._stop.wait()
            await self._shutdown(webhook_done, inbox_done)
            self._admin_server.should_exit = True
            await admin_done.wait()
            tg.cancel_scope.cancel()
        self.close()

    def request_stop(self) -> None:
        """Begin the graceful shutdown (what SIGTERM does); call from the daemon's event loop."""
        self._stop.set()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info(
                    "%s received: stopping (draining for up to %.0fs)",
                    signal.Signals(signum).name,
                    self.settings.shutdown_timeout,
                )
                self._stop.set()
                return

    def _export_target(self) -> str:
        if self.settings.exporter != "otlp":
            return self.settings.exporter
        return ", ".join(f"{sig} {self.transport.endpoint(sig)}" for sig in SIGNALS)

    async def _shutdown(self, webhook_done: anyio.Event, inbox_done: anyio.Event) -> None:
        started = time.monotonic()
        self._stopping = True
        assert self._webhook_server is not None
        self._webhook_server.should_exit = True
        await webhook_done.wait()  # in-flight requests have their answers (and commits)
        self.inbox.close()
        await inbox_done.wait()
        await self._process_all()
        await self._collect_metrics()
        remaining = max(0.0, self.settings.shutdown_timeout - (time.monotonic() - started))
        self.sender.notify()
        with anyio.move_on_after(remaining):
            while True:
                stats = await anyio.to_thread.run_sync(self._spool_stats)
                if not sum(stats.values()):
                    break
                await anyio.sleep(0.05)
        left = await anyio.to_thread.run_sync(self._spool_stats)
        if sum(left.values()):
            log.warning(
                "stopping with %d trace and %d metrics request(s) unsent; they are kept in %s and "
                "sent at the next start",
                left["traces"],
                left["metrics"],
                self.settings.state_dir,
            )
        else:
            log.info("stopped: everything received was exported")

    def _spool_stats(self) -> dict[str, int]:
        with self.state.reading() as conn:
            return self.spool.stats(conn).depth

    def close(self) -> None:
        self.telemetry.shutdown()
        self.transport.close()
        for db in (self.state, self._inbox_db, self._inbox_reader):
            db.close()

    # --- loops -----------------------------------------------------------------------------
    async def _process_loop(self) -> None:
        next_sweep = anyio.current_time() + SWEEP_INTERVAL_S
        while True:
            await self._process_all()
            if anyio.current_time() >= next_sweep:
                self._account(await anyio.to_thread.run_sync(self.processor.sweep))
                next_sweep = anyio.current_time() + SWEEP_INTERVAL_S
            self._inbox_wake = anyio.Event()
            with anyio.move_on_after(1.0):
                await self._inbox_wake.wait()

    async def _process_all(self) -> None:
        while True:
            result = await anyio.to_thread.run_sync(self.processor.process_batch)
            self._account(result)
            if not result.events:
                return

    def _account(self, result: BatchResult) -> None:
        self.telemetry.record(result.points)
        for event_type, count in result.events_by_type.items():
            self.metrics.events.add(count, {c.SELF_ATTR_TYPE: event_type})
        if result.spans:
            self.metrics.spans.add(result.spans)
            self.sender.notify()
        if result.failed_events:
            self.metrics.processing_errors.add(result.failed_events)
        if result.late_log_items:
            self.metrics.late_log_items.add(result.late_log_items)
        for (signal_name, reason), (requests, items) in result.dropped.by.items():
            self.metrics.dropped.add(requests, {c.SELF_ATTR_SIGNAL: signal_name, c.SELF_ATTR_REASON: reason})
            log.error(
                "SPOOL CAP REACHED: dropped %d unsent %s request(s) (%d item(s)) because of their %s; "
                "raise OTELBRIDGE_SPOOL_MAX_%s or fix the backend",
                requests,
                signal_name,
                items,
                reason,
                "BYTES" if reason == "size" else "AGE",
            )

    async def _metrics_loop(self) -> None:
        interval = interval_from_env()
        while True:
            await anyio.sleep(interval)
            await self._collect_metrics()

    async def _collect_metrics(self) -> None:
        through = self.telemetry.recorded_through
        collected = self.telemetry.collect_otlp()
        if collected is None:
            return
        body, items = collected
        epoch = self.telemetry.epoch
        cumulative = self.telemetry.temporality == "cumulative"

        def spool_it() -> None:
            now = time.time_ns()
            with self.state.transaction() as conn:
                newest = self.spool.add(conn, "metrics", body, items, now, epoch=epoch)
                if cumulative:
                    self.spool.supersede_metrics(conn, epoch, newest)
                conn.execute("DELETE FROM points WHERE id <= ?", (through,))

        await anyio.to_thread.run_sync(spool_it)
        self.sender.notify()

    async def _housekeeping_loop(self) -> None:
        while True:
            await anyio.to_thread.run_sync(self._refresh_gauges)
            await anyio.sleep(HOUSEKEEPING_INTERVAL_S)

    def _refresh_gauges(self) -> None:
        gauges = self.telemetry.gauges
        with self.state.reading() as conn:
            stats = self.spool.stats(conn)
            gauges.open_calls = int(
                conn.execute("SELECT COUNT(*) FROM calls WHERE closed_ns IS NULL").fetchone()[0]
            )
        gauges.spool_depth = dict(stats.depth)
        gauges.spool_bytes = stats.bytes
        gauges.spool_oldest_age_s = (
            0.0 if stats.oldest_ns is None else max(0.0, (time.time_ns() - stats.oldest_ns) / 1e9)
        )
        gauges.inbox_depth = inbox_depth(self._inbox_reader, self.processor.watermark())

    # --- admin --------------------------------------------------------------------------------
    async def _metrics_text(self) -> bytes:
        return await anyio.to_thread.run_sync(self.telemetry.prometheus_text)

    async def readiness(self) -> Readiness:
        checks: dict[str, dict[str, Any]] = {}

        def probe() -> str | None:
            try:
                self.inbox.probe()
                with self.state.transaction():
                    pass
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
            return None

        with anyio.move_on_after(2.0) as scope:
            problem = await anyio.to_thread.run_sync(probe, abandon_on_cancel=True)
        if scope.cancelled_caught:
            problem = "a write transaction did not start within 2s"
        if problem is None and self.inbox.last_error:
            problem = self.inbox.last_error
        checks["state_store"] = {"ok": problem is None, "reason": problem or "writable"}
        now = time.time_ns()
        stalled = [sig for sig, st in self.sender.states.items() if now - st.heartbeat_ns > STUCK_AFTER_NS]
        delivery: dict[str, Any] = {
            "ok": not stalled,
            "reason": f"the {', '.join(stalled)} delivery loop has not run for 60s" if stalled else "running",
        }
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
        checks["shutdown"] = {"ok": not self._stopping, "reason": "stopping" if self._stopping else "running"}
        return Readiness(all(check["ok"] for check in checks.values()), checks)


async def _resilient(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run ``loop`` forever: an unexpected error (a full disk, a bug) is logged and the loop
    starts again a second later instead of taking the daemon down. Nothing is lost: every
    loop works from the durable state."""
    while True:
        try:
            await loop()
        except Exception:
            log.exception("the %s loop failed; restarting it in 1s", name)
            await anyio.sleep(1.0)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(settings: Settings, secrets: list[bytes]) -> None:
    daemon = Daemon(settings, secrets)
    try:
        await daemon.run()
    except BaseException:
        with contextlib.suppress(Exception):
            daemon.close()
        raise
