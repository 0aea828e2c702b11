"""Send already-encoded OTLP requests and classify the answer.

The daemon's spool holds *serialized* ``ExportTraceServiceRequest`` /
``ExportMetricsServiceRequest`` bytes (uncompressed). The SDK's exporters cannot send those
(they take SDK objects, retry internally and ignore ``partial_success``), so this module does:
one POST (or one unary gRPC call) per :meth:`Transport.send`, no retries of its own, and a
:class:`SendResult` that says whether to delete the request (``ok``), keep it and back off
(``retry``) or dead-letter it (``reject``).

Configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables as
:mod:`otelbridge.delivery.environment` reads them (the per-signal variable first, then the
general one). Where the SDK and the specification differ the choices are noted inline.
:func:`make_transport` gives each signal its exporter: OTLP, the console or nowhere. ``serve``,
``replay``, ``backfill`` and ``check`` all send through it.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import ssl
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol, get_args
from urllib.parse import urlsplit, urlunsplit

import httpx
from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status as RpcStatus  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otelbridge import __version__
from otelbridge.delivery.environment import SIGNALS, ExporterKind, OtelEnvironment, Signal, Tls
from otelbridge.retry import parse_retry_after

if TYPE_CHECKING:
    from otelbridge.delivery.grpc_sender import GrpcSender

__all__ = [
    "DiscardTransport",
    "OtlpTransport",
    "RoutedTransport",
    "SendResult",
    "Signal",
    "Transport",
    "display_endpoint",
    "failure_fix",
    "make_transport",
    "parse_retry_after",
    "probe",
]

Outcome = Literal["ok", "retry", "reject"]
OUTCOMES: Final[tuple[Outcome, ...]] = get_args(Outcome)

USER_AGENT: Final = f"otelbridge/{__version__}"
PROTOBUF: Final = "application/x-protobuf"
GRPC_METHODS: Final[Mapping[Signal, str]] = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}
MESSAGE_TEXT_LIMIT: Final = 200
_MAX_RESPONSE_BYTES: Final = 256 * 1024  # an OTLP answer is tiny; never buffer a huge error page
_RETRY_HTTP: Final = frozenset({408, 429})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


# --- the result ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to one request. ``status`` is short and stable (``"200"``, ``"503"``,
    ``"grpc UNAVAILABLE"``, ``"connection error"``, ``"timeout"``); ``message`` is one line for
    logs that does not repeat the status (readers print ``status: message``; never headers,
    body text capped); ``retry_after`` the seconds the backend asked for;
    ``rejected``/``partial_message`` the ``partial_success`` of an accepted request."""

    outcome: Outcome
    status: str
    message: str
    retry_after: float | None = None
    rejected: int = 0
    partial_message: str = ""


class Transport(Protocol):
    def send(self, signal: Signal, body: bytes) -> SendResult:
        """Send one serialized Export*ServiceRequest (uncompressed). Never raises."""
        ...

    def endpoint(self, signal: Signal) -> str:
        """Where ``signal`` goes, for logs (no credentials)."""
        ...

    def close(self) -> None: ...


def probe(transport: Transport, signal: Signal) -> SendResult:
    """Send an empty, valid Export*ServiceRequest: harmless, and proves the path works."""
    empty = ExportTraceServiceRequest() if signal == "traces" else ExportMetricsServiceRequest()
    return transport.send(signal, empty.SerializeToString())


#: the IANA ports of OTLP: a client of the other protocol there is almost surely misconfigured
OTLP_GRPC_PORT: Final = 4317
OTLP_HTTP_PORT: Final = 4318
# What a gRPC (HTTP/2-only) listener looks like to an HTTP/1.1 client (h11 cannot parse the
# SETTINGS frame it answers with), and an HTTP/1.1 listener to a gRPC client.
_HTTP2_ANSWER = re.compile(r"illegal (request|status) line|invalid http version", re.I)
_HTTP1_ANSWER = re.compile(r"failed parsing http/2|expected settings frame", re.I)


def _port(endpoint: str) -> int | None:
    try:
        parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return None


