"""OTLP over gRPC: the one part of the transport that needs grpcio, imported only when a
signal's protocol is ``grpc`` (grpcio adds about 18 MB to a process that never uses it)."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]
from google.rpc.status_pb2 import Status as RpcStatus  # type: ignore[import-untyped]

from otelbridge.delivery.environment import Signal, Tls
from otelbridge.delivery.transport import (
    GRPC_METHODS,
    USER_AGENT,
    SendResult,
    _ConfigError,
    _GrpcRoute,
    _ok,
    _short,
)

_RETRY_GRPC: Final = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_GRPC_STATUS_DETAILS: Final = "grpc-status-details-bin"  # google.rpc.Status (the gRPC convention)
_GRPC_RETRY_INFO: Final = "google.rpc.retryinfo-bin"  # a bare RetryInfo (what the Python SDK reads)
_GRPC_COMPRESSION: Final[Mapping[str, Any]] = {
    "gzip": grpc.Compression.Gzip,
    "deflate": grpc.Compression.Deflate,
    "none": grpc.Compression.NoCompression,
}


def _identity(data: bytes) -> bytes:
    return data


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise _ConfigError(f"cannot read a TLS file: {type(exc).__name__}: {exc.strerror or exc}") from exc


def _grpc_retry_delay(trailing: Any) -> float | None:
    """RetryInfo.retry_delay from the trailing metadata: a google.rpc.Status in
    ``grpc-status-details-bin`` (the gRPC convention, what the Collector sends) or a bare
    RetryInfo in ``google.rpc.retryinfo-bin`` (what the Python SDK reads)."""
    for key, value in trailing or ():
        if not isinstance(value, bytes):
            continue
        try:
            if key == _GRPC_STATUS_DETAILS:
                for detail in RpcStatus.FromString(value).details:
                    if detail.Is(RetryInfo.DESCRIPTOR):
                        info = RetryInfo()
                        detail.Unpack(info)
                        return _duration(info)
            elif key == _GRPC_RETRY_INFO:
                return _duration(RetryInfo.FromString(value))
        except (DecodeError, ValueError, RuntimeError, TypeError):
            continue
    return None


def _duration(info: Any) -> float | None:
    if not info.HasField("retry_delay"):
        return None
    seconds = float(info.retry_delay.seconds) + float(info.retry_delay.nanos) / 1e9
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class GrpcSender:
    """One channel per (target, security) reused by both signals; closed by :meth:`close`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[tuple[str, bool, Tls], Any] = {}
        self._calls: dict[tuple[str, bool, Tls, str], Callable[..., Any]] = {}
        self._closed = False

    def _call(self, route: _GrpcRoute, signal: Signal) -> Callable[..., Any]:
        method = GRPC_METHODS[signal]
        key = (route.target, route.insecure, route.tls if not route.insecure else Tls())
        with self._lock:
            if self._closed:
                raise _ConfigError("transport closed", "closed")
            call = self._calls.get((*key, method))
            if call is not None:
                return call
            channel = self._channels.get(key)
            if channel is None:
                channel = self._channel(route)
                self._channels[key] = channel
            # The spooled bytes go out as they are: identity serializer, the answer parsed here.
            new_call: Callable[..., Any] = channel.unary_unary(
                method, request_serializer=_identity, response_deserializer=_identity
            )
            self._calls[(*key, method)] = new_call
            return new_call

    @staticmethod
    def _channel(route: _GrpcRoute) -> Any:
        options = [
            ("grpc.primary_user_agent", USER_AGENT),
            # A channel in reconnect backoff fails calls at once: keep that backoff short so
            # the caller's own retry finds a recovered backend soon.
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        if route.insecure:
            return grpc.insecure_channel(route.target, options=options)
        tls = route.tls
        if tls.client_key and not tls.client_certificate:
            raise _ConfigError("CLIENT_KEY is set without CLIENT_CERTIFICATE")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read_file(tls.ca_file) if tls.ca_file else None,
            private_key=_read_file(tls.client_key) if tls.client_key else None,
            certificate_chain=_read_file(tls.client_certificate) if tls.client_certificate else None,
        )
        return grpc.secure_channel(route.target, credentials, options=options)

    def send(self, route: _GrpcRoute, signal: Signal, body: bytes) -> SendResult:
        try:
            call = self._call(route, signal)
        except _ConfigError as exc:
            return SendResult("retry", exc.status, str(exc))
        try:
            answer: bytes = call(
                body,
                timeout=route.timeout,
                metadata=route.metadata,
                compression=_GRPC_COMPRESSION[route.compression],
            )
        except grpc.RpcError as error:
            return self._classify(error)
        return _ok("grpc OK", signal, answer if isinstance(answer, bytes) else b"")

    @staticmethod
    def _classify(error: Any) -> SendResult:
        code = error.code() if callable(getattr(error, "code", None)) else None
        name = getattr(code, "name", "UNKNOWN")
        details = error.details() if callable(getattr(error, "details", None)) else None
        trailing = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
        retry_after = _grpc_retry_delay(trailing)
        # RESOURCE_EXHAUSTED is retryable only when the server says it can recover, by sending
        # RetryInfo (OTLP specification); without it (e.g. a message over the size limit) it
        # would be retried forever.
        retryable = code in _RETRY_GRPC or (
            code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None
        )
        # The message leaves the status out: every reader prints "status: message".
        message = _short(str(details)) if details else "no details"
        return SendResult("retry" if retryable else "reject", f"grpc {name}", message, retry_after)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
            self._calls.clear()
        for channel in channels:
            with contextlib.suppress(Exception):  # closing is best effort
                channel.close()
