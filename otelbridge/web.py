"""Listening sockets and uvicorn servers, as both processes of ``otelbridge serve`` use them."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from otelbridge.httplimits import HttpLimits, protocol_class


class StartupError(Exception):
    """otelbridge serve cannot start: the message names the setting and the fix."""


class InUseError(StartupError):
    """What serve needs is held by another process (a port, the state directory): its own exit
    status, since waiting or stopping the other process fixes it, not changing a setting."""


def bind(host: str, port: int, setting: str) -> socket.socket:
    """Bind the listening socket ourselves: a clear message instead of uvicorn's exit, and a
    socket the pipeline process can inherit."""
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
        if exc.errno == errno.EADDRINUSE:
            raise InUseError(
                f"{setting}: cannot listen on {host}:{port}: the address is in use by another process. "
                "Fix: stop what listens there (an otelbridge serve still stopping?), or choose a free port"
            ) from None
        raise StartupError(
            f"{setting}: cannot listen on {host}:{port} ({exc.strerror}). "
            "Fix: choose a free port or stop what uses it"
        ) from None
    sock.setblocking(False)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


#: how long a graceful stop waits for the requests in flight before cancelling them
GRACEFUL_SHUTDOWN_S = 5.0


def quiet_server(
    app: ASGIApp, limits: HttpLimits | None = None, *, graceful_shutdown_s: float = GRACEFUL_SHUTDOWN_S
) -> QuietServer:
    """uvicorn+httptools with the abusive-client limits of :mod:`otelbridge.httplimits`;
    ``graceful_shutdown_s``: how long a stop waits for the requests in flight (then uvicorn
    cancels them and answers a plain-text 500)."""
    limits = limits or HttpLimits()
    config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        server_header=False,
        log_config=None,
        timeout_graceful_shutdown=graceful_shutdown_s,  # type: ignore[arg-type]  # a float is fine
        http=protocol_class(limits),
        # limit_concurrency is not used: it counts idle connections and 503s the legitimate
        # sender in text/plain; the cap in httplimits refuses new connections instead
        timeout_keep_alive=limits.idle_timeout,  # type: ignore[arg-type]  # a float is fine: call_later
    )
    return QuietServer(config)
