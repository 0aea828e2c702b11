"""The admin port's limits (issue 19): idle sockets and slow /metrics clients never make the
probes fail; the cap, the per-client cap and the idle timeout come from the settings. A real
uvicorn server on 127.0.0.1 running the real admin app with the pipeline's admin limits."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from otelbridge.admin import Readiness, build_admin_app
from otelbridge.httplimits import protocol_class
from otelbridge.pipeline import admin_limits
from otelbridge.settings import ADMIN_PROBE_RESERVE, Settings
from tests.support.asgi_server import UvicornThread
from tests.test_http_limits import assert_json_error, parse, read_answer


class Admin:
    def __init__(self, server: UvicornThread, release: threading.Event) -> None:
        self.server, self.release, self.port = server, release, server.port
        self.held: list[socket.socket] = []

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.held.append(sock)
        return sock

    def slow_metrics(self) -> socket.socket:
        """A /metrics request held in the app until ``release``."""
        sock = self.connect()
        sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        return sock

    def get(self, path: str) -> int:
        with httpx.Client(timeout=5) as client:
            return client.get(f"http://127.0.0.1:{self.port}{path}").status_code


@pytest.fixture
def admin() -> Iterator[Any]:
    running: list[Admin] = []

    def start(**settings: Any) -> Admin:
        release = threading.Event()

        async def readiness() -> Readiness:
            return Readiness(ready=True)

        async def metrics_text() -> bytes:
            while not release.is_set():
                await asyncio.sleep(0.01)
            return b"# EOF\n"

        limits = admin_limits(Settings(**settings))
        app = build_admin_app(readiness, metrics_text, lambda: None)
        server = UvicornThread(
            app, http=protocol_class(limits), timeout_keep_alive=limits.idle_timeout, server_header=False
        )
        server.start()
        a = Admin(server, release)
        running.append(a)
        return a

    yield start
    for a in running:
        a.release.set()
        for sock in a.held:
            sock.close()
        a.server.stop()


def _settle() -> None:
    time.sleep(0.3)  # the server has accepted (and evicted) what was opened


@pytest.mark.parametrize("per_client", [0, 16])
def test_the_probes_answer_with_seventy_idle_sockets_open(admin: Any, per_client: int) -> None:
    a = admin(admin_max_connections_per_client=per_client)
    for _ in range(75):
        a.connect()
    _settle()
    a.release.set()
    for _ in range(3):
        assert a.get("/healthz") == 200
        assert a.get("/readyz") == 200
    assert a.get("/metrics") == 200


def test_the_probes_answer_while_slow_metrics_clients_hold_the_cap(admin: Any) -> None:
    a = admin(admin_max_connections=5, admin_max_connections_per_client=0)
    for _ in range(5):
        a.slow_metrics()
    for _ in range(20):
        a.connect()  # idle ones, past the cap: each evicts the one before
    _settle()
    assert a.get("/healthz") == 200
    assert a.get("/readyz") == 200
    # the cap is honoured: a sixth /metrics gets 503 JSON, not an answer
    extra = a.slow_metrics()
    raw, how = read_answer(extra, 3)
    assert how != "open"
    assert_json_error(raw, 503, "unavailable")
    a.release.set()


def test_the_oldest_idle_connection_is_closed_past_the_cap(admin: Any) -> None:
    a = admin(admin_max_connections=5, admin_max_connections_per_client=0, admin_idle_timeout=30)
    idle = [a.connect() for _ in range(5)]
    _settle()
    newest = a.connect()
    newest.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    _, oldest_end = read_answer(idle[0], 3)
    assert oldest_end in ("closed", "reset")
    for sock in idle[1:]:
        assert read_answer(sock, 0.2)[1] == "open"
    newest.settimeout(3)
    assert parse(newest.recv(65536))[0] == 200


def test_the_per_client_cap_is_honoured(admin: Any) -> None:
    a = admin(admin_max_connections_per_client=2)
    a.slow_metrics()
    a.slow_metrics()
    _settle()
    raw, how = read_answer(a.slow_metrics(), 3)
    assert how != "open"
    assert_json_error(raw, 503, "unavailable")
    assert a.get("/healthz") == 200
    a.release.set()


def test_the_admin_idle_timeout_closes_idle_sockets(admin: Any) -> None:
    a = admin(admin_idle_timeout=0.5)
    sock = a.connect()
    started = time.monotonic()
    data, how = read_answer(sock, 5)
    assert (data, how) == (b"", "closed")
    assert 0.3 < time.monotonic() - started < 2.5


def test_the_admin_limits_come_from_the_settings() -> None:
    limits = admin_limits(
        Settings(admin_max_connections=10, admin_max_connections_per_client=3, admin_idle_timeout=7)
    )
    assert (limits.max_connections, limits.max_per_client, limits.idle_timeout) == (10, 3, 7)
    assert limits.evict_idle and limits.probe_reserve == ADMIN_PROBE_RESERVE
    assert limits.probe_paths == {b"/healthz", b"/readyz"}
