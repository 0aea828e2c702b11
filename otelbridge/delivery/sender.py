"""Spool -> backend: one loop per signal, oldest request first, one request in flight.

* 2xx: the request is deleted; ``partial_success`` rejections are counted and logged.
* retryable (429, 408, 5xx, connection errors, timeouts; gRPC UNAVAILABLE & co.): the whole
  signal backs off — ``Retry-After`` when the backend gives one (capped at 15 minutes), else
  exponential from ``retry_initial_backoff`` to ``retry_max_backoff`` with equal jitter — and
  the same request is tried again, so order is kept and nothing is skipped.
* a refused merged export (400, 413 and their gRPC twins: one bad request, or a backend with a
  smaller size limit) is split in halves, each sent alone and split again if refused, so that
  only the spooled requests the backend refuses on their own are dead-lettered; after a "too
  large" the signal merges at most half as much from then on.
* anything else (400, 401, 403, 404, 413…): the request moves to ``dead_letters`` with the
  status and the backend's message; counted and logged at ERROR.

A 2xx is recorded at once in the ack log (``acks.db``, its own file: no wait for ``state.db``'s
lock, which the processor holds through a batch), and the next request, read while the last
was in flight, goes out at once from the same worker thread (a relay: the event loop does the
bookkeeping of several exports after them); the acknowledged rows are deleted in batches,
when the spool runs dry or past :data:`SWEEP_BYTES` (the pipeline's: a quarter of the spool's
cap), :data:`SWEEP_ROWS` or :data:`SWEEP_S`, one commit (one fsync of ``state.db``) for many
exports. A start deletes the recorded ones unsent. A ``kill -9`` between the backend's 2xx and
that record re-sends one export (backends such as Tempo de-duplicate by span id;
docs/architecture.md, "Nothing lost, nothing doubled").
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import anyio
import anyio.abc

from otelbridge.delivery.environment import SIGNALS, Signal
from otelbridge.delivery.telemetry import SelfMetrics
from otelbridge.delivery.transport import SendResult, Transport
from otelbridge.logs import active_redactor
from otelbridge.mapping import conventions as c
from otelbridge.retry import backoff
from otelbridge.store import AckLog, SpoolEntry, StateStore, StoreWriteError

log = logging.getLogger("otelbridge.sender")

MAX_RETRY_AFTER_S = 900.0
#: trace requests spooled one after the other are sent together up to this many body bytes
#: (half gRPC's default 4 MiB message limit): a backlog drains in few large requests
MERGE_MAX_BYTES: dict[Signal, int] = {"traces": 2 * 1024 * 1024, "metrics": 0}
#: refusals a merged export may owe to one of its parts or to its size: its parts are tried alone
SPLIT_ON: frozenset[str] = frozenset({"400", "413", "grpc INVALID_ARGUMENT", "grpc RESOURCE_EXHAUSTED"})
#: ... of which these say the export was too large
TOO_LARGE: frozenset[str] = frozenset({"413", "grpc RESOURCE_EXHAUSTED"})
#: acknowledged spool rows are deleted when the spool runs dry, or once this many body bytes
#: (at most a quarter of the spool's cap: see Sender), rows or seconds wait: a delete
#: overwrites the bodies and commits with an fsync, which beside the exports of a backlog
#: slowed its delivery (docs/benchmarks.md)
SWEEP_BYTES = 256 * 1024 * 1024
SWEEP_ROWS = 4096
SWEEP_S = 5.0
#: a relay of acknowledged exports (Sender._relay_sends) hands back to the event loop after this
#: long, so that heartbeats, deletes and a stop are not kept waiting by a long backlog
RELAY_S = 0.25


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One export request: one spooled request, or several concatenated."""

    entries: list[SpoolEntry]

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self.entries]

    @property
    def body(self) -> bytes:
        if len(self.entries) == 1:
            return self.entries[0].body
        return b"".join(e.body for e in self.entries)

    @property
    def size(self) -> int:
        """The body's bytes, without joining the entries."""
        return sum(len(e.body) for e in self.entries)

    @property
    def items(self) -> int:
        return sum(e.items for e in self.entries)

    @property
    def call_ends(self) -> list[int]:
        return [end for e in self.entries for end in e.call_ends]

    def halves(self) -> list[Outgoing]:
        middle = len(self.entries) // 2
        return [Outgoing(self.entries[:middle]), Outgoing(self.entries[middle:])]


