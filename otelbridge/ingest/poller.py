"""List Calls as the second path into the same traces: the poller and the backfill.

Both turn API calls into **synthetic webhook events** — a final call becomes a
``call_completed`` (``call_failed``) event carrying the call object, an unfinished one a
``call_started`` — so that the one processor, with its ledger of exported span ids, decides
what is new. A call whose spans went out through webhooks gets only what is missing; a call
the poller exported adds nothing when its webhooks arrive later. Synthetic events carry
``"source": "poll"`` or ``"source": "backfill"``. Where a page goes is a :data:`StoreCalls`:
the lease holder processes it at once (:func:`take_calls`); a backfill beside a running
``serve`` appends it to ``inbox.db`` (:func:`inbox_store`).

Incremental polling (:class:`Poller`, inside ``otelbridge serve``): per agent, list newest first
(``expand=transcript&limit=100``), follow ``next_page`` as ``starting_after`` until the call
that was newest at the last complete poll (the persisted watermark) — or a call that started
before it, should that one have vanished. With nothing new this is one request per agent per
interval. Unfinished calls are remembered in ``running_calls`` and re-read with
``GET /agents/calls/{id}`` each interval until final, or given up after
``running_call_give_up`` seconds. 401/403 stop polling that agent with the reason in the log and
in ``/readyz``.

Backfill (:func:`backfill`): the same pages, bounded by ``--since``/``--until``, with a cursor
per agent and range in ``state.db`` so that a rerun after Ctrl-C or a crash resumes where it
stopped; exports nothing twice (the ledger).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from pydantic import ValidationError

from otelbridge.cartesia.client import CallsPage, CartesiaAuthError, CartesiaClient, CartesiaError
from otelbridge.cartesia.errors import describe_validation_error
from otelbridge.cartesia.models import parse_call, parse_evaluation, timestamp_ns
from otelbridge.cartesia.webhooks import synthetic_body, synthetic_event
from otelbridge.ingest.processor import EVALUATION_EVENT, POLL, BatchResult, ListedCall, Processor
from otelbridge.store import BackfillCursor, InboxStore, NewRow, RunningCall, StateStore

log = logging.getLogger("otelbridge.poller")

PAGE_LIMIT = 100
EVALUATIONS_SINCE = "evaluations_since"


@dataclass(slots=True)
class AgentStatus:
    last_ok_ns: int | None = None
    last_error: str | None = None
    stopped: str | None = None  # why polling this agent stopped (401/403)
    calls: int = 0


@dataclass(slots=True)
class Stored:
    """What one page of calls became."""

    calls: int = 0
    final: int = 0
    running: int = 0
    invalid: int = 0
    oldest_start_ns: int | None = None

    def add(self, other: Stored) -> None:
        self.calls += other.calls
        self.final += other.final
        self.running += other.running
        self.invalid += other.invalid
        self.started_at(other.oldest_start_ns)

    def started_at(self, start_ns: int | None) -> None:
        """Note a call's start time (None: unknown)."""
        if start_ns is not None:
            self.oldest_start_ns = min(self.oldest_start_ns or start_ns, start_ns)


#: stores one page of listed calls — ``(raws, source, remember_running, now_ns) -> Stored`` —
#: into the inbox (:func:`inbox_store`) or, where this process holds the pipeline lease,
#: straight through the processor (``Pipeline.take_calls``): validated once, no inbox round trip
StoreCalls = Callable[[Sequence[dict[str, Any]], str, bool, int], Awaitable[Stored]]


def validate_calls(raws: Sequence[dict[str, Any]], source: str) -> tuple[list[ListedCall], Stored]:
    """The valid calls of a page, and its counts. An invalid call is logged (naming the field)
    and skipped."""
    stored = Stored()
    valid: list[ListedCall] = []
    for raw in raws:
        try:
            call = parse_call(raw)
        except ValidationError as exc:
            stored.invalid += 1
            call_id = raw.get("id") if isinstance(raw, dict) else None
            log.warning("%s: call %s skipped: %s", source, call_id or "?", describe_validation_error(exc))
            continue
        valid.append((call, raw))
        stored.calls += 1
        stored.started_at(call.start_time)
        if call.is_final:
            stored.final += 1
        else:
            stored.running += 1
    return valid, stored


