"""``otelbridge drain``: process and send what a stopped ``serve`` left in its SQLite state
directory, then exit — the step that moves an installation to PostgreSQL without losing what was
received but not yet exported (docs/postgres.md)."""

from __future__ import annotations

from typing import TextIO

import anyio

from otelbridge.delivery.resource import service_resource
from otelbridge.pipeline import Pipeline
from otelbridge.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_IN_USE = 0, 1, 3


async def run_drain(settings: Settings, stall_s: float, out: TextIO, err: TextIO) -> int:
    # the SQLite state whatever OTELBRIDGE_DATABASE_URL says: draining it is the point
    local = settings.model_copy(update={"database_url": None, "database_url_file": None})
    where = local.state_dir.absolute()
    pipeline = Pipeline(local, service_resource(local), prometheus=False)  # no admin port: no /metrics
    try:
        if not await anyio.to_thread.run_sync(pipeline.lease.acquire, 0.0):
            err.write(
                f"otelbridge drain: {where} is in use by a running otelbridge serve (or backfill). "
                "Fix: stop it first (SIGTERM drains what it can), then run drain again\n"
            )
            return EXIT_IN_USE
        async with anyio.create_task_group() as tg:
            await pipeline.run_loops(tg)
            backlog = await anyio.to_thread.run_sync(pipeline.inbox_backlog)
            left = await pipeline.flush(stall_s)
            tg.cancel_scope.cancel()
    finally:
        pipeline.close()
    if sum(left.values()):
        err.write(
            f"otelbridge drain: {left.get('traces', 0)} trace and {left.get('metrics', 0)} metrics "
            f"request(s) in {where} were not accepted by the backend within {stall_s:g}s of no progress. "
            "Fix: check the OTLP endpoint (otelbridge check), then run drain again; nothing is lost\n"
        )
        return EXIT_FAILED
    out.write(
        f"otelbridge drain: {where} is empty: {backlog} stored webhook(s) processed, every export accepted\n"
    )
    return EXIT_OK
