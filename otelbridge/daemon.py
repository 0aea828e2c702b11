"""``otelbridge serve``: the webhook side, and the supervisor of the pipeline process.

    webhook listener ─► GroupCommitInbox (group commit, inbox.db) ─► 2xx
                              │ "w" on the pipeline's stdin
                              ▼
    pipeline process (otelbridge.pipeline): processor, senders, metrics, admin listener

This process does only what acknowledging a webhook needs, so that the export side's CPU work
(mapping, encoding, metrics) never competes with it for the GIL; everything here runs in one
anyio task group, the pipeline as a child process in it. Both listening sockets are bound
here (clear errors, and the admin socket is inherited by the pipeline). ``serve.lock`` keeps a
second daemon off the same state directory.

Shutdown (SIGTERM/SIGINT): stop taking webhooks (in-flight ones finish and are committed),
tell the pipeline ``stop`` — it processes the inbox, spools a last metrics collection and
sends until the spool is empty or ``shutdown_timeout`` passes — then exit. A pipeline that
dies is restarted after a second; ``kill -9`` of this process takes the pipeline down at once
(``PR_SET_PDEATHSIG``, see otelbridge.pipeline.main).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from otelbridge.coredumps import disable_core_dumps
from otelbridge.httplimits import HttpLimits, connection_cap, raise_fd_limit
from otelbridge.ingest.inbox import GroupCommitInbox
from otelbridge.ingest.receiver import DEFAULT_STORE_TIMEOUT_S, build_webhook_app
from otelbridge.settings import ENV_PREFIX, Settings
from otelbridge.store import (
    Engine,
    FreeSpace,
    Lease,
    open_engine,
)
from otelbridge.web import InUseError, StartupError, address, bind, quiet_server

log = logging.getLogger("otelbridge.daemon")

WEBHOOK_PATH = "/webhooks/cartesia"
REPORT_INTERVAL_S = 1.0
RESTART_DELAY_S = 1.0

__all__ = ["Daemon", "Endpoints", "StartupError", "serve"]


@dataclass(frozen=True, slots=True)
class Endpoints:
    webhook_url: str
    admin_url: str


def _lock_state_dir(engine: Engine, state_dir: Path) -> Lease | None:
    """One ``serve`` per state directory where the state is local; none with a shared database,
    where every replica receives."""
    if not engine.single_process:
        return None
    lease = engine.lease("serve")
    if not lease.acquire():
        raise InUseError(
            f"OTELBRIDGE_STATE_DIR={str(state_dir)!r} is in use by another otelbridge serve. "
            "Fix: stop it, or give each instance its own state directory"
        )
    return lease


class Daemon:
    def __init__(
        self,
        settings: Settings,
        secrets: list[bytes],
        api_key: str | None = None,
        database_url: str | None = None,
    ) -> None:
        self.settings = settings
        self._secrets = secrets
        self._api_key = api_key
        self._database_url = database_url
        engine = open_engine(settings.state_dir, database_url, role="receiver")
        self._lock = _lock_state_dir(engine, settings.state_dir)
        try:
            self._inbox_db = engine.inbox(receiving=True)
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise
        self._wake = anyio.Event()
        local = engine.single_process
        self.inbox = GroupCommitInbox(
            self._inbox_db,
            on_commit=self._on_commit,
            # the floor guards a local volume; a database server watches its own space
            free_space=FreeSpace(settings.state_dir, settings.min_free_bytes) if local else None,
        )
        self.counts: Counter[tuple[str, str]] = Counter()
        self._stop = anyio.Event()
        self._stopping = False
        self._pipeline: anyio.abc.Process | None = None
        self._stdin_lock = anyio.Lock()
        self.pipeline_starts = 0

    def _on_commit(self) -> None:
        self._wake.set()

    def _on_outcome(self, event_type: str, outcome: str) -> None:
        self.counts[(event_type, outcome)] += 1

    def request_stop(self) -> None:
        """Begin the graceful shutdown (what SIGTERM does); call from the daemon's event loop."""
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[Endpoints] = anyio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        webhook_sock, admin_sock = self._bind()
        endpoints = Endpoints(
            f"http://{address(webhook_sock)}{WEBHOOK_PATH}", f"http://{address(admin_sock)}"
        )
        app = build_webhook_app(
            inbox=self.inbox, secrets=self._secrets, max_body_bytes=s.max_body_bytes,
            on_outcome=self._on_outcome, path=WEBHOOK_PATH, store_timeout=DEFAULT_STORE_TIMEOUT_S,
        )  # fmt: skip
        fd_limit = raise_fd_limit()
        limits = HttpLimits(
            max_header_bytes=s.max_header_bytes, max_headers=s.max_headers, max_url_bytes=s.max_url_bytes,
            head_timeout=s.head_timeout, body_timeout=s.body_timeout, idle_timeout=s.idle_timeout,
            max_connections=connection_cap(s.max_connections, fd_limit),
            # a body past the limit is discarded up to twice the limit (at least 32 MiB: a 20 MB
            # upload by a client that writes before it reads), so its sender reads the 413
            drain_bytes=max(2 * s.max_body_bytes, 32 * 1024 * 1024),
            on_refusal=lambda outcome: self._on_outcome("unknown", outcome),
        )  # fmt: skip
        log.info("webhook listener: at most %d connections (OTELBRIDGE_MAX_CONNECTIONS=%d, "
                 "open-file limit %d)", limits.max_connections, s.max_connections, fd_limit)  # fmt: skip
        # A webhook in flight at a stop gets the receiver's own answer (a 503 past the store's
        # timeout), never uvicorn's cancellation: a text/plain 500 and a traceback.
        server = quiet_server(app, limits, graceful_shutdown_s=DEFAULT_STORE_TIMEOUT_S + 1)
        server_done, inbox_done, pipeline_done = anyio.Event(), anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:

            async def serve_webhooks() -> None:
                try:
                    await server.serve(sockets=[webhook_sock])
                finally:
                    server_done.set()

            async def run_inbox() -> None:
                try:
                    await self.inbox.run()
                finally:
                    inbox_done.set()

            async def supervise() -> None:
                try:
                    await self._supervise(admin_sock)
                finally:
                    pipeline_done.set()

            tg.start_soon(run_inbox)
            tg.start_soon(supervise)
            tg.start_soon(serve_webhooks)
            while not server.started:
                if server_done.is_set():
                    raise StartupError("the webhook listener stopped while starting; see the log above")
                await anyio.sleep(0.01)
            log.info("otelbridge serve: webhooks on %s, admin on %s, state in %s", endpoints.webhook_url,
                     endpoints.admin_url, s.state_dir.resolve())  # fmt: skip
            if not self._secrets:
                log.warning("webhook authentication is OFF (--allow-unauthenticated): anyone who can "
                            "reach %s can send events", endpoints.webhook_url)  # fmt: skip
            task_status.started(endpoints)
            if threading.current_thread() is threading.main_thread():
                tg.start_soon(self._watch_signals)
            await self._stop.wait()

            self._stopping = True
            server.should_exit = True
            await self._shutdown(server_done, inbox_done, pipeline_done)
            tg.cancel_scope.cancel()
        webhook_sock.close()
        admin_sock.close()
        self.close()

    def _bind(self) -> tuple[socket.socket, socket.socket]:
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
        return webhook_sock, admin_sock

    async def _shutdown(
        self, server_done: anyio.Event, inbox_done: anyio.Event, pipeline_done: anyio.Event
    ) -> None:
        await server_done.wait()  # in-flight requests have their answers (and commits)
        self.inbox.close()
        await inbox_done.wait()
        await self._tell("stop")
        with anyio.move_on_after(self.settings.shutdown_timeout + 10):
            await pipeline_done.wait()

    def close(self) -> None:
        self._inbox_db.close()
        if self._lock is not None:
            self._lock.release()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s received: stopping (draining for up to %.0fs)",
                         signal.Signals(signum).name, self.settings.shutdown_timeout)  # fmt: skip
                self._stop.set()
                return

    # --- the pipeline process ------------------------------------------------------------------
    def _config_line(self, admin_fd: int) -> bytes:
        settings = self.settings.model_dump(
            mode="json",
            exclude={
                "webhook_secret",
                "webhook_secret_file",
                "cartesia_api_key",
                "cartesia_api_key_file",
                "database_url",
                "database_url_file",
            },
        )
        settings["service_instance_id"] = self.settings.resolved_instance_id()
        config = {
            "settings": settings,
            "admin_fd": admin_fd,
            "api_key": self._api_key,
            "database_url": self._database_url,
        }
        # a private pipe: the key and the database's password are not in argv, nor in the
        # child's environment
        return json.dumps(config).encode() + b"\n"

    async def _supervise(self, admin_sock: socket.socket) -> None:
        while not self._stopping:
            self.pipeline_starts += 1
            code = await self._run_pipeline(admin_sock)
            if self._stopping:
                if code:
                    log.error("the pipeline process exited with status %s while stopping", code)
                return
            log.error(
                "the pipeline process exited with status %s; restarting it in %.0fs", code, RESTART_DELAY_S
            )
            await anyio.sleep(RESTART_DELAY_S)

    async def _run_pipeline(self, admin_sock: socket.socket) -> int | None:
        fd = admin_sock.fileno()
        os.set_inheritable(fd, True)
        process = await anyio.open_process(
            [sys.executable, "-m", "otelbridge.pipeline", str(os.getpid())],  # it checks its parent
            stdin=-1, stdout=None, stderr=None, pass_fds=(fd,), env=pipeline_environment(os.environ),
        )  # fmt: skip
        self._pipeline = process
        try:
            await self._tell_raw(self._config_line(fd))
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._report_loop)
                code = await process.wait()
                tg.cancel_scope.cancel()
            return code
        finally:
            self._pipeline = None
            if process.returncode is None:
                process.kill()
                with anyio.CancelScope(shield=True):
                    await process.wait()

    async def _report_loop(self) -> None:
        """Wakes for new inbox rows; every second: the webhook counts and health, and the
        processed inbox rows to delete in the next commit."""
        next_report = 0.0
        while True:
            with anyio.move_on_after(REPORT_INTERVAL_S):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = anyio.Event()
                await self._tell("w")
            if anyio.current_time() >= next_report:
                watermark = await anyio.to_thread.run_sync(self._inbox_db.processed_through)
                if watermark is not None:
                    self.inbox.trim_through(watermark)
                counts = [[t, o, n] for (t, o), n in self.counts.items()]
                await self._tell(f"c {json.dumps(counts)}")
                # read afresh each time, so that readiness recovers with no webhook coming
                inbox_error = await anyio.to_thread.run_sync(self.inbox.health)
                health = {"inbox_error": inbox_error, "stopping": self._stopping}
                await self._tell(f"h {json.dumps(health)}")
                next_report = anyio.current_time() + REPORT_INTERVAL_S

    async def _tell(self, line: str) -> None:
        await self._tell_raw(line.encode() + b"\n")

    async def _tell_raw(self, data: bytes) -> None:
        process = self._pipeline
        if process is None or process.stdin is None:
            return
        try:
            async with self._stdin_lock:
                await process.stdin.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the pipeline is gone; the supervisor restarts it


def pipeline_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The pipeline's environment: this one without any ``OTELBRIDGE_*`` variable. Its settings
    come as JSON on stdin, so it needs none of them, and they include the webhook secret and the
    API key (or the names of their files); the OTLP transport's ``OTEL_*`` variables, PATH,
    locale, proxies and CA bundles stay."""
    return {k: v for k, v in environ.items() if not k.upper().startswith(ENV_PREFIX)}


async def serve(
    settings: Settings, secrets: list[bytes], api_key: str | None = None, database_url: str | None = None
) -> None:
    disable_core_dumps()  # before the pipeline process starts: it inherits RLIMIT_CORE
    daemon = Daemon(settings, secrets, api_key, database_url)
    await daemon.run()