def store_calls(
    inbox: InboxStore,
    state: StateStore,
    raws: Sequence[dict[str, Any]],
    source: str,
    *,
    remember_running: bool = True,
    now_ns: int | None = None,
) -> Stored:
    """Validate the calls of a page and append them to the inbox (one transaction); remember the
    unfinished ones for re-reading."""
    now = time.time_ns() if now_ns is None else now_ns
    valid, stored = validate_calls(raws, source)
    rows: list[NewRow] = []
    for call, raw in valid:
        event = synthetic_event(call, source)
        rows.append((now, event.type, call.id, synthetic_body(event, raw)))
    if rows:
        inbox.append(rows)
    running = running_calls(valid, now) if remember_running else []
    if running:
        with state.transaction() as tx:
            tx.remember_running(running)
    return stored


def running_calls(valid: Sequence[ListedCall], now_ns: int) -> list[RunningCall]:
    """The unfinished calls of a page, to re-read until final."""
    return [RunningCall(call.id, call.agent_id, now_ns) for call, _ in valid if not call.is_final]


def take_calls(
    processor: Processor, raws: Sequence[dict[str, Any]], source: str, remember_running: bool, now_ns: int
) -> tuple[Stored, BatchResult]:
    """A page validated once and processed at once (:meth:`Processor.take_calls`), for the
    holder of the pipeline lease; its counts, and what processing made."""
    valid, stored = validate_calls(raws, source)
    running = running_calls(valid, now_ns) if remember_running else []
    return stored, processor.take_calls(valid, source, running, now_ns)


def inbox_store(inbox: InboxStore, state: StateStore) -> StoreCalls:
    """Pages stored into the inbox, for the processor of whoever holds the pipeline lease."""

    async def store(
        raws: Sequence[dict[str, Any]], source: str, remember_running: bool, now_ns: int
    ) -> Stored:
        return await anyio.to_thread.run_sync(
            functools.partial(
                store_calls, inbox, state, raws, source, remember_running=remember_running, now_ns=now_ns
            )
        )

    return store


def _start_ns(raw: dict[str, Any]) -> int | None:
    """A listed call's start time, read from that field alone: the whole call is validated
    once, when it is stored (validating it here too was a sixth of a backfill's CPU)."""
    value = raw.get("start_time")
    if value is None:
        return None
    try:
        return timestamp_ns(value)
    except ValueError:
        return None