def failure_fix(transport: Transport, signal: Signal, result: SendResult) -> str:
    """What to do about a failed export of ``signal`` (one sentence, without "Fix:"), chosen
    from how it failed: the protocol spoken to the other protocol's listener, a wrong path,
    credentials, TLS, or nobody listening."""
    while isinstance(transport, RoutedTransport):
        transport = transport.routes[signal]
    if not isinstance(transport, OtlpTransport):
        return "see the message above"
    protocol, endpoint = transport.protocol(signal), transport.endpoint(signal)
    variable, specific = "OTEL_EXPORTER_OTLP_ENDPOINT", f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    port = _port(endpoint)
    text = f"{result.status}: {result.message}"
    if protocol == "http/protobuf" and (port == OTLP_GRPC_PORT or _HTTP2_ANSWER.search(text)):
        why = (
            f"port {OTLP_GRPC_PORT} is OTLP/gRPC's" if port == OTLP_GRPC_PORT
            else "the server there does not answer HTTP/1.1: it looks like a gRPC (HTTP/2) listener"
        )  # fmt: skip
        return (
            f"{why}, and otelbridge is sending OTLP/HTTP (OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf, the "
            f"default): set OTEL_EXPORTER_OTLP_PROTOCOL=grpc, or point {variable} at the OTLP/HTTP port "
            f"({OTLP_HTTP_PORT})"
        )
    if protocol == "grpc" and (port == OTLP_HTTP_PORT or _HTTP1_ANSWER.search(text)):
        why = (
            f"port {OTLP_HTTP_PORT} is OTLP/HTTP's" if port == OTLP_HTTP_PORT
            else "the server there does not speak HTTP/2: it looks like an OTLP/HTTP listener"
        )  # fmt: skip
        return (
            f"{why}, and otelbridge is sending OTLP/gRPC (OTEL_EXPORTER_OTLP_PROTOCOL=grpc): set "
            f"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf, or point {variable} at the OTLP/gRPC port "
            f"({OTLP_GRPC_PORT})"
        )
    status = result.status
    if status in {"404", "grpc UNIMPLEMENTED"}:
        path = urlsplit(endpoint).path if protocol == "http/protobuf" else ""
        if path.count(f"/v1/{signal}") > 1:
            return (
                f"the path {path} holds /v1/{signal} twice: {variable} gets /v1/{signal} appended, so "
                f"drop the path from it, or put the full URL in {specific}"
            )
        return (
            f"nothing takes OTLP {signal} at that path: OTLP/HTTP's is /v1/{signal} (appended to "
            f"{variable}; {specific} is used as it is); check the backend's documented endpoint"
        )
    if status in ("401", "403", "grpc UNAUTHENTICATED", "grpc PERMISSION_DENIED"):
        return "check the credentials in OTEL_EXPORTER_OTLP_HEADERS (or OTEL_EXPORTER_OTLP_HEADERS_FILE)"
    if "CERTIFICATE" in text.upper() or "SSL" in text.upper() or "TLS" in text.upper():
        return (
            "check the TLS settings: OTEL_EXPORTER_OTLP_CERTIFICATE (the CA that signed the server's "
            "certificate), OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY, or "
            "use http:// for a plaintext endpoint"
        )
    if status == "config error":
        return f"correct {variable} (or {specific}) and the OTEL_EXPORTER_OTLP_* TLS settings"
    if status in ("connection error", "timeout", "grpc UNAVAILABLE", "grpc DEADLINE_EXCEEDED"):
        return (
            f"start the Collector or backend there, or point {variable} (or {specific}) at yours; a "
            "slow one may need a longer OTEL_EXPORTER_OTLP_TIMEOUT"
        )
    if status.isdigit() and 500 <= int(status) < 600:
        return "the backend failed: see its message above and its logs; exports are retried"
    return "see the backend's message above; it names what it refused"


