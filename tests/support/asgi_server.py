"""A real uvicorn server for an ASGI app, on loopback, in a background thread, for tests::

    with UvicornThread(app) as server:
        httpx.post(server.url + "/webhooks/cartesia", ...)

The server binds 127.0.0.1 with an OS-assigned port (``port=0``; the bound port is read back
from ``server.servers[0].sockets``), runs on its own event loop in its own thread (uvicorn's
default loop and HTTP implementation — uvloop and httptools when installed, as in
production), with signal handlers off (uvicorn installs none outside the main thread, and
:class:`_ThreadServer` makes that explicit), no access log, ``lifespan="off"`` and
``log_config=None`` so that uvicorn leaves the test's logging (and ``caplog``) alone.

``start()``/``__enter__`` return once the server accepts connections, and raise if it failed
to start. ``stop()``/``__exit__`` set ``should_exit`` and join the thread; if graceful shutdown
does not finish in time, ``force_exit`` is set, and the thread is joined again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any, Self

import uvicorn

__all__ = ["UvicornThread"]


class _ThreadServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # never touch the process's signal handlers


class UvicornThread:
    """Serve ``app`` with uvicorn in a background thread; see the module docstring.

    ``config`` is passed to :class:`uvicorn.Config` and overrides the defaults here
    (e.g. ``loop="asyncio"``, ``timeout_keep_alive=1``, ``limit_concurrency=2``).
    """

    def __init__(
        self,
        app: Callable[..., Any],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 10.0,
        **config: Any,
    ) -> None:
        settings: dict[str, Any] = {
            "lifespan": "off",
            "access_log": False,
            "log_config": None,
            "timeout_graceful_shutdown": shutdown_timeout / 2,
        }
        settings.update(config)
        self.config = uvicorn.Config(app, host=host, port=port, **settings)
        self.server = _ThreadServer(self.config)
        self._startup_timeout = startup_timeout
        self._shutdown_timeout = shutdown_timeout
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._host = host
        self._port: int | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("UvicornThread already started")
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{id(self):x}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn failed to start") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"uvicorn did not start within {self._startup_timeout} s")
            time.sleep(0.005)
        self._port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # uvicorn calls sys.exit() when it cannot bind
            self._error = exc

    def stop(self) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self.server.should_exit = True
        thread.join(self._shutdown_timeout)
        if thread.is_alive():
            self.server.force_exit = True
            thread.join(self._shutdown_timeout)
            if thread.is_alive():
                raise RuntimeError("uvicorn thread did not stop")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- where it listens --------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("UvicornThread not started")
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        """``http://host:port``, without a trailing slash."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"
