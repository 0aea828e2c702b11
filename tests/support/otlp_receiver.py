"""In-process OTLP receivers for end-to-end tests: OTLP/HTTP (protobuf) and OTLP/gRPC.

Both listen on 127.0.0.1 with an OS-assigned port, serve from background threads, decode
every request with opentelemetry-proto's own message classes, keep what they accepted in
thread-safe lists, record every request (path, headers, decoded body, what they answered)
and can be scripted with a queue of canned answers (503 + Retry-After for the next N
requests, a 400, a 200 carrying ``partial_success``…)::

    with HttpOtlpReceiver() as receiver:
        receiver.fail_next(2, status=503, retry_after_s=0)
        run_the_cli(env=receiver.env())
        assert receiver.spans_by_trace()

Why the HTTP side uses the standard library's ``ThreadingHTTPServer`` and not
uvicorn + starlette in a thread: the receiver needs nothing an ASGI stack adds, and it needs
things an ASGI stack makes harder. ``http.server`` is maintained with CPython, has no event
loop to host in a thread, no signal handlers to disable, no lifespan and no startup polling:
the socket is bound (and the port known) when the constructor returns. Handlers see the raw
bytes and headers exactly as sent (no middleware decompressing or normalising them), and
shutdown is deterministic: ``shutdown()`` stops the accept loop, the receiver closes every
open keep-alive connection itself, and ``server_close()`` joins every handler thread
(``daemon_threads = False``, ``block_on_close = True``), so no thread outlives ``stop()``.

The gRPC side is a plain ``grpc.server`` with the TraceService and MetricsService servicers
generated in ``opentelemetry.proto.collector.*.v1.*_pb2_grpc``, insecure, stopped with
``stop(None).wait()`` and its executor shut down and joined.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import ssl
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Generic, Literal, Protocol, Self, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]
from google.rpc.status_pb2 import Status as RpcStatus  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, ResourceMetrics
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

Signal = Literal["traces", "metrics"]
ExportRequest = ExportTraceServiceRequest | ExportMetricsServiceRequest

HTTP_PATHS: dict[str, Signal] = {"/v1/traces": "traces", "/v1/metrics": "metrics"}
GRPC_TRACES_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
GRPC_METRICS_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
PROTOBUF = "application/x-protobuf"


# --- decoded values ----------------------------------------------------------------------
def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as the Python value it carries (arrays as lists, maps as dicts)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    """OTLP attributes (a repeated KeyValue) as a plain dict."""
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the receiver saw it. ``path`` is the HTTP path or the gRPC method;
    ``body`` the decompressed bytes; ``message`` the decoded request (``None`` if it did not
    decode); ``answer`` the HTTP status or the gRPC status code name sent back."""

    path: str
    signal: Signal | None
    headers: dict[str, str]
    body: bytes
    message: ExportRequest | None
    answer: int | str
    received_at: float = field(default_factory=time.monotonic)


# --- what both receivers share ------------------------------------------------------------
class _Answer(Protocol):
    @property
    def route(self) -> str | None: ...


AnswerT = TypeVar("AnswerT", bound=_Answer)


