"""``otelbridge drain``: process and send what a stopped ``serve`` left in its SQLite state
directory, then exit — the step that moves an installation to PostgreSQL without losing what was
received but not yet exported (docs/postgres.md).

The volume is being retired, so a call still open in it is exported as it stands (root span
included), as ``serve`` does once a call has been silent for ``OTELBRIDGE_CALL_TIMEOUT``: nothing
else would ever export its root or the events it keeps. Its later webhooks, sent to the new
installation, export it again with the same span ids (docs/postgres.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TextIO

import anyio

from otelbridge.delivery.resource import service_resource
from otelbridge.pipeline import Pipeline
from otelbridge.settings import Settings
from otelbridge.store.sqlite import open_state_reader

EXIT_OK, EXIT_FAILED, EXIT_IN_USE = 0, 1, 3

#: the drain's ``call_timeout``: every open call is past it, whatever its age
RETIRING_CALL_TIMEOUT_S = 1e-9


async def run_drain(settings: Settings, stall_s: float, out: TextIO, err: TextIO) -> int:
    # the SQLite state whatever OTELBRIDGE_DATABASE_URL says: draining it is the point
    local = settings.model_copy(
        update={"database_url": None, "database_url_file": None, "call_timeout": RETIRING_CALL_TIMEOUT_S}
    )
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
            await pipeline.process_all()  # every stored webhook first: a call's end may be one
            closed = 0
            while swept := (await pipeline.sweep()).calls_closed:  # at most 500 a sweep
                closed += swept
            left = await pipeline.flush(stall_s)
            ahead = await anyio.to_thread.run_sync(_open_calls, where)
            tg.cancel_scope.cancel()
    finally:
        pipeline.close()
    failed = False
    if sum(left.values()):
        err.write(
            f"otelbridge drain: {left.get('traces', 0)} trace and {left.get('metrics', 0)} metrics "
            f"request(s) in {where} were not accepted by the backend within {stall_s:g}s of no progress. "
            "Fix: check the OTLP endpoint (otelbridge check), then run drain again; nothing is lost\n"
        )
        failed = True
    if ahead:
        count, latest_ns = ahead
        err.write(
            f"otelbridge drain: {count} call(s) in {where} are still open, not exported: their last "
            f"webhook is dated {max(0.0, (latest_ns - time.time_ns()) / 1e9):.0f}s after this host's "
            "clock (the serve that received it ran with a clock ahead of this one). Fix: set this "
            "host's clock right, or run drain again once that time has passed; nothing is lost\n"
        )
        failed = True
    if failed:
        return EXIT_FAILED
    out.write(
        f"otelbridge drain: {where} is empty: {backlog} stored webhook(s) processed, {closed} open "
        "call(s) exported as they stand, every export accepted\n"
    )
    return EXIT_OK


def _open_calls(state_dir: Path) -> tuple[int, int] | None:
    """The calls the drain could not export (how many, the latest last webhook), or None."""
    reader = open_state_reader(state_dir)
    try:
        with reader.db.reading() as conn:
            row = conn.execute(
                "SELECT COUNT(*), MAX(last_event_ns) FROM calls WHERE closed_ns IS NULL"
            ).fetchone()
    finally:
        reader.close()
    return (int(row[0]), int(row[1])) if row[0] else None