# --- small helpers ------------------------------------------------------------------------
def _short(text: str, limit: int = MESSAGE_TEXT_LIMIT) -> str:
    """One line, control characters folded, at most ``limit`` characters."""
    line = " ".join(_CONTROL.sub(" ", text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _display_url(url: str) -> str:
    """``url`` without user info, query or fragment (they may carry credentials)."""
    try:
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            return url.split("?", 1)[0]
        host = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<invalid url>"


def _display(endpoint: str) -> str:
    return _display_url(endpoint) if "://" in endpoint else endpoint


def display_endpoint(environment: OtelEnvironment, signal: Signal) -> str:
    """Where ``signal`` goes over OTLP, for messages (no credentials)."""
    return _display(environment.endpoint(signal))


def _partial_success(signal: Signal, body: bytes) -> tuple[int, str]:
    """``(rejected, error_message)`` from an Export*ServiceResponse; ``(0, "")`` if empty or
    undecodable. A body gzip-compressed without a Content-Encoding header is tolerated."""
    if not body:
        return 0, ""
    if body[:2] == b"\x1f\x8b":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError, zlib.error):
            return 0, ""
    try:
        if signal == "traces":
            traces = ExportTraceServiceResponse.FromString(body)
            return int(traces.partial_success.rejected_spans), traces.partial_success.error_message
        metrics = ExportMetricsServiceResponse.FromString(body)
        return int(metrics.partial_success.rejected_data_points), metrics.partial_success.error_message
    except (DecodeError, ValueError, RuntimeError):
        return 0, ""


def _ok(status: str, signal: Signal, body: bytes) -> SendResult:
    rejected, partial = _partial_success(signal, body)
    if rejected or partial:
        message = f"partial success: {rejected} rejected"
        if partial:
            message += f": {_short(partial)}"
        return SendResult("ok", status, message, None, max(rejected, 0), _short(partial, 1000))
    return SendResult("ok", status, "accepted")


def _error_text(body: bytes, content_type: str) -> str:
    """A short reason from an HTTP error body: google.rpc.Status, JSON or plain text."""
    if not body:
        return ""
    kind = content_type.split(";", 1)[0].strip().lower()
    if "protobuf" in kind or body[:1] in (b"\x08", b"\x12"):
        try:
            status = RpcStatus.FromString(body)
            if status.message:
                return _short(str(status.message))
        except (DecodeError, ValueError, RuntimeError):
            pass
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(body)} bytes, not text)"
    if "json" in kind or text.lstrip().startswith("{"):
        try:
            decoded = json.loads(text)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            for key in ("message", "error", "title", "detail"):
                value = decoded.get(key)
                if isinstance(value, str) and value.strip():
                    return _short(value)
                if isinstance(value, dict) and isinstance(value.get("message"), str):
                    return _short(value["message"])
    return _short(text)


class _ConfigError(Exception):
    """The request is fine, the transport is not (a TLS file that cannot be used, closed)."""

    def __init__(self, message: str, status: str = "config error") -> None:
        super().__init__(message)
        self.status = status


# --- OTLP/HTTP ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _HttpRoute:
    url: str
    headers: Mapping[str, str]
    compression: Literal["gzip", "deflate", "none"]
    timeout: float
    tls: Tls | None  # None for plain http:// (TLS settings do not apply)