class Poller:
    def __init__(
        self,
        client: CartesiaClient,
        state: StateStore,
        inbox: InboxStore,
        *,
        agent_ids: Sequence[str],
        interval_s: float,
        concurrency: int,
        refresh_s: float,
        give_up_ns: int,
        on_stored: Callable[[], None] = lambda: None,
        evaluations: bool = False,
        clock: Callable[[], int] = time.time_ns,
        store: StoreCalls | None = None,
    ) -> None:
        self._client, self._state, self._inbox = client, state, inbox
        self._store = store or inbox_store(inbox, state)
        self._configured = list(agent_ids)
        self._interval, self._concurrency, self._refresh_s = interval_s, concurrency, refresh_s
        self._give_up_ns = give_up_ns
        self._on_stored = on_stored
        self._clock = clock
        self._agents: list[str] = list(agent_ids)
        self._agents_at = 0.0
        self.statuses: dict[str, AgentStatus] = {}
        self.discovery_error: str | None = None
        self._evaluations = evaluations
        self.evaluations_error: str | None = None

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await anyio.sleep(self._interval)

    async def poll_once(self) -> None:
        agents = await self.agents()
        limiter = anyio.CapacityLimiter(self._concurrency)

        async def one(agent_id: str) -> None:
            async with limiter:
                await self.poll_agent(agent_id)

        async with anyio.create_task_group() as tg:
            for agent_id in agents:
                if self.statuses.setdefault(agent_id, AgentStatus()).stopped is None:
                    tg.start_soon(one, agent_id)
        await self.recheck_running()
        if self._evaluations:
            await self.poll_evaluations()

    async def agents(self) -> list[str]:
        if self._configured:
            return self._configured
        if not self._agents or anyio.current_time() - self._agents_at >= self._refresh_s:
            try:
                summaries = await self._client.list_agents()
            except CartesiaError as exc:
                self.discovery_error = f"GET /agents: {exc}"
                log.error("agent discovery failed: %s", exc)
                return self._agents
            self.discovery_error = None
            found = [str(a["id"]) for a in summaries if isinstance(a, dict) and a.get("id")]
            if found != self._agents:
                log.info("polling %d agent(s): %s", len(found), ", ".join(found))
            self._agents, self._agents_at = found, anyio.current_time()
        return self._agents

    async def poll_agent(self, agent_id: str) -> int:
        """Page from the newest call back to the watermark; store every new call. The new
        watermark is saved only once the whole range is stored."""
        status = self.statuses.setdefault(agent_id, AgentStatus())
        wm_id, wm_start = await anyio.to_thread.run_sync(self._watermark, agent_id)
        cursor: str | None = None
        head: dict[str, Any] | None = None
        total = 0
        try:
            while True:
                page: CallsPage = await self._client.list_calls(
                    agent_id, limit=PAGE_LIMIT, starting_after=cursor
                )
                if head is None and page.calls:
                    head = page.calls[0]
                fresh, reached = [], False
                for raw in page.calls:
                    start = _start_ns(raw)
                    if _reached(raw, start, wm_id, wm_start):
                        reached = True
                        break
                    fresh.append(raw)
                if fresh:
                    stored = await self._store(fresh, POLL, True, self._clock())
                    total += stored.calls
                    self._on_stored()
                if reached or page.next_page is None or not page.calls:
                    break
                cursor = page.next_page
        except CartesiaAuthError as exc:
            status.stopped = (
                f"{exc} — polling of this agent stopped; fix the API key or its access and restart"
            )
            log.error("agent %s: %s", agent_id, status.stopped)
            return total
        except CartesiaError as exc:
            status.last_error = str(exc)
            log.warning("agent %s: polling failed, retried at the next interval: %s", agent_id, exc)
            return total
        if head is not None:
            await anyio.to_thread.run_sync(self._save_watermark, agent_id, head)
        status.last_ok_ns, status.last_error = self._clock(), None
        status.calls += total
        if total:
            log.info("agent %s: %d new call(s) from List Calls", agent_id, total)
        return total

    async def poll_evaluations(self) -> int:
        """LLM-judge results created since the last poll (a watermark in ``state.db``; results
        at the watermark itself come again and are dropped by the ledger)."""
        since = await anyio.to_thread.run_sync(self._meta, EVALUATIONS_SINCE)
        try:
            results = await self._client.metric_results(start_date=since)
        except CartesiaError as exc:
            self.evaluations_error = str(exc)
            log.warning("evaluations: reading results failed, retried at the next interval: %s", exc)
            return 0
        self.evaluations_error = None
        rows: list[NewRow] = []
        newest: tuple[int, str] | None = None
        now = self._clock()
        for raw in results:
            try:
                result = parse_evaluation(raw)
            except ValidationError as exc:
                log.warning("evaluations: result skipped: %s", describe_validation_error(exc))
                continue
            kept = {k: v for k, v in raw.items() if k != "transcript"}
            event = {"type": EVALUATION_EVENT, "call_id": result.call_id, "agent_id": result.agent_id,
                     "evaluation": kept}  # fmt: skip
            rows.append((now, EVALUATION_EVENT, result.call_id, json.dumps(event).encode()))
            if newest is None or result.created_at > newest[0]:
                newest = (result.created_at, str(raw.get("createdAt")))

        def store() -> None:
            if rows:
                self._inbox.append(rows)
            if newest is not None:
                with self._state.transaction() as tx:
                    tx.set_meta(EVALUATIONS_SINCE, newest[1])

        await anyio.to_thread.run_sync(store)
        if rows:
            self._on_stored()
        return len(rows)

    def _meta(self, key: str) -> str | None:
        with self._state.reading() as tx:
            return tx.get_meta(key)

    async def recheck_running(self) -> None:
        rows = await anyio.to_thread.run_sync(self._running)
        now = self._clock()
        for call_id, agent_id, first_seen in rows:
            if self.statuses.get(agent_id, AgentStatus()).stopped:
                continue
            if now - first_seen > self._give_up_ns:
                log.warning("call %s: still not final after %.0fs; no longer re-read", call_id,
                            self._give_up_ns / 1e9)  # fmt: skip
                await anyio.to_thread.run_sync(self._forget_running, call_id)
                continue
            try:
                raw = await self._client.get_call(call_id)
            except CartesiaAuthError as exc:
                self.statuses.setdefault(agent_id, AgentStatus()).stopped = str(exc)
                log.error("agent %s: %s — polling of this agent stopped", agent_id, exc)
                continue
            except CartesiaError as exc:
                log.warning("call %s: re-read failed, retried at the next interval: %s", call_id, exc)
                continue
            try:
                final = parse_call(raw).is_final
            except ValidationError as exc:
                log.warning("call %s: re-read answer skipped: %s", call_id, describe_validation_error(exc))
                continue
            if final:
                await self._store([raw], POLL, False, now)
                await anyio.to_thread.run_sync(self._forget_running, call_id)
                self._on_stored()

    # --- state ---------------------------------------------------------------------------------
    def _watermark(self, agent_id: str) -> tuple[str | None, int | None]:
        with self._state.reading() as tx:
            mark = tx.poll_watermark(agent_id)
        return mark.call_id, mark.start_ns

    def _save_watermark(self, agent_id: str, head: dict[str, Any]) -> None:
        with self._state.transaction() as tx:
            tx.save_poll_watermark(agent_id, str(head.get("id")), _start_ns(head), self._clock())

    def _running(self) -> list[tuple[str, str, int]]:
        with self._state.reading() as tx:
            return [(r.call_id, r.agent_id, r.first_seen_ns) for r in tx.running_calls()]

    def _forget_running(self, call_id: str) -> None:
        with self._state.transaction() as tx:
            tx.forget_running(call_id)


