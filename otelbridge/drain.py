"""``otelbridge drain``: process and send what a stopped ``serve`` left in its SQLite state
directory, then exit — the step that moves an installation to PostgreSQL without losing what was
received but not yet exported (docs/postgres.md).

The volume is being retired, so a call still open in it is exported as it stands (root span
included), as ``serve`` does once a call has been silent for ``OTELBRIDGE_CALL_TIMEOUT``: nothing
else would ever export its root or the events it keeps. Its later webhooks, sent to the new
installation, export it again with the same span ids (docs/postgres.md).

It exits 0 only when nothing is left in the volume: requests the backend refused for good stay
in its ``dead_letters`` table, and are counted and summed up (status and reason, never their
bodies) with exit 1, so that nobody deletes the volume unaware."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import anyio

from otelbridge.delivery.resource import service_resource
from otelbridge.logs import active_redactor, escape_controls
from otelbridge.pipeline import Pipeline
from otelbridge.settings import Settings
from otelbridge.store.sqlite import open_state_reader

EXIT_OK, EXIT_FAILED, EXIT_IN_USE = 0, 1, 3

#: the kinds of dead letters (signal, status, reason) a drain names, the most frequent first
DEAD_LETTER_KINDS_SHOWN = 5
REASON_CHARS_SHOWN = 200


@dataclass(slots=True)
class DeadLetters:
    """The requests the backend refused for good, kept in ``dead_letters`` (never their bodies)."""

    requests: int = 0
    items: int = 0
    #: how many of them were refused during this drain
    recent: int = 0
    #: (signal, status, reason, requests), the most frequent first
    kinds: list[tuple[str, str, str, int]] = field(default_factory=list)

    def summary(self) -> str:
        # the backend's answer, which may echo a header value: redacted, on one line, short
        redact = active_redactor()
        shown = "; ".join(
            f'{signal} {status} "{escape_controls(redact(reason))[:REASON_CHARS_SHOWN]}" x{n}'
            for signal, status, reason, n in self.kinds[:DEAD_LETTER_KINDS_SHOWN]
        )
        more = len(self.kinds) - DEAD_LETTER_KINDS_SHOWN
        return shown + (f"; {more} other kind(s)" if more > 0 else "")


@dataclass(slots=True)
class Leftovers:
    """What a drain leaves in the volume."""

    #: calls still open (only those dated after this host's clock), and their latest webhook
    open_calls: int = 0
    latest_ns: int = 0
    dead: DeadLetters = field(default_factory=DeadLetters)


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
            started_ns = time.time_ns()
            await pipeline.run_loops(tg)
            backlog = await anyio.to_thread.run_sync(pipeline.inbox_backlog)
            await pipeline.process_all()  # every stored webhook first: a call's end may be one
            closed = 0
            while swept := (await pipeline.sweep(every_open_call=True)).calls_closed:  # 500 a sweep
                closed += swept
            left = await pipeline.flush(stall_s)
            leftovers = await anyio.to_thread.run_sync(_leftovers, where, started_ns)
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
    if leftovers.open_calls:
        ahead_s = max(0.0, (leftovers.latest_ns - time.time_ns()) / 1e9)
        err.write(
            f"otelbridge drain: {leftovers.open_calls} call(s) in {where} are still open, not exported: "
            f"their last webhook is dated {ahead_s:.0f}s after this host's clock (the serve that "
            "received it ran with a clock ahead of this one). Fix: set this host's clock right, or run "
            "drain again once that time has passed; nothing is lost\n"
        )
        failed = True
    dead = leftovers.dead
    if dead.requests:
        err.write(
            f"otelbridge drain: {dead.requests} request(s) ({dead.items} item(s)) were refused for good "
            f"by the backend ({dead.recent} during this drain) and are kept, not exported, in the "
            f"dead_letters table of {where / 'state.db'}: {dead.summary()}. Fix: correct what the "
            "backend refuses (the log has each refusal); no drain sends them again, so keep the volume "
            "while you need them\n"
        )
        failed = True
    if failed:
        return EXIT_FAILED
    out.write(
        f"otelbridge drain: {where} is empty: {backlog} stored webhook(s) processed, {closed} open "
        "call(s) exported as they stand, every export accepted\n"
    )
    return EXIT_OK


def _leftovers(state_dir: Path, since_ns: int) -> Leftovers:
    """What the volume still holds once drained; ``since_ns``: when the drain started."""
    left = Leftovers()
    reader = open_state_reader(state_dir)
    try:
        with reader.reading() as tx:
            left.open_calls, left.latest_ns = tx.open_calls_latest_event()
            kinds = tx.dead_letter_kinds(since_ns)
    finally:
        reader.close()
    dead = left.dead
    for signal, status, reason, requests, items, recent in kinds:
        dead.requests += requests
        dead.items += items
        dead.recent += recent
        dead.kinds.append((signal, status, reason, requests))
    return left