def _without_userinfo(url: str) -> str:
    """``url`` without ``user:password@``: httpx would send them as an Authorization header in
    place of the configured one (OtelEnvironment.problems refuses such an endpoint)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url  # reported by OtelEnvironment.problems; httpx refuses it at send time
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _http_route(env: OtelEnvironment, signal: Signal) -> _HttpRoute:
    url = _without_userinfo(env.http_url(signal))
    compression = env.compression(signal)
    headers = {"user-agent": USER_AGENT, **env.headers(signal), "content-type": PROTOBUF}
    headers.pop("content-encoding", None)
    if compression != "none":
        headers["content-encoding"] = compression
    tls = env.tls(signal) if url.lower().startswith("https://") else None
    return _HttpRoute(url, headers, compression, env.timeout(signal), tls)


def _compress(body: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(body, compresslevel=6, mtime=0)
    if compression == "deflate":
        return zlib.compress(body)  # zlib-wrapped, as HTTP "deflate" means and the SDK sends
    return body


#: the TLS context of a plain http:// route's client: it never makes a TLS connection (no
#: redirects are followed), so no CA bundle is loaded (httpx's default loads certifi's: 0.1 s and
#: a few MB, at the first export). Holding no trusted CA, it would refuse every server, never
#: trust one, should it ever be used.
_PLAIN_HTTP = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _ssl_context(tls: Tls) -> ssl.SSLContext:
    try:
        if tls.ca_file:
            context = ssl.create_default_context(cafile=tls.ca_file)
        else:
            context = httpx.create_ssl_context()
        if tls.client_certificate:
            context.load_cert_chain(tls.client_certificate, tls.client_key or None)
        elif tls.client_key:
            raise _ConfigError("CLIENT_KEY is set without CLIENT_CERTIFICATE")
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise _ConfigError(f"cannot load the TLS files: {type(exc).__name__}: {_short(str(exc))}") from exc
    return context


class _HttpSender:
    """One ``httpx.Client`` per distinct TLS configuration (normally exactly one), created on
    first use and reused, so connections are kept alive across requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[Tls | None, httpx.Client] = {}
        self._closed = False

    def _client(self, tls: Tls | None) -> httpx.Client:
        with self._lock:
            if self._closed:
                raise _ConfigError("transport closed", "closed")
            client = self._clients.get(tls)
            if client is None:
                verify = _PLAIN_HTTP if tls is None else _ssl_context(tls)
                client = httpx.Client(verify=verify, follow_redirects=False, http2=False)
                self._clients[tls] = client
            return client

    def send(self, route: _HttpRoute, signal: Signal, body: bytes) -> SendResult:
        try:
            client = self._client(route.tls)
        except _ConfigError as exc:
            return SendResult("retry", exc.status, str(exc))
        data = _compress(body, route.compression)
        timeout = httpx.Timeout(route.timeout)
        # A pooled keep-alive connection the server has just closed fails before any answer:
        # try once more at once (as the SDK does) instead of waiting for the caller's backoff.
        return self._attempt(client, route, signal, data, timeout, 2)

    def _attempt(
        self,
        client: httpx.Client,
        route: _HttpRoute,
        signal: Signal,
        data: bytes,
        timeout: httpx.Timeout,
        attempts: int,
    ) -> SendResult:
        try:
            return self._post(client, route, signal, data, timeout)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            if attempts > 1:
                return self._attempt(client, route, signal, data, timeout, attempts - 1)
            message = _exception_text(exc)
            if isinstance(exc, httpx.RemoteProtocolError) and _HTTP2_ANSWER.search(message):
                message += (
                    " (the server does not speak HTTP/1.1; if it is an OTLP/gRPC port, set "
                    "OTEL_EXPORTER_OTLP_PROTOCOL=grpc)"
                )
            return SendResult("retry", "connection error", message)
        except httpx.TimeoutException as exc:
            return SendResult("retry", "timeout", _exception_text(exc))
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return SendResult("retry", "config error", f"bad endpoint: {_exception_text(exc)}")
        except httpx.TransportError as exc:
            return SendResult("retry", "connection error", _exception_text(exc))

    def _post(
        self, client: httpx.Client, route: _HttpRoute, signal: Signal, data: bytes, timeout: httpx.Timeout
    ) -> SendResult:
        request = client.build_request(
            "POST", route.url, content=data, headers=route.headers, timeout=timeout
        )
        response = client.send(request, stream=True)
        try:
            answer = _read_capped(response)
        finally:
            response.close()
        code = response.status_code
        status = str(code)
        if 200 <= code < 300:
            return _ok(status, signal, answer)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        outcome: Outcome = "retry" if code in _RETRY_HTTP or 500 <= code < 600 else "reject"
        reason = response.reason_phrase or ""
        text = _error_text(answer, response.headers.get("content-type", ""))
        if 300 <= code < 400:
            text = text or "redirect not followed: point the endpoint at the final URL"
        # The message leaves the status code out: every reader prints "status: message".
        message = ": ".join(part for part in (reason, text) if part) or "no details"
        return SendResult(outcome, status, message, retry_after)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):  # closing is best effort
                client.close()


