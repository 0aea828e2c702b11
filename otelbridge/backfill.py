"""``otelbridge backfill``: a team's history from List Calls, once, into the same traces.

Pages stream one at a time (bounded memory; the next one is requested while one is stored),
with a cursor per agent and range saved after every page, so a rerun after Ctrl-C or a crash
resumes where it stopped and exports nothing twice (the ledger). When no ``otelbridge serve``
runs on the state directory, backfill runs the pipeline itself (processor and senders): each
page is processed at once, with no inbox round trip, and backfill waits for the export; when
one runs, backfill only stores the pages in ``inbox.db`` and the daemon exports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TextIO

import anyio

from otelbridge.cartesia.client import CartesiaAuthError, CartesiaClient, CartesiaError
from otelbridge.delivery.resource import service_resource
from otelbridge.ingest.poller import BackfillProgress, backfill_agent
from otelbridge.pipeline import Pipeline
from otelbridge.settings import Settings
from otelbridge.store import InboxStore, StateStore, open_engine

log = logging.getLogger("otelbridge.backfill")

EXIT_OK, EXIT_FAILED = 0, 1
#: the export wait gives up when the spool has not shrunk for this long
STALL_S = 60.0


class _Meter:
    """The progress line on stderr: rewritten in place on a terminal, a line every 5 s otherwise."""

    def __init__(self, err: TextIO, progress: BackfillProgress, client: CartesiaClient, agents: int) -> None:
        self.err, self.progress, self.client, self.agents = err, progress, client, agents
        self.tty = err.isatty()
        self._last = 0.0

    def line(self) -> str:
        p = self.progress
        return (
            f"backfill: {p.calls:,} calls ({p.rate():,.0f}/s), {p.pages:,} pages, "
            f"{self.client.stats.retries:,} retries, agents {p.agents_done}/{self.agents}"
        )

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if force or now - self._last >= 0.2:
                self.err.write("\r" + self.line().ljust(80))
                self.err.flush()
                self._last = now
        elif force or now - self._last >= 5.0:
            self.err.write(self.line() + "\n")
            self.err.flush()
            self._last = now

    def done(self) -> None:
        self.tick(force=True)
        if self.tty:
            self.err.write("\n")


async def run_backfill(
    settings: Settings,
    api_key: str,
    *,
    agent_ids: Sequence[str],
    since_ns: int | None,
    until_ns: int | None,
    dry_run: bool,
    out: TextIO,
    err: TextIO,
) -> int:
    async with CartesiaClient(
        api_key=api_key, base_url=settings.cartesia_base_url, version=settings.cartesia_version
    ) as client:
        try:
            agents = list(agent_ids) or settings.agent_id_list()
            if not agents:
                agents = [
                    str(a["id"]) for a in await client.list_agents() if isinstance(a, dict) and a.get("id")
                ]
        except CartesiaError as exc:
            return _failed(err, exc)
        progress = BackfillProgress()
        meter = _Meter(err, progress, client, len(agents))
        database_url = settings.database_url_value()
        engine = open_engine(settings.state_dir, database_url, role="backfill")
        state, inbox = engine.state(), engine.inbox()
        pipeline: Pipeline | None = None
        try:
            if not dry_run:
                # this process exports only when no serve (no leader) runs the pipeline
                # no admin port here: no /metrics series (a second aggregation of every point)
                pipeline = Pipeline(
                    settings, service_resource(settings), database_url=database_url, prometheus=False
                )
                if not await anyio.to_thread.run_sync(pipeline.lease.acquire, 0.0):
                    pipeline.close()
                    pipeline = None
            return await _run(
                settings, client, state, inbox, agents, since_ns, until_ns, dry_run,
                pipeline, progress, meter, out, err,
            )  # fmt: skip
        finally:
            state.close()
            inbox.close()


async def _run(
    settings: Settings,
    client: CartesiaClient,
    state: StateStore,
    inbox: InboxStore,
    agents: list[str],
    since_ns: int | None,
    until_ns: int | None,
    dry_run: bool,
    pipeline: Pipeline | None,
    progress: BackfillProgress,
    meter: _Meter,
    out: TextIO,
    err: TextIO,
) -> int:
    export = pipeline is not None
    failure: CartesiaError | None = None
    left: dict[str, int] = {}
    try:
        async with anyio.create_task_group() as tg:
            if pipeline is not None:
                await pipeline.run_loops(tg)

            def on_page() -> None:
                meter.tick()
                if pipeline is not None:
                    pipeline.poke()

            for agent_id in agents:
                try:
                    await backfill_agent(
                        client, state, inbox, agent_id, since_ns=since_ns, until_ns=until_ns, dry_run=dry_run,
                        progress=progress, on_page=on_page,
                        store=pipeline.take_calls if pipeline is not None else None,
                    )  # fmt: skip
                except CartesiaError as exc:
                    failure = exc
                    break
            meter.done()
            if pipeline is not None:
                left = await pipeline.flush(STALL_S)
            tg.cancel_scope.cancel()
    finally:
        if pipeline is not None:
            pipeline.close()
    return _summary(progress, failure, dry_run, export, left, settings, out, err)


def _failed(err: TextIO, exc: CartesiaError) -> int:
    if isinstance(exc, CartesiaAuthError):
        err.write(
            f"otelbridge backfill: the Cartesia API refused the key ({exc}). "
            "Fix: check OTELBRIDGE_CARTESIA_API_KEY and the agent's access\n"
        )
    else:
        err.write(f"otelbridge backfill: the Cartesia API could not be reached or kept failing: {exc}\n")
    return EXIT_FAILED


def _summary(
    progress: BackfillProgress,
    failure: CartesiaError | None,
    dry_run: bool,
    export: bool,
    left: dict[str, int],
    settings: Settings,
    out: TextIO,
    err: TextIO,
) -> int:
    verb = "found" if dry_run else "stored"
    out.write(
        f"otelbridge backfill: {progress.calls:,} calls {verb} in {progress.pages:,} pages "
        f"({progress.rate():,.0f} calls/s); {progress.invalid} invalid skipped; "
        f"{progress.agents_done} agent(s) complete\n"
    )
    if not dry_run and not export:
        out.write(
            "otelbridge backfill: a running otelbridge serve owns the state directory and exports them\n"
        )
    if failure is not None:
        _failed(err, failure)
        err.write("otelbridge backfill: run the same command again to resume where it stopped\n")
        return EXIT_FAILED
    if sum(left.values()):
        err.write(
            f"otelbridge backfill: {left.get('traces', 0)} trace and {left.get('metrics', 0)} metrics "
            f"request(s) not yet accepted by the backend; they are kept in {settings.state_dir} and sent "
            "by the next otelbridge serve or backfill\n"
        )
        return EXIT_FAILED
    return EXIT_OK