# --- backfill ------------------------------------------------------------------------------------
@dataclass(slots=True)
class BackfillProgress:
    calls: int = 0
    pages: int = 0
    invalid: int = 0
    skipped_newer: int = 0
    agents_done: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.calls / elapsed if elapsed > 0 else 0.0


async def backfill_agent(
    client: CartesiaClient,
    state: StateStore,
    inbox: InboxStore,
    agent_id: str,
    *,
    since_ns: int | None,
    until_ns: int | None,
    dry_run: bool,
    progress: BackfillProgress,
    on_page: Callable[[], None] = lambda: None,
    store: StoreCalls | None = None,
) -> None:
    """Page through one agent's calls (newest first) from the saved cursor; store the calls in
    [since, until); save the cursor after each stored page.

    A finished range with no ``until`` is caught up when run again: from the newest call back
    to the one that was newest when the range was last finished (or one that started before
    it, should that one have vanished), which then becomes the new mark. An interrupted
    catch-up starts again from the top; the ledger drops what comes twice."""
    span = f"{since_ns or ''}..{until_ns or ''}"
    store = store or inbox_store(inbox, state)
    saved = await anyio.to_thread.run_sync(_backfill_cursor, state, agent_id, span)
    cursor, catch_up = saved.cursor, False
    if dry_run:
        cursor = None  # a dry run counts the whole range and saves nothing
    elif saved.done:
        if until_ns is not None or saved.head_id is None:
            progress.agents_done += 1
            return
        cursor, catch_up = None, True
    head: dict[str, Any] | None = None  # the newest call when this pass began

    async def pages(tg: anyio.abc.TaskGroup) -> None:
        nonlocal cursor, head
        page = await client.list_calls(agent_id, limit=PAGE_LIMIT, starting_after=cursor)
        while True:
            progress.pages += 1
            if cursor is None and head is None and page.calls:
                head = page.calls[0]
            keep, older = _in_range(page, saved if catch_up else None, since_ns, until_ns, progress)
            finished = older or page.next_page is None or not page.calls
            # the next page is requested while this one is stored (the API's latency overlaps
            # the processing); it is only used once this one's cursor is saved
            following = None if finished else _Request(tg, client, agent_id, page.next_page)
            if dry_run:
                progress.calls += len(keep)
            else:
                stored = await store(keep, "backfill", True, time.time_ns())
                progress.calls += stored.calls
                progress.invalid += stored.invalid
                save = functools.partial(
                    _save_backfill, state, agent_id, span,
                    cursor=None if catch_up else page.next_page,
                    done=finished or catch_up,
                    calls=stored.calls,
                    head=head,
                    new_mark=catch_up and finished,
                )  # fmt: skip
                await anyio.to_thread.run_sync(save)
            on_page()
            if following is None:
                progress.agents_done += 1
                return
            cursor = page.next_page
            page = await following.result()

    # a failure (the API's, the store's) is raised as itself, not in an exception group
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        try:
            await pages(tg)
        except Exception as exc:
            failure = exc
            tg.cancel_scope.cancel()  # the next page's request, if one is under way
    if failure is not None:
        raise failure