def _read_capped(response: httpx.Response) -> bytes:
    """The (decoded) response body, at most ``_MAX_RESPONSE_BYTES``; ``b""`` if it cannot be read
    (the status line is what matters, and it has arrived)."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= _MAX_RESPONSE_BYTES:
                break
    except (httpx.HTTPError, httpx.StreamError, OSError, zlib.error):
        return b""
    return b"".join(chunks)[:_MAX_RESPONSE_BYTES]


def _exception_text(exc: BaseException) -> str:
    text = _short(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- OTLP/gRPC ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _GrpcRoute:
    endpoint: str  # as configured, for display
    target: str  # host:port
    insecure: bool
    tls: Tls
    metadata: tuple[tuple[str, str | bytes], ...]
    compression: Literal["gzip", "deflate", "none"]
    timeout: float


def _grpc_route(env: OtelEnvironment, signal: Signal) -> _GrpcRoute:
    endpoint = env.grpc_endpoint(signal)
    if "://" in endpoint:
        scheme, _, rest = endpoint.partition("://")  # no urlsplit: a malformed IPv6 host raises
        scheme, target = scheme.lower(), rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    else:
        scheme, target = "", endpoint.rstrip("/")
    # The specification: the scheme decides; OTEL_EXPORTER_OTLP[_SIGNAL]_INSECURE only
    # applies to an endpoint without one (and then defaults to a secure channel).
    if scheme == "https":
        insecure = False
    elif scheme == "http":
        insecure = True
    else:
        insecure = (env.setting(signal, "INSECURE") or "false").lower() == "true"
    # gRPC wants bytes for "-bin" keys (it base64-encodes them on the wire itself).
    metadata = tuple(
        (key, value.encode() if key.endswith("-bin") else value)
        for key, value in ((k.lower(), v) for k, v in env.headers(signal).items())
    )
    return _GrpcRoute(
        endpoint,
        target,
        insecure,
        env.tls(signal),
        metadata,
        env.compression(signal),
        env.timeout(signal),
    )


# --- the transport --------------------------------------------------------------------------
class OtlpTransport:
    """OTLP over HTTP/protobuf or gRPC, chosen per signal. Thread-safe."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = OtelEnvironment(environ)
        self._routes: dict[Signal, _HttpRoute | _GrpcRoute] = {}
        for signal in SIGNALS:
            grpc_route = env.protocol(signal) == "grpc"
            self._routes[signal] = _grpc_route(env, signal) if grpc_route else _http_route(env, signal)
        self._http = _HttpSender()
        self._grpc: GrpcSender | None = None  # grpcio is loaded only when a signal uses it
        self._grpc_lock = threading.Lock()

    def protocol(self, signal: Signal) -> Literal["http/protobuf", "grpc"]:
        return "grpc" if isinstance(self._routes[signal], _GrpcRoute) else "http/protobuf"

    def endpoint(self, signal: Signal) -> str:
        route = self._routes[signal]
        return _display(route.endpoint if isinstance(route, _GrpcRoute) else route.url)

    def send(self, signal: Signal, body: bytes) -> SendResult:
        try:
            route = self._routes[signal]
            if isinstance(route, _GrpcRoute):
                return self._grpc_sender().send(route, signal, bytes(body))
            return self._http.send(route, signal, bytes(body))
        except Exception as exc:  # the contract: never raise; keep the request
            return SendResult("retry", "error", f"unexpected {_exception_text(exc)}")

    def _grpc_sender(self) -> GrpcSender:
        with self._grpc_lock:
            if self._grpc is None:
                from otelbridge.delivery.grpc_sender import GrpcSender

                self._grpc = GrpcSender()
            return self._grpc

    def close(self) -> None:
        self._http.close()
        with self._grpc_lock:
            if self._grpc is not None:
                self._grpc.close()


# --- discard and routing ---------------------------------------------------------------------
class DiscardTransport:
    """Accepts and drops everything (exporter ``none``)."""

    def endpoint(self, signal: Signal) -> str:
        return "discard"

    def send(self, signal: Signal, body: bytes) -> SendResult:
        return SendResult("ok", "discarded", f"{len(body)} bytes dropped")

    def close(self) -> None:
        return None


class RoutedTransport:
    """Each signal to its own transport (``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``)."""

    def __init__(self, routes: Mapping[Signal, Transport]) -> None:
        self.routes = dict(routes)

    def endpoint(self, signal: Signal) -> str:
        return self.routes[signal].endpoint(signal)

    def send(self, signal: Signal, body: bytes) -> SendResult:
        return self.routes[signal].send(signal, body)

    def close(self) -> None:
        for transport in {id(t): t for t in self.routes.values()}.values():
            transport.close()


def make_transport(
    exporters: Mapping[Signal, ExporterKind], environ: Mapping[str, str] | None = None
) -> RoutedTransport:
    """One transport per exporter kind in use, shared by the signals that use it: OTLP as the
    ``OTEL_EXPORTER_OTLP_*`` variables of ``environ`` (``os.environ`` by default) describe,
    the console, or nowhere."""
    from otelbridge.delivery.console import ConsoleTransport

    made: dict[ExporterKind, Transport] = {}
    for kind in exporters.values():
        if kind not in made:
            made[kind] = (
                OtlpTransport(environ) if kind == "otlp" else ConsoleTransport() if kind == "console"
                else DiscardTransport()
            )  # fmt: skip
    return RoutedTransport({signal: made[kind] for signal, kind in exporters.items()})
