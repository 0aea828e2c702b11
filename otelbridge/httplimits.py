"""Limits against abusive HTTP clients, as a thin layer over uvicorn's httptools protocol.

No maintained ASGI server answers its own refusals in our JSON shape or drains a body after an
early 413 (docs/notes/server-limits-research.md), so this subclass of uvicorn's ``HttpToolsProtocol``
(passed as ``uvicorn.Config(http=<class>)``) adds, while llhttp still does all the parsing:

- head bytes and header count (431), URL length (414);
- timeouts for the head, the body, and a connection that never sends a request (408 JSON
  where an answer is possible, else close);
- a connection cap (503 JSON, then close);
- for the admin port (``evict_idle``): past the cap, or past the per-client cap, the oldest idle
  connection (no request in the app) is closed to make room; with none idle, the connection is
  let into ``probe_reserve`` extra slots that answer only ``probe_paths`` (503 JSON for any
  other path); past those, 503 JSON. So idle sockets and slow /metrics clients never fail a
  liveness probe;
- after an answer that closes with the body unread (the receiver's early 413): read and
  discard the rest up to a bound, then close, so a client that writes first reads the 413;
- malformed HTTP (bad request line, duplicate Content-Length, CL+TE) answered 400 JSON.

It overrides uvicorn 0.55 internals (pinned; tests/test_http_limits.py checks they exist):
``connection_made``, ``data_received``, ``on_message_begin``, ``on_headers_complete``,
``on_message_complete``, ``connection_lost``, ``timeout_keep_alive_task``,
``timeout_keep_alive_handler``, ``_unset_keepalive_if_required``, ``cycle.response_started``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from otelbridge.ingest.receiver import _encode
from otelbridge.logs import CountedLog

logger = logging.getLogger("otelbridge.http")

SWEEP_EVERY: Final = 0.25  # timeouts fire up to this late
#: refusals: the first of each outcome at once, then one counted line a minute (logs.CountedLog)
REFUSED: Final = "webhook listener refused or closed connections: %s"
REFUSED_SUMMARY: Final = REFUSED % "%s" + ", %d more in the last %g s, the first from %s"
FD_RESERVE: Final = 64  # fds kept for the process itself: sockets, SQLite files and -wal, logs, pipes

_REASON: Final = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def _noop(outcome: str) -> None:
    pass


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_url_bytes: int = 8 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 15.0
    max_connections: int = 1000
    drain_bytes: int = 32 * 1024 * 1024
    drain_timeout: float = 5.0
    # admin port: evict idle connections past the caps; past them with none idle, up to
    # probe_reserve connections more, for probe_paths only; max_per_client 0: no per-client cap
    evict_idle: bool = False
    probe_reserve: int = 0
    probe_paths: frozenset[bytes] = frozenset()
    max_per_client: int = 0
    listener: str = "webhook"  # named in the refusal log line
    # called once per refusal with its outcome (the daemon counts it in otelbridge.webhooks)
    on_refusal: Callable[[str], None] = field(default=_noop, compare=False)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (no privilege needed); the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, want, exc)
    return soft


def connection_cap(setting: int, fd_soft_limit: int) -> int:
    """The cap kept below the fd limit, so accept() never fails silently with EMFILE."""
    return max(1, min(setting, fd_soft_limit - FD_RESERVE))


def error_response(status: int, code: str, message: str) -> bytes:
    body = _encode(code, message)  # type: ignore[arg-type,unused-ignore]  # the receiver's exact JSON
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    )
    return head % (status, _REASON[status], len(body)) + body


class _Reject(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _DrainingTransport:
    """What uvicorn's request cycle writes to: close() becomes 'drain, then close' while the
    request body is still coming."""

    def __init__(self, proto: LimitedHttpToolsProtocol, real: asyncio.Transport) -> None:
        self._proto, self._real = proto, real
        # bound once: no __getattr__ on the hot path
        self.write, self.writelines = real.write, real.writelines
        self.get_extra_info, self.pause_reading, self.resume_reading = (
            real.get_extra_info,
            real.pause_reading,
            real.resume_reading,
        )
        self.set_protocol, self.get_protocol = real.set_protocol, real.get_protocol
        self.is_reading, self.abort = real.is_reading, real.abort
        self.get_write_buffer_size = real.get_write_buffer_size

    def __getattr__(self, name: str) -> Any:  # anything else, off the hot path
        return getattr(self._real, name)

    def is_closing(self) -> bool:
        return self._proto._draining or self._real.is_closing()

    def close(self) -> None:
        p = self._proto
        if p._in_body and not p._draining and not self._real.is_closing():
            p._start_drain()
        elif not p._draining:
            self._real.close()


_order = itertools.count()  # connection age, for "the oldest idle one"


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[HttpLimits]
    _log: ClassVar[CountedLog]
    _refused: ClassVar[str]
    _sweep: ClassVar[asyncio.TimerHandle | None]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._real = transport  # uvloop's transport is no asyncio.Transport subclass: no isinstance
        self._deadline = 0.0
        self._why = ""
        self._in_body = self._draining = self._in_head = False
        self._drained = self._head_raw = self._chunk = 0
        self._probe_only = False
        super().connection_made(_DrainingTransport(self, transport))  # type: ignore[arg-type]
        if self.limits.evict_idle:
            if not self._admit():
                return
        elif len(self.connections) > self.limits.max_connections:
            self._refuse("unavailable", "too many connections; retry later")
            return
        # uvicorn arms its keep-alive timer only after a response: arm it from the start, so
        # a connection that never sends a request is closed too
        self.timeout_keep_alive_task = self.loop.call_later(
            self.limits.idle_timeout, self.timeout_keep_alive_handler
        )

    def data_received(self, data: bytes) -> None:
        if self._draining:
            self._drained += len(data)
            if self._drained > self.limits.drain_bytes:
                self._real.close()
                return
        self._chunk = len(data)
        try:
            self.parser.feed_data(data)
            if self._in_head:
                # httptools passes a header on only once it is complete, gluing its parts
                # meanwhile: bound an unfinished head by its raw bytes here
                self._head_raw += len(data)
                if self._head_raw > self.limits.max_header_bytes:
                    limit = self.limits.max_header_bytes
                    raise _Reject(431, "header_too_large", f"request head exceeds {limit} bytes")
            else:
                self._head_raw = 0
        except _Reject as exc:
            self._refuse(exc.code, exc.message, exc.status)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__cause__ or exc.__context__
            if not isinstance(cause, _Reject):
                raise
            self._refuse(cause.code, cause.message, cause.status)
        except httptools.HttpParserUpgrade:
            self._refuse("bad_request", "protocol upgrades are not supported", 400)
        except httptools.HttpParserError as exc:
            if self._draining:
                self._real.close()
            else:
                self._refuse("bad_request", f"malformed HTTP request: {exc}"[:200], 400)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._unset_keepalive_if_required()
        self._in_head = True
        self._arm(self.limits.head_timeout, "request head not received in time")

    def on_headers_complete(self) -> None:
        # uvicorn's on_url / on_header collected the head, bounded by the raw count in
        # data_received: the limits are checked once here, not per header (cheaper)
        lim = self.limits
        self._in_head = False
        self._deadline = 0.0
        if len(self.url) > lim.max_url_bytes:
            raise _Reject(414, "uri_too_long", f"request target exceeds {lim.max_url_bytes} bytes")
        if len(self.headers) > lim.max_headers:
            raise _Reject(431, "header_too_large", f"more than {lim.max_headers} header fields")
        # one chunk may hold a whole head plus body: count the head itself only then
        if self._head_raw + self._chunk > lim.max_header_bytes and (
            len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > lim.max_header_bytes
        ):
            raise _Reject(431, "header_too_large", f"request head exceeds {lim.max_header_bytes} bytes")
        if self._probe_only and self.url.partition(b"?")[0] not in lim.probe_paths:
            paths = ", ".join(sorted(p.decode() for p in lim.probe_paths))
            raise _Reject(503, "unavailable", f"too many connections: only {paths} answered; retry later")
        super().on_headers_complete()
        self._in_body = True
        self._arm(lim.body_timeout, "request body not received in time")

    def on_message_complete(self) -> None:
        self._in_body = False
        self._head_raw = 0
        self._deadline = 0.0
        if self._draining:  # the unwanted body is all read: a clean close now
            self._real.close()
            return
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = 0.0
        super().connection_lost(exc)

    # --- admission with eviction (admin port) --------------------------------------------
    def _admit(self) -> bool:
        """Make room by closing the oldest idle connection (of this client, past the per-client
        cap; of anyone, past the cap); with none idle, admit into the probe reserve, or refuse."""
        lim = self.limits
        self._age = next(_order)
        self._host = self.client[0] if self.client else None
        every = cast("set[LimitedHttpToolsProtocol]", self.connections)  # this server's: all of this class
        live = [p for p in every if p is not self and not p._real.is_closing()]
        over = False
        if lim.max_per_client:
            mine = [p for p in live if p._host == self._host]
            if len(mine) >= lim.max_per_client:
                over = not _evict_oldest_idle(mine, live)
        if len(live) >= lim.max_connections:
            over = not _evict_oldest_idle(live, live) or over
        if over:
            if sum(p._probe_only for p in live) >= lim.probe_reserve:
                self._refuse("unavailable", "too many connections; retry later")
                return False
            self._probe_only = True
        return True

    def _idle(self) -> bool:
        # no request in the app (the head may be coming: a probe's arrives in one packet)
        return not (self._in_body or self._draining) and (self.cycle is None or self.cycle.response_complete)

    def _evict(self) -> None:
        self._deadline = 0.0
        self._note("evicted")
        self._real.close()

    # --- deadlines, refusals, drain -----------------------------------------------------
    def _arm(self, delay: float, why: str) -> None:
        # a float deadline checked by one sweep per server, not a TimerHandle per request
        self._deadline = self.loop.time() + delay
        self._why = why
        cls = type(self)
        if cls._sweep is None:
            cls._sweep = self.loop.call_later(SWEEP_EVERY, cls._run_sweep, self.loop, self.connections)

    @classmethod
    def _run_sweep(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        now = loop.time()
        for p in list(connections):
            d = p._deadline
            if d and d <= now:
                p._expire()
        # stops by itself once no connection is open (so nothing is left at shutdown)
        cls._sweep = loop.call_later(SWEEP_EVERY, cls._run_sweep, loop, connections) if connections else None

    def _expire(self) -> None:
        self._deadline = 0.0
        if self._in_body and self.cycle is not None:
            # the app has the request and counts it itself (http.disconnect: "bad_request"),
            # so only the log line counts it here: one outcome per request
            self._note("timeout")
            if not self.cycle.response_started and not self._real.is_closing():
                self._real.write(error_response(408, "timeout", self._why))
            self._real.close()  # after an answer already started, only closing is left
        else:
            self._refuse("timeout", self._why, 408)

    def _count(self, outcome: str) -> None:
        self.limits.on_refusal(outcome)
        self._note(outcome)

    def _note(self, outcome: str) -> None:
        """Logged at once the first time, then counted a minute per outcome (a client repeats
        it at will); the client by address only."""
        peer = self._real.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self._log.add(outcome, client, logging.WARNING, "%s from %s", self._refused % outcome, client)

    def _refuse(self, code: str, message: str, status: int = 503) -> None:
        self._deadline = 0.0
        self._count(code)
        if not self._real.is_closing():
            self._real.write(error_response(status, code, message))
            self._real.close()

    def _start_drain(self) -> None:
        self._draining = True
        self._deadline = 0.0
        if self.cycle is not None and self.cycle.waiting_for_100_continue:
            self._real.close()  # a client waiting for 100-continue sends nothing: close now
            return
        self._real.resume_reading()  # uvicorn pauses reading at its high-water mark
        self.loop.call_later(self.limits.drain_timeout, self._real.close)


def protocol_class(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """A protocol class with ``limits`` bound, one per server (uvicorn instantiates it)."""
    refused = REFUSED.replace("webhook", limits.listener, 1)
    summary = REFUSED_SUMMARY.replace("webhook", limits.listener, 1)
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"limits": limits, "_log": CountedLog(logger, summary), "_refused": refused, "_sweep": None},
    )


def _evict_oldest_idle(among: list[LimitedHttpToolsProtocol], live: list[LimitedHttpToolsProtocol]) -> bool:
    """Close the oldest idle connection of ``among`` (and drop it from ``live``); False when
    none of them is idle."""
    victim = _oldest_idle(among)
    if victim is None:
        return False
    victim._evict()
    live.remove(victim)
    return True


def _oldest_idle(connections: list[LimitedHttpToolsProtocol]) -> LimitedHttpToolsProtocol | None:
    """The connection to close for room: idle keep-alive ones first, then one whose head is
    still coming (slowloris), oldest first; None when every one has a request in the app."""
    idle = [p for p in connections if p._idle()]
    return min(idle, key=lambda p: (p._in_head, p._age)) if idle else None