class _Store(Generic[AnswerT]):
    """Thread-safe record of requests and of the data accepted, plus query helpers, the queue of
    scripted answers, and the context-manager protocol (``start``/``stop`` are each receiver's)."""

    def __init__(self) -> None:
        self._answers: deque[AnswerT] = deque()
        self._lock = threading.Condition(threading.RLock())
        self._requests: list[ReceivedRequest] = []
        self._traces: list[ExportTraceServiceRequest] = []
        self._metrics: list[ExportMetricsServiceRequest] = []

    def _record(self, request: ReceivedRequest, accepted: bool) -> None:
        with self._lock:
            self._requests.append(request)
            if accepted and isinstance(request.message, ExportTraceServiceRequest):
                self._traces.append(request.message)
            elif accepted and isinstance(request.message, ExportMetricsServiceRequest):
                self._metrics.append(request.message)
            self._lock.notify_all()

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._traces.clear()
            self._metrics.clear()

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # scripted answers
    def enqueue(self, *answers: AnswerT) -> None:
        """Answer the next matching requests with these, in order; then success again."""
        with self._lock:
            self._answers.extend(answers)

    @property
    def pending_answers(self) -> int:
        with self._lock:
            return len(self._answers)

    def clear_answers(self) -> None:
        """Forget the scripted answers not used yet: answer success from now on (backend recovered)."""
        with self._lock:
            self._answers.clear()

    def _next_answer(self, route: str) -> AnswerT | None:
        with self._lock:
            for index, answer in enumerate(self._answers):
                if answer.route is None or answer.route == route:
                    del self._answers[index]
                    return answer
            return None

    # raw records
    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received, accepted or not, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def trace_requests(self) -> list[ExportTraceServiceRequest]:
        """The trace export requests that were answered with success."""
        with self._lock:
            return list(self._traces)

    @property
    def metric_requests(self) -> list[ExportMetricsServiceRequest]:
        """The metric export requests that were answered with success."""
        with self._lock:
            return list(self._metrics)

    # traces
    def resource_spans(self) -> list[ResourceSpans]:
        return [rs for req in self.trace_requests for rs in req.resource_spans]

    def spans(self) -> list[Span]:
        return [span for rs in self.resource_spans() for ss in rs.scope_spans for span in ss.spans]

    def spans_by_trace(self) -> dict[str, list[Span]]:
        """Accepted spans grouped by trace id (lower-case hex)."""
        grouped: dict[str, list[Span]] = {}
        for span in self.spans():
            grouped.setdefault(span.trace_id.hex(), []).append(span)
        return grouped

    def span_ids(self) -> set[str]:
        return {span.span_id.hex() for span in self.spans()}

    def trace_resources(self) -> list[dict[str, Any]]:
        """The resource attributes of every ResourceSpans received."""
        return [attributes(rs.resource.attributes) for rs in self.resource_spans()]

    # metrics
    def resource_metrics(self) -> list[ResourceMetrics]:
        return [rm for req in self.metric_requests for rm in req.resource_metrics]

    def metric_resources(self) -> list[dict[str, Any]]:
        return [attributes(rm.resource.attributes) for rm in self.resource_metrics()]

    def metrics(self) -> list[Metric]:
        return [m for rm in self.resource_metrics() for sm in rm.scope_metrics for m in sm.metrics]

    def metrics_by_name(self) -> dict[str, list[Metric]]:
        grouped: dict[str, list[Metric]] = {}
        for metric in self.metrics():
            grouped.setdefault(metric.name, []).append(metric)
        return grouped

    def metric_names(self) -> set[str]:
        return {m.name for m in self.metrics()}

    # waiting (for tests of long-running processes)
    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` holds (checked after every request); ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                # The predicate calls the helpers above, which take the (re-entrant) lock.
                if predicate():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)

    def wait_for_spans(self, count: int, timeout: float = 5.0) -> bool:
        return self.wait_until(lambda: len(self.spans()) >= count, timeout)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        return self.wait_until(lambda: len(self._requests) >= count, timeout)


# --- OTLP/HTTP ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """A canned HTTP answer. ``path`` limits it to one endpoint (``/v1/traces``); ``None``
    lets it answer the next request to either."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    path: str | None = None

    @property
    def route(self) -> str | None:
        return self.path


def rpc_status(code: int, message: str) -> bytes:
    """A serialized google.rpc.Status, the body OTLP/HTTP prescribes for errors."""
    data: bytes = RpcStatus(code=code, message=message).SerializeToString()
    return data


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)  # zlib-wrapped, what the SDK sends
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # handler threads are joined by server_close()
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, receiver: HttpOtlpReceiver) -> None:
        self.receiver = receiver
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        if receiver.ssl_context is not None:  # HTTPS: the handshake happens on accept
            self.socket = receiver.ssl_context.wrap_socket(self.socket, server_side=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the SDK's requests session
    server: _Server
    timeout = 30  # a stalled client cannot pin a handler thread forever

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows failures, not access logs."""

    def _reply(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", PROTOBUF)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(405, rpc_status(12, "OTLP receivers take POST"), {"Allow": "POST"})

    def do_POST(self) -> None:
        receiver = self.server.receiver
        path = self.path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = int(headers.get("content-length", "0") or 0)
        raw = self.rfile.read(length) if length else b""
        signal = HTTP_PATHS.get(path)
        message: ExportRequest | None = None
        problem: tuple[int, str] | None = None
        body = raw
        if signal is None:
            problem = (404, f"no OTLP endpoint at {path}")
        elif headers.get("content-type", "").split(";")[0].strip() != PROTOBUF:
            problem = (415, f"expected {PROTOBUF}, got {headers.get('content-type')!r}")
        else:
            try:
                body = _decompress(raw, headers.get("content-encoding", ""))
                decoded = (ExportTraceServiceRequest if signal == "traces" else ExportMetricsServiceRequest)()
                decoded.ParseFromString(body)
                message = decoded
            except (ValueError, OSError, zlib.error, DecodeError) as exc:
                problem = (400, f"cannot decode the request: {exc}")
        if problem is not None:
            status, text = problem
            receiver._record(ReceivedRequest(path, signal, headers, body, message, status), accepted=False)
            self._reply(status, rpc_status(3, text))
            return
        assert signal is not None
        canned = receiver._next_answer(path)
        status = canned.status if canned else 200
        receiver._record(
            ReceivedRequest(path, signal, headers, body, message, status), accepted=200 <= status < 300
        )
        if canned is not None and canned.body is not None:
            reply_body = canned.body
        elif 200 <= status < 300:
            response: Message = (
                ExportTraceServiceResponse() if signal == "traces" else ExportMetricsServiceResponse()
            )
            reply_body = response.SerializeToString()
        else:
            reply_body = rpc_status(14 if status in (429, 502, 503, 504) else 3, f"canned {status}")
        self._reply(status, reply_body, canned.headers if canned else None)


class HttpOtlpReceiver(_Store[HttpAnswer]):
    """OTLP/HTTP receiver: ``POST /v1/traces`` and ``/v1/metrics``, protobuf, optionally
    gzip or deflate. Use as a context manager (or ``start()``/``stop()``).

    With ``ssl_context`` (a server-side context, e.g. one that also requires client
    certificates) it serves HTTPS and :attr:`url` starts with ``https://``."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.ssl_context = ssl_context
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> Self:
        if self._server is not None:
            return self
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="otlp-http-receiver"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()  # stop accepting; returns once serve_forever has returned
        thread.join()
        with server.connections_lock:
            open_connections = list(server.connections)
        for conn in open_connections:  # wake handlers waiting on idle keep-alive connections
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()  # joins every handler thread
        self._server = self._thread = None

    # where it listens
    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes it."""
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables pointing an OTLP/HTTP exporter here."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}

    # scripting
    def fail_next(
        self, count: int, status: int = 503, retry_after_s: float | None = None, path: str | None = None
    ) -> None:
        headers = {} if retry_after_s is None else {"Retry-After": f"{retry_after_s:g}"}
        self.enqueue(*[HttpAnswer(status, headers, None, path) for _ in range(count)])

    def reject_next(self, status: int = 400, message: str = "bad request", path: str | None = None) -> None:
        self.enqueue(HttpAnswer(status, {}, rpc_status(3, message), path))

    def partial_success_next(
        self, rejected: int, message: str = "rejected by the test", path: str = "/v1/traces"
    ) -> None:
        """A 200 whose body reports ``rejected`` spans (or data points, on /v1/metrics)."""
        if path == "/v1/metrics":
            response: Message = ExportMetricsServiceResponse(
                partial_success=ExportMetricsPartialSuccess(
                    rejected_data_points=rejected, error_message=message
                )
            )
        else:
            response = ExportTraceServiceResponse(
                partial_success=ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
            )
        self.enqueue(HttpAnswer(200, {}, response.SerializeToString(), path))


# --- OTLP/gRPC ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GrpcAnswer:
    """A canned gRPC answer: a status code (with RetryInfo when ``retry_delay_s`` is set), or
    OK with a partial success (``rejected`` spans / data points). ``method`` limits it to
    one service (:data:`GRPC_TRACES_METHOD` / :data:`GRPC_METRICS_METHOD`).

    The RetryInfo travels as a bare message in the ``google.rpc.retryinfo-bin`` trailer (what
    the Python SDK's exporter reads); with ``status_details=True`` it travels as the gRPC
    convention has it instead, inside a google.rpc.Status in ``grpc-status-details-bin``
    (what the Collector and most servers send)."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    retry_delay_s: float | None = None
    rejected: int = 0
    message: str = ""
    method: str | None = None
    status_details: bool = False

    @property
    def route(self) -> str | None:
        return self.method


class _Servicer:
    """The Export behaviour both services share."""

    signal: ClassVar[Signal]
    method: ClassVar[str]

    def __init__(self, receiver: GrpcOtlpReceiver) -> None:
        self.receiver = receiver

    def _response(self, rejected: int, message: str) -> Message:
        raise NotImplementedError

    def Export(self, request: ExportRequest, context: grpc.ServicerContext) -> Message:
        receiver = self.receiver
        metadata = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        canned = receiver._next_answer(self.method)
        code = canned.code if canned else grpc.StatusCode.OK
        ok = code == grpc.StatusCode.OK
        receiver._record(
            ReceivedRequest(
                self.method, self.signal, metadata, request.SerializeToString(), request, code.name
            ),
            accepted=ok,
        )
        if not ok:
            assert canned is not None
            text = canned.details or f"canned {code.name}"
            if canned.retry_delay_s is not None:
                delay = Duration()
                delay.FromNanoseconds(int(canned.retry_delay_s * 1e9))
                retry_info = RetryInfo(retry_delay=delay)
                if canned.status_details:
                    status = RpcStatus(code=code.value[0], message=text)
                    status.details.add().Pack(retry_info)
                    trailer = ("grpc-status-details-bin", status.SerializeToString())
                else:
                    trailer = ("google.rpc.retryinfo-bin", retry_info.SerializeToString())
                context.set_trailing_metadata((trailer,))
            context.abort(code, text)
        if canned is not None and canned.rejected:
            return self._response(canned.rejected, canned.message)
        return self._response(0, "")


class _TraceServicer(_Servicer, trace_service_pb2_grpc.TraceServiceServicer):
    signal = "traces"
    method = GRPC_TRACES_METHOD

    def _response(self, rejected: int, message: str) -> Message:
        if not rejected:
            return ExportTraceServiceResponse()
        return ExportTraceServiceResponse(
            partial_success=ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
        )


class _MetricsServicer(_Servicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    signal = "metrics"
    method = GRPC_METRICS_METHOD

    def _response(self, rejected: int, message: str) -> Message:
        if not rejected:
            return ExportMetricsServiceResponse()
        return ExportMetricsServiceResponse(
            partial_success=ExportMetricsPartialSuccess(rejected_data_points=rejected, error_message=message)
        )


class GrpcOtlpReceiver(_Store[GrpcAnswer]):
    """OTLP/gRPC receiver for TraceService and MetricsService: insecure, or TLS with
    ``server_credentials`` (``grpc.ssl_server_credentials(...)``)."""

    def __init__(self, max_workers: int = 4, server_credentials: Any = None) -> None:
        super().__init__()
        self._server_credentials = server_credentials
        self._max_workers = max_workers
        self._executor: futures.ThreadPoolExecutor | None = None
        self._server: Any = None
        self._port = 0

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._executor = futures.ThreadPoolExecutor(
            self._max_workers, thread_name_prefix="otlp-grpc-receiver"
        )
        server = grpc.server(self._executor)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)  # type: ignore[no-untyped-call]
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsServicer(self), server)  # type: ignore[no-untyped-call]
        if self._server_credentials is None:
            self._port = int(server.add_insecure_port("127.0.0.1:0"))
        else:
            self._port = int(server.add_secure_port("127.0.0.1:0", self._server_credentials))
        if not self._port:
            raise RuntimeError("could not bind a port on 127.0.0.1")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop(None).wait()
        self._server = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return self._port

    @property
    def url(self) -> str:
        scheme = "http" if self._server_credentials is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables pointing an OTLP/gRPC exporter here (plaintext; with TLS,
        the certificate variables are the caller's to add)."""
        if self._server_credentials is not None:
            return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        }

    def fail_next(
        self,
        count: int,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        retry_delay_s: float | None = None,
        method: str | None = None,
    ) -> None:
        self.enqueue(*[GrpcAnswer(code, "", retry_delay_s, 0, "", method) for _ in range(count)])

    def reject_next(
        self, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT, method: str | None = None
    ) -> None:
        self.enqueue(GrpcAnswer(code, "rejected by the test", None, 0, "", method))

    def partial_success_next(
        self, rejected: int, message: str = "rejected by the test", method: str = GRPC_TRACES_METHOD
    ) -> None:
        self.enqueue(GrpcAnswer(grpc.StatusCode.OK, "", None, rejected, message, method))


__all__ = [
    "GRPC_METRICS_METHOD",
    "GRPC_TRACES_METHOD",
    "GrpcAnswer",
    "GrpcOtlpReceiver",
    "HttpAnswer",
    "HttpOtlpReceiver",
    "ReceivedRequest",
    "any_value",
    "attributes",
    "rpc_status",
]