def _in_range(
    page: CallsPage,
    mark: BackfillCursor | None,
    since_ns: int | None,
    until_ns: int | None,
    progress: BackfillProgress,
) -> tuple[list[dict[str, Any]], bool]:
    """The calls of ``page`` in [since, until) and newer than a catch-up's ``mark``, and whether
    the range ended on this page (a call older than it)."""
    keep: list[dict[str, Any]] = []
    for raw in page.calls:
        start = _start_ns(raw)
        if mark is not None and _reached(raw, start, mark.head_id, mark.head_start_ns):
            return keep, True
        if until_ns is not None and start is not None and start >= until_ns:
            progress.skipped_newer += 1
            continue
        if since_ns is not None and start is not None and start < since_ns:
            return keep, True
        keep.append(raw)
    return keep, False


class _Request:
    """One List Calls request under way in ``tg``; :meth:`result` waits for it (its
    :class:`CartesiaError` is raised there, not in the task group)."""

    def __init__(
        self, tg: anyio.abc.TaskGroup, client: CartesiaClient, agent_id: str, cursor: str | None
    ) -> None:
        self._done = anyio.Event()
        self._page: CallsPage | None = None
        self._error: CartesiaError | None = None
        tg.start_soon(self._fetch, client, agent_id, cursor)

    async def _fetch(self, client: CartesiaClient, agent_id: str, cursor: str | None) -> None:
        try:
            self._page = await client.list_calls(agent_id, limit=PAGE_LIMIT, starting_after=cursor)
        except CartesiaError as exc:
            self._error = exc
        finally:
            self._done.set()

    async def result(self) -> CallsPage:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._page is not None
        return self._page


def _reached(raw: dict[str, Any], start: int | None, mark_id: str | None, mark_start_ns: int | None) -> bool:
    """True for the mark call, or a call that started before it (the mark may have vanished)."""
    if mark_id is not None and raw.get("id") == mark_id:
        return True
    return mark_start_ns is not None and start is not None and start < mark_start_ns


def _backfill_cursor(state: StateStore, agent_id: str, span: str) -> BackfillCursor:
    with state.reading() as tx:
        return tx.backfill_cursor(agent_id, span)


def _save_backfill(
    state: StateStore,
    agent_id: str,
    span: str,
    *,
    cursor: str | None,
    done: bool,
    calls: int,
    head: dict[str, Any] | None,
    new_mark: bool,
) -> None:
    """Save the cursor after a stored page. The mark (the newest call when the range's first
    pass began) is set once; a finished catch-up (``new_mark``) moves it to its own newest."""
    head_id = str(head["id"]) if head is not None and head.get("id") else None
    head_start = _start_ns(head) if head is not None else None
    with state.transaction() as tx:
        tx.save_backfill(
            agent_id, span, cursor=cursor, done=done, calls=calls,
            head_id=head_id, head_start_ns=head_start, new_mark=new_mark,
        )  # fmt: skip