@dataclass(slots=True)
class SignalState:
    failures: int = 0
    last_error: str | None = None
    retry_at_ns: int = 0
    heartbeat_ns: int = 0
    sent: int = 0


class Sender:
    def __init__(
        self,
        state: StateStore,
        transport: Transport,
        metrics: SelfMetrics,
        *,
        initial_backoff_s: float,
        max_backoff_s: float,
        clock: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
        merge_max_bytes: dict[Signal, int] | None = None,
        reader: StateStore | None = None,
        acks: AckLog | None = None,
        recover: bool = True,
        sweep_max_bytes: int = SWEEP_BYTES,
    ) -> None:
        """``sweep_max_bytes``: acknowledged body bytes kept before a delete while the spool has
        more to send (the pipeline passes a quarter of the spool's cap, which they count in)."""
        self._db, self._transport, self._metrics = state, transport, metrics
        self._sweep_max_bytes = sweep_max_bytes
        self._acks = acks  # None: acknowledgements are not recorded (tests)
        #: acknowledged spool ids deleted since, forgotten in acks.db with the next record
        self._forget: list[int] = []
        self._reader = reader or state  # where the spool is read; writes go through ``state``
        self._initial, self._max = initial_backoff_s, max_backoff_s
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._merge = dict(merge_max_bytes if merge_max_bytes is not None else MERGE_MAX_BYTES)
        self._wake = {s: anyio.Event() for s in SIGNALS}
        self.states = {s: SignalState(heartbeat_ns=clock()) for s in SIGNALS}
        self._idle = dict.fromkeys(SIGNALS, True)
        #: the newest spool id acknowledged (or dead-lettered) per signal: the next take is past it
        self._sent_through = dict.fromkeys(SIGNALS, 0)
        #: acknowledged spool ids not yet deleted, per signal, and when the oldest was acknowledged
        self._unswept: dict[Signal, list[int]] = {s: [] for s in SIGNALS}
        self._unswept_since: dict[Signal, float] = dict.fromkeys(SIGNALS, 0.0)
        self._unswept_bytes: dict[Signal, int] = dict.fromkeys(SIGNALS, 0)
        self._sweeping = {s: anyio.Lock() for s in SIGNALS}
        #: acknowledged spool ids a sweep is deleting, per signal (still in the spool meanwhile)
        self._being_swept: dict[Signal, list[int]] = {s: [] for s in SIGNALS}
        #: spool ids acknowledged in the relay under way (not yet in ``_unswept``), per signal
        self._relayed: dict[Signal, list[int]] = {s: [] for s in SIGNALS}
        self.recovered = 0
        if recover:
            self.recover()

    def recover(self) -> int:
        """Spool rows acknowledged before a crash (listed in the ack log, not yet deleted from
        the spool) are deleted unsent; how many."""
        if self._acks is None:
            return 0
        acked = self._acks.acked()
        if not acked:
            return 0
        with self._db.transaction() as tx:
            deleted = tx.spool_delete_acked(acked)
        self._acks.forget(acked)
        if deleted:
            log.info("%d spooled request(s) acknowledged by the backend before the last stop: "
                     "deleted, not sent again", deleted)  # fmt: skip
        self.recovered += deleted
        return deleted

    def notify(self) -> None:
        for event in self._wake.values():
            event.set()

    def idle(self) -> bool:
        """True when no loop has anything to send (the spool was empty at its last look)."""
        return all(self._idle.values())

    def backoff(self, failures: int) -> float:
        return backoff(failures - 1, self._initial, self._max, self._rng)

    async def run(self, signal: Signal) -> None:
        # the next request is read in this thread while one is in flight (see _relay_sends)
        reads = ThreadPoolExecutor(1, thread_name_prefix=f"otelbridge-spool-{signal}")
        try:
            async with anyio.create_task_group() as sweeps:
                await self._run(signal, sweeps, reads)
        finally:
            reads.shutdown(wait=False, cancel_futures=True)

    async def _run(self, signal: Signal, sweeps: anyio.abc.TaskGroup, reads: Executor) -> None:
        state = self.states[signal]
        ahead: Outgoing | None = None  # the request after the last one sent, read while it was
        while True:
            state.heartbeat_ns = self._clock()
            # a fresh event before looking: a notify() during the look is not lost
            self._wake[signal] = anyio.Event()
            if self._sweep_due(signal) and not self._sweeping[signal].locked():
                sweeps.start_soon(self._sweep, signal)  # beside the next exports, not before them
            request = ahead or await anyio.to_thread.run_sync(self._next, signal, self._sent_through[signal])
            ahead = None
            if request is None:
                await self._sweep(signal)
                self._idle[signal] = True
                with anyio.move_on_after(1.0):
                    await self._wake[signal].wait()
                continue
            self._idle[signal] = False
            relayed, following = await self._relay(signal, request, reads)
            for request, result, answered_ns in relayed:
                self._metrics.export_attempts.add(
                    1, {c.SELF_ATTR_SIGNAL: signal, c.SELF_ATTR_OUTCOME: result.outcome}
                )
                if result.outcome == "ok":
                    self._ok(signal, request, result, answered_ns)
                    ahead = following
                elif result.outcome == "retry":
                    await self._retry(signal, request, result)
                elif len(request.entries) > 1 and result.status in SPLIT_ON:
                    await self._split(signal, request, result)
                else:
                    await self._reject(signal, request, result)

    async def _split(self, signal: Signal, request: Outgoing, result: SendResult) -> None:
        """A refused merged export: its halves go alone (split again while refused), so that a
        request that would pass alone is never dead-lettered with a bad neighbour."""
        state = self.states[signal]
        size = request.size
        if result.status in TOO_LARGE and self._merge.get(signal, 0) >= size // 2:
            self._merge[signal] = size // 2
            log.warning(
                "%s export of %d bytes refused as too large by %s (%s); sending it in parts, and "
                "merging at most %d bytes per export from now on",
                signal, size, self._transport.endpoint(signal), result.status, self._merge[signal],
            )  # fmt: skip
        else:
            log.warning(
                "%s export of %d merged requests refused by %s (%s: %s); sending them in parts",
                signal, len(request.entries), self._transport.endpoint(signal), result.status,
                result.message,
            )  # fmt: skip
        parts = request.halves()
        while parts:
            part = parts.pop(0)
            state.heartbeat_ns = self._clock()
            relayed, _ = await self._relay(signal, part, None)  # alone: no read-ahead, no relay
            _, answer, answered_ns = relayed[0]
            self._metrics.export_attempts.add(
                1, {c.SELF_ATTR_SIGNAL: signal, c.SELF_ATTR_OUTCOME: answer.outcome}
            )
            if answer.outcome == "ok":
                self._ok(signal, part, answer, answered_ns)
            elif answer.outcome == "retry":  # the rest waits, in order, for the backend
                await self._retry(signal, Outgoing([e for p in (part, *parts) for e in p.entries]), answer)
                return
            elif len(part.entries) > 1 and answer.status in SPLIT_ON:
                parts[:0] = part.halves()
            else:
                await self._reject(signal, part, answer)

    def _next(self, signal: Signal, after_id: int) -> Outgoing | None:
        with self._reader.reading() as tx:
            entries = tx.spool_take(signal, self._merge.get(signal, 0), after_id=after_id)
        return Outgoing(entries) if entries else None

    async def _relay(
        self, signal: Signal, request: Outgoing, reads: Executor | None
    ) -> tuple[list[tuple[Outgoing, SendResult, int]], Outgoing | None]:
        forget, self._forget = self._forget, []
        self._relayed[signal] = []  # the last relay's are in _unswept by now
        # no further than a delete of what it acknowledged would be due
        relayed, following = await anyio.to_thread.run_sync(
            self._relay_sends, signal, request, forget, reads, self._sweep_room(signal)
        )
        if relayed[0][1].outcome != "ok":
            self._forget[:0] = forget  # not recorded: forgotten with the next acknowledgement
        return relayed, following

    def _relay_sends(
        self,
        signal: Signal,
        request: Outgoing,
        forget: list[int],
        reads: Executor | None,
        room: tuple[int, int],
    ) -> tuple[list[tuple[Outgoing, SendResult, int]], Outgoing | None]:
        """Send ``request``, reading the one after it meanwhile (in ``reads``; None: send this one
        alone); while each is acknowledged (and recorded), send the next at once from this
        thread, for up to :data:`RELAY_S` and until ``room`` (acknowledged body bytes, rows) is
        used. Still one export in flight, but no hop to the event loop and back between two: the
        bookkeeping of what was sent (metrics, deletes) waits for the relay to end. Returns what
        was sent, with its answer and when that came, and the next request if the last was
        acknowledged."""
        relayed: list[tuple[Outgoing, SendResult, int]] = []
        until = time.monotonic() + RELAY_S
        room_bytes, room_rows = room
        while True:
            following = None if reads is None else reads.submit(self._next, signal, max(request.ids))
            result = self._send_and_record(signal, request, forget)
            forget = []
            relayed.append((request, result, self._clock()))
            if result.outcome == "ok":
                self._relayed[signal].extend(request.ids)
            if following is None:
                return relayed, None
            try:
                ahead = following.result()
            except Exception:  # the loop reads again, and meets the error itself
                return relayed, None
            if result.outcome != "ok":
                return relayed, None
            room_bytes -= request.size
            room_rows -= len(request.entries)
            if ahead is None or room_bytes <= 0 or room_rows <= 0 or time.monotonic() >= until:
                return relayed, ahead
            request = ahead

    def acknowledged_bytes(self) -> int:
        """Body bytes still in the spool that the backend has acknowledged (not yet deleted)."""
        return sum(self._unswept_bytes.values())

    def acknowledged_ids(self) -> list[int]:
        """Spool ids the backend has acknowledged that may still be in the spool (their delete
        not yet committed). Read from another thread: a snapshot, maybe missing the newest."""
        lists = [ids for s in SIGNALS for ids in (self._relayed[s], self._unswept[s], self._being_swept[s])]
        return [i for ids in lists for i in ids]

    def _sweep_room(self, signal: Signal) -> tuple[int, int]:
        """Acknowledged body bytes and rows still to come before a delete is due."""
        return self._sweep_max_bytes - self._unswept_bytes[signal], SWEEP_ROWS - len(self._unswept[signal])

    def _sweep_due(self, signal: Signal) -> bool:
        room_bytes, room_rows = self._sweep_room(signal)
        return bool(self._unswept[signal]) and (
            room_bytes <= 0 or room_rows <= 0 or anyio.current_time() - self._unswept_since[signal] >= SWEEP_S
        )

    async def _sweep(self, signal: Signal) -> None:
        """Delete the acknowledged rows of ``signal`` (one transaction for many exports; the
        rows are overwritten on disk, which is what makes it worth doing beside the exports)."""
        async with self._sweeping[signal]:
            ids, self._unswept[signal] = self._unswept[signal], []
            if not ids:
                return
            size, self._unswept_bytes[signal] = self._unswept_bytes[signal], 0
            self._being_swept[signal] = ids

            def delete() -> None:
                with self._db.transaction() as tx:
                    tx.spool_delete(ids)

            try:
                await anyio.to_thread.run_sync(delete)
            except BaseException:
                self._unswept[signal][:0] = ids  # deleted by a later sweep, or by recover()
                self._unswept_bytes[signal] += size
                raise
            finally:
                self._being_swept[signal] = []
            if self._acks is not None:
                self._forget += ids

    def _ok(self, signal: Signal, request: Outgoing, result: SendResult, answered_ns: int) -> None:
        if not self._unswept[signal]:
            self._unswept_since[signal] = anyio.current_time()
        self._unswept[signal] += request.ids
        self._unswept_bytes[signal] += request.size
        self._sent_through[signal] = max(self._sent_through[signal], *request.ids)
        state = self.states[signal]
        if state.failures:
            log.info("%s export recovered after %d failed attempt(s)", signal, state.failures)
        state.failures, state.last_error, state.retry_at_ns = 0, None, 0
        state.sent += 1
        for end_ns in request.call_ends:
            self._metrics.lag.record(max(0.0, (answered_ns - end_ns) / 1e9))
        if result.rejected:
            self._metrics.export_rejected.add(result.rejected, {c.SELF_ATTR_SIGNAL: signal})
            log.warning(
                "%s export: the backend rejected %d of %d item(s): %s",
                signal,
                result.rejected,
                request.items,
                result.partial_message or "no reason given",
            )
        elif result.partial_message:
            log.warning("%s export: backend warning: %s", signal, result.partial_message)

    def _send_and_record(self, signal: Signal, request: Outgoing, forget: list[int]) -> SendResult:
        """Send; on a 2xx, record it in acks.db in the same worker thread, before anything can
        wait: not for state.db's lock, nor for the event loop of a process that runs at the
        lowest CPU priority (under load, a hop back to it took tens of milliseconds)."""
        result = self._transport.send(signal, request.body)
        if result.outcome == "ok" and self._acks is not None:
            self._record_ack(request, forget)
        return result

    def _record_ack(self, request: Outgoing, forget: list[int]) -> None:
        assert self._acks is not None
        try:
            self._acks.record(request.entries, forget)
        except StoreWriteError as exc:  # the delete that follows is what matters; it may still work
            log.warning("cannot record an acknowledged export (%s); a crash before the spool's "
                        "delete would send it again", exc)  # fmt: skip

    async def _retry(self, signal: Signal, request: Outgoing, result: SendResult) -> None:
        state = self.states[signal]
        state.failures += 1
        state.last_error = f"{result.status}: {result.message}"
        # The server's Retry-After is a floor, not the whole wait (as the Collector's exporters
        # take it): a 0 or a date past would otherwise resend at once, again and again.
        delay = self.backoff(state.failures)
        if result.retry_after is not None:
            delay = max(delay, min(result.retry_after, MAX_RETRY_AFTER_S))
        state.retry_at_ns = self._clock() + int(delay * 1e9)

        def retried() -> None:
            with self._db.transaction() as tx:
                tx.spool_retried(request.ids, state.retry_at_ns)

        try:
            await anyio.to_thread.run_sync(retried)
        except StoreWriteError as exc:  # a full disk: the wait still holds, in memory
            log.warning("%s export: cannot record when to retry (%s); waiting anyway", signal, exc)
        level = logging.WARNING if state.failures == 1 or state.failures % 10 == 0 else logging.DEBUG
        log.log(
            level,
            "%s export to %s failed (%s: %s); attempt %d, retrying in %.1fs",
            signal,
            self._transport.endpoint(signal),
            result.status,
            result.message,
            state.failures,
            delay,
        )
        await self._back_off(signal, delay)

    async def _back_off(self, signal: Signal, delay: float) -> None:
        state = self.states[signal]
        deadline = anyio.current_time() + delay
        while anyio.current_time() < deadline:  # keep the heartbeat fresh while backing off
            state.heartbeat_ns = self._clock()
            await anyio.sleep(min(1.0, max(0.0, deadline - anyio.current_time())))

    async def _reject(self, signal: Signal, request: Outgoing, result: SendResult) -> None:
        # The backend's message may echo an OTLP header value (an API key): redacted as the log
        # is, before it is stored (the store keeps what it is given).
        reason = active_redactor()(result.message)

        def dead() -> None:
            with self._db.transaction() as tx:
                for one in request.entries:
                    tx.dead_letter(one, self._clock(), result.status, reason)

        try:
            await anyio.to_thread.run_sync(dead)
        except StoreWriteError as exc:
            # A full disk: the request stays in the spool, to be refused (and moved) again after
            # a backoff, not resent at once by a restarted loop every second.
            state = self.states[signal]
            state.failures += 1
            delay = self.backoff(state.failures)
            log.warning("%s export refused (%s), but cannot move it to dead letters (%s); trying "
                        "again in %.1fs", signal, result.status, exc, delay)  # fmt: skip
            await self._back_off(signal, delay)
            return
        self._metrics.dead_letters.add(len(request.entries), {c.SELF_ATTR_SIGNAL: signal})
        self.states[signal].last_error = f"{result.status}: {result.message}"
        log.error(
            "%s export to %s refused (%s: %s); %d item(s) moved to dead letters",
            signal,
            self._transport.endpoint(signal),
            result.status,
            result.message,
            request.items,
        )
