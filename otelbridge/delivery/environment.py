"""The standard ``OTEL_*`` variables, read in this one place for ``serve``, ``replay``,
``backfill`` and ``check`` alike: where each signal goes (``OTEL_TRACES_EXPORTER`` /
``OTEL_METRICS_EXPORTER``), the OTLP exporter variables (``OTEL_EXPORTER_OTLP_*``, the
per-signal one first, then the general one, as the SDK reads them), metric temporality and
interval, and every problem with them, each naming the variable and the fix.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, get_args
from urllib.parse import urlsplit

from opentelemetry.util.re import parse_env_headers

Signal = Literal["traces", "metrics"]
SIGNALS: Final[tuple[Signal, ...]] = ("traces", "metrics")
ExporterKind = Literal["otlp", "console", "none"]
EXPORTER_KINDS: Final[tuple[ExporterKind, ...]] = get_args(ExporterKind)
Temporality = Literal["cumulative", "delta"]
Compression = Literal["gzip", "deflate", "none"]

PROTOCOLS: Final = ("http/protobuf", "grpc")
COMPRESSIONS: Final[tuple[Compression, ...]] = get_args(Compression)
DEFAULT_TIMEOUT_S: Final = 10.0
DEFAULT_HTTP_ENDPOINT: Final = "http://localhost:4318"
DEFAULT_GRPC_ENDPOINT: Final = "http://localhost:4317"
TEMPORALITY_VAR: Final = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
INTERVAL_VAR: Final = "OTEL_METRIC_EXPORT_INTERVAL"
DEFAULT_INTERVAL_MS: Final = 60_000
EXPORTER_VARS: Final[Mapping[Signal, str]] = {
    "traces": "OTEL_TRACES_EXPORTER",
    "metrics": "OTEL_METRICS_EXPORTER",
}

_PREFIXES: Final = ("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", "OTEL_EXPORTER_OTLP_METRICS_")
_SUFFIXES: Final = (
    "ENDPOINT", "PROTOCOL", "HEADERS", "HEADERS_FILE", "COMPRESSION", "TIMEOUT", "CERTIFICATE",
    "CLIENT_CERTIFICATE", "CLIENT_KEY", "INSECURE",
)  # fmt: skip
#: every OTEL_EXPORTER_OTLP_* variable otelbridge reads (a name outside it is a typo or unsupported)
KNOWN_OTLP_VARS: Final = frozenset(
    {f"{prefix}{suffix}" for prefix in _PREFIXES for suffix in _SUFFIXES} | {TEMPORALITY_VAR}
)
#: the OTEL_* variables a config file's [otel] table may set
CONFIG_OTEL_VARS: Final = KNOWN_OTLP_VARS | {
    *EXPORTER_VARS.values(), INTERVAL_VAR, "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
}  # fmt: skip
# One name=value entry as opentelemetry.util.re.parse_env_headers(liberal=True) accepts it. Entries
# that do not match are dropped here, before that function would log them (values included).
_HEADER_ENTRY: Final = re.compile(r"[ \t]*[!#-'*+\-.0-9A-Z^-z|~]+[ \t]*=[ \t]*[ !#-+\--:<-\[\]-~]*[ \t]*")
_TIMEOUT_MAX_S: Final = 300.0


@dataclass(frozen=True, slots=True)
class Tls:
    ca_file: str | None = None
    client_certificate: str | None = None
    client_key: str | None = None


class OtelEnvironment:
    """The ``OTEL_*`` variables of ``environ`` (``os.environ`` by default), as the SDK reads them."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def get(self, name: str) -> str | None:
        value = self._environ.get(name)
        return value.strip() if value and value.strip() else None

    def setting(self, signal: Signal, name: str) -> str | None:
        """``OTEL_EXPORTER_OTLP_{SIGNAL}_{name}``, else ``OTEL_EXPORTER_OTLP_{name}``."""
        return self.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}") or self.get(
            f"OTEL_EXPORTER_OTLP_{name}"
        )

    # --- where each signal goes ---------------------------------------------------------
    def exporter(self, signal: Signal, default: ExporterKind = "otlp") -> ExporterKind:
        """``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``, else ``default`` (otelbridge's
        own ``OTELBRIDGE_EXPORTER``). An unsupported value (reported by :func:`problems`) reads
        as the default."""
        value = (self.get(EXPORTER_VARS[signal]) or "").lower()
        for kind in EXPORTER_KINDS:
            if value == kind:
                return kind
        return default

    def exporters(self, default: ExporterKind = "otlp") -> dict[Signal, ExporterKind]:
        return {signal: self.exporter(signal, default) for signal in SIGNALS}

    # --- OTLP ---------------------------------------------------------------------------
    def protocol(self, signal: Signal) -> Literal["http/protobuf", "grpc"]:
        # Anything but grpc (an unsupported value is reported by problems()) is http/protobuf.
        return "grpc" if (self.setting(signal, "PROTOCOL") or "").lower() == "grpc" else "http/protobuf"

    def http_url(self, signal: Signal) -> str:
        """The per-signal endpoint verbatim (as the SDK and the specification use it), else
        the general one with ``/v1/{signal}`` appended."""
        specific = self.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
        if specific:
            return specific
        base = self.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_HTTP_ENDPOINT
        return f"{base.rstrip('/')}/v1/{signal}"

    def grpc_endpoint(self, signal: Signal) -> str:
        return self.setting(signal, "ENDPOINT") or DEFAULT_GRPC_ENDPOINT

    def endpoint(self, signal: Signal) -> str:
        """Where ``signal`` goes, as configured (for messages: see transport's display form)."""
        return self.grpc_endpoint(signal) if self.protocol(signal) == "grpc" else self.http_url(signal)

    def timeout(self, signal: Signal) -> float:
        raw = self.setting(signal, "TIMEOUT")
        try:
            value = float(raw) if raw is not None else DEFAULT_TIMEOUT_S
        except ValueError:
            return DEFAULT_TIMEOUT_S
        return value if math.isfinite(value) and value > 0 else DEFAULT_TIMEOUT_S

    def compression(self, signal: Signal) -> Compression:
        value = (self.setting(signal, "COMPRESSION") or "none").lower()
        return next((c for c in COMPRESSIONS if c == value), "none")

    def headers(self, signal: Signal) -> dict[str, str]:
        """General headers, then the per-signal ones on top (key by key). Keys lower-cased.
        Each level is ``…_HEADERS``, else the file named by ``…_HEADERS_FILE`` (a mounted
        Secret: the same format, newlines read as commas); one that cannot be read adds none
        (:meth:`problems` reports it)."""
        merged: dict[str, str] = {}
        for prefix in ("OTEL_EXPORTER_OTLP_", f"OTEL_EXPORTER_OTLP_{signal.upper()}_"):
            raw = self._headers_text(prefix)
            if raw is None:
                continue
            valid = [entry for entry in raw.split(",") if _HEADER_ENTRY.fullmatch(entry)]
            merged.update(parse_env_headers(",".join(valid), liberal=True))
        return merged

    def _headers_text(self, prefix: str) -> str | None:
        """``{prefix}HEADERS``, else the contents of ``{prefix}HEADERS_FILE`` (None when unset
        or unreadable)."""
        value = self.get(f"{prefix}HEADERS")
        if value is not None:
            return value
        path = self.get(f"{prefix}HEADERS_FILE")
        if path is None:
            return None
        try:
            text = _read_headers_file(path)
        except (OSError, UnicodeDecodeError):
            return None
        return text or None

    def header_values(self) -> list[str]:
        """Every configured OTLP header value (they carry keys: logs redact them)."""
        return [v for signal in SIGNALS for v in self.headers(signal).values() if v]

    def tls(self, signal: Signal) -> Tls:
        return Tls(
            self.setting(signal, "CERTIFICATE"),
            self.setting(signal, "CLIENT_CERTIFICATE"),
            self.setting(signal, "CLIENT_KEY"),
        )

    # --- metrics ------------------------------------------------------------------------
    def temporality(self) -> Temporality:
        return "delta" if (self.get(TEMPORALITY_VAR) or "").lower() == "delta" else "cumulative"

    def metric_interval_s(self) -> float:
        """Seconds between metric collections (the variable is in milliseconds)."""
        value = self.get(INTERVAL_VAR)
        return (float(value) if value else DEFAULT_INTERVAL_MS) / 1000.0

    # --- problems -----------------------------------------------------------------------
    def problems(self, *, otlp: bool = True) -> list[str]:
        """Every invalid ``OTEL_*`` value otelbridge reads, each naming the variable and the
        fix; the OTLP exporter variables only when ``otlp`` (some signal goes over OTLP)."""
        problems = self._exporter_problems() + self._metric_problems()
        if otlp:
            problems += self._otlp_problems()
        return problems

    def unknown_variables(self) -> list[str]:
        """``OTEL_EXPORTER_OTLP_*`` variables otelbridge does not read, with the nearest known
        name: warnings, not errors (another OpenTelemetry program may share the environment)."""
        warnings = []
        for name in sorted(self._environ):
            upper = name.upper()
            if upper.startswith("OTEL_EXPORTER_OTLP_") and upper not in KNOWN_OTLP_VARS:
                close = difflib.get_close_matches(upper, sorted(KNOWN_OTLP_VARS), n=1, cutoff=0.8)
                if upper.startswith("OTEL_EXPORTER_OTLP_LOGS_"):
                    fix = "otelbridge sends no logs over OTLP; remove it"
                else:
                    fix = f"did you mean {close[0]}?" if close else "otelbridge does not read it; remove it"
                warnings.append(f"{name}: not an OTLP exporter variable otelbridge reads. Fix: {fix}")
        return warnings

    def _exporter_problems(self) -> list[str]:
        problems = []
        for signal, name in EXPORTER_VARS.items():
            value = self.get(name)
            if value is None or value.lower() in EXPORTER_KINDS:
                continue
            extra = ""
            if signal == "metrics" and value.lower() == "prometheus":
                extra = " (/metrics on the admin port is always served)"
            problems.append(
                f"{name}={value!r}: unsupported{extra}. Fix: use otlp, console or none "
                f"(none sends no {signal}, e.g. for a traces-only backend)"
            )
        return problems

    def _metric_problems(self) -> list[str]:
        problems = []
        value = self.get(TEMPORALITY_VAR)
        if value and value.lower() not in ("cumulative", "delta", "lowmemory"):
            problems.append(f"{TEMPORALITY_VAR}={value!r}: unsupported. Fix: use cumulative or delta")
        value = self.get(INTERVAL_VAR)
        if value:
            try:
                ok = float(value) > 0 and math.isfinite(float(value))
            except ValueError:
                ok = False
            if not ok:
                problems.append(
                    f"{INTERVAL_VAR}={value!r}: not a positive number of milliseconds. Fix: e.g. 60000"
                )
        return problems

    def _each(self, suffix: str) -> list[tuple[str, str]]:
        """(name, value) of the set ``OTEL_EXPORTER_OTLP[_SIGNAL]_{suffix}`` variables."""
        return [(n, v) for n in (f"{p}{suffix}" for p in _PREFIXES) if (v := self.get(n)) is not None]

    def _otlp_problems(self) -> list[str]:
        problems: list[str] = []
        for name, value in self._each("PROTOCOL"):
            if value not in PROTOCOLS:
                problems.append(f"{name}={value!r}: unsupported. Fix: use http/protobuf or grpc")
        for name, value in self._each("TIMEOUT"):
            try:
                seconds = float(value)
            except ValueError:
                seconds = math.nan
            if not (math.isfinite(seconds) and seconds > 0):
                problems.append(f"{name}={value!r}: not a positive number of seconds. Fix: e.g. 10")
            elif seconds > _TIMEOUT_MAX_S:
                problems.append(
                    f"{name}={value!r}: Python's OTLP exporters read seconds (the specification says "
                    f"milliseconds); {seconds:g} s looks like milliseconds. Fix: e.g. 10"
                )
        for name, value in self._each("COMPRESSION"):
            if value.lower() not in COMPRESSIONS:
                problems.append(f"{name}={value!r}: unsupported. Fix: use gzip, deflate or none")
        for name, value in self._each("ENDPOINT"):
            if not value.startswith(("http://", "https://")):
                problems.append(f"{name}={value!r}: not an http(s) URL. Fix: e.g. http://localhost:4318")
                continue
            problem = url_problem(value)
            if problem is not None:
                problems.append(f"{name}={_shown_url(value)!r}: {problem}. Fix: e.g. http://localhost:4318")
            elif _has_userinfo(value):
                # httpx would turn them into an Authorization header replacing the configured
                # one, and they would not be redacted: refused.
                problems.append(
                    f"{name}={_shown_url(value)!r}: credentials in the URL are not used. Fix: remove "
                    "them and put them in OTEL_EXPORTER_OTLP_HEADERS (or OTEL_EXPORTER_OTLP_HEADERS_FILE), "
                    "e.g. authorization=Basic <base64 of user:password>"
                )
        for name, value in self._each("INSECURE"):
            if value.lower() not in ("true", "false"):
                problems.append(f"{name}={value!r}: not true or false. Fix: true (plaintext gRPC) or false")
        for suffix in ("CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"):
            for name, value in self._each(suffix):
                if not (os.path.isfile(value) and os.access(value, os.R_OK)):
                    problems.append(
                        f"{name}={value!r}: no readable file there. Fix: the path of a PEM file "
                        "readable by this process"
                    )
        reported: set[str] = set()
        for signal in SIGNALS:
            specific = f"OTEL_EXPORTER_OTLP_{signal.upper()}_"
            key_name = next(
                (n for n in (f"{specific}CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY") if self.get(n)), None
            )
            has_certificate = self.setting(signal, "CLIENT_CERTIFICATE") is not None
            if key_name is not None and not has_certificate and key_name not in reported:
                reported.add(key_name)
                problems.append(
                    f"{key_name}={self.get(key_name)!r}: a client key without a client certificate "
                    f"({signal}). Fix: set OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE (or the per-signal one) too"
                )
        problems += self._headers_file_problems()
        for name, value in self._each("HEADERS"):
            problems += self._header_problems(f"{name}=<not shown>", value)
        for signal in SIGNALS:
            name = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
            endpoint = self.get(name)
            if (
                endpoint is None
                or self.protocol(signal) == "grpc"
                or not endpoint.startswith(("http://", "https://"))
                or url_problem(endpoint) is not None
            ):
                continue
            path = urlsplit(endpoint).path
            if path.count(f"/v1/{signal}") > 1:
                problems.append(
                    f"{name}={_shown_url(endpoint)!r}: the signal path /v1/{signal} is there twice. Fix: "
                    f"keep one (…/v1/{signal}: a per-signal endpoint is used as it is)"
                )
            elif path in ("", "/"):
                problems.append(
                    f"{name}={endpoint!r}: a per-signal endpoint is used as it is, so {signal} would be "
                    f"posted to '/'. Fix: {endpoint.rstrip('/')}/v1/{signal} (or set "
                    "OTEL_EXPORTER_OTLP_ENDPOINT, which gets the path appended)"
                )
        problems += self._doubled_path_problems()
        return problems

    def _doubled_path_problems(self) -> list[str]:
        """A base ``OTEL_EXPORTER_OTLP_ENDPOINT`` that already ends in a signal path: it gets
        ``/v1/{signal}`` appended (``…/v1/traces/v1/traces``), a 404 at every export."""
        name = "OTEL_EXPORTER_OTLP_ENDPOINT"
        base = self.get(name)
        if (
            base is None
            or not base.startswith(("http://", "https://"))
            or url_problem(base) is not None
            or _has_userinfo(base)  # reported first: one problem at a time per variable
        ):
            return []
        path = urlsplit(base).path.rstrip("/")
        suffix = next((f"/v1/{s}" for s in (*SIGNALS, "logs") if path.endswith(f"/v1/{s}")), None)
        appended = [
            signal
            for signal in SIGNALS
            if self.protocol(signal) == "http/protobuf"
            and self.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") is None
        ]
        if suffix is None or not appended:
            return []
        shown = _shown_url(base)
        where = " and ".join(f"{path}/v1/{signal}" for signal in appended)
        first = appended[0]
        return [
            f"{name}={shown!r}: the base endpoint gets /v1/<signal> appended, so exports would go to "
            f"{where} (a signal path on top of a signal path). Fix: drop {suffix} from it "
            f"({shown.rstrip('/').removesuffix(suffix)}), or put the full URL in "
            f"OTEL_EXPORTER_OTLP_{first.upper()}_ENDPOINT (used as it is)"
        ]

    def _headers_file_problems(self) -> list[str]:
        """``…_HEADERS_FILE`` set beside ``…_HEADERS``, unreadable, or holding a bad entry."""
        problems: list[str] = []
        for prefix in _PREFIXES:
            variable, file_variable = f"{prefix}HEADERS", f"{prefix}HEADERS_FILE"
            path = self.get(file_variable)
            if path is None:
                continue
            if self.get(variable) is not None:
                problems.append(f"{variable} and {file_variable} are both set. Fix: set only one of them")
                continue
            try:
                text = _read_headers_file(path)
            except (OSError, UnicodeDecodeError) as exc:
                reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else "not UTF-8 text"
                problems.append(
                    f"{file_variable}={path!r}: cannot read the file ({reason}). Fix: point it at a "
                    "readable file of name=value pairs (e.g. a mounted Secret's key)"
                )
                continue
            if text:
                problems += self._header_problems(f"{file_variable}={path!r}", text)
        return problems

    @staticmethod
    def _header_problems(where: str, value: str) -> list[str]:
        """The entries of a headers value that are not name=value (the value is not shown:
        headers carry secrets)."""
        bad = [
            str(i)
            for i, entry in enumerate(value.split(","), 1)
            if entry.strip() and not _HEADER_ENTRY.fullmatch(entry)
        ]
        if not bad:
            return []
        return [
            f"{where}: entry {', '.join(bad)} is not name=value and would be dropped. "
            "Fix: comma-separated name=value pairs, e.g. x-api-key=KEY,x-team=TEAM; "
            "percent-encode commas, quotes, semicolons and backslashes in values"
        ]


def _read_headers_file(path: str) -> str:
    """The headers of an ``…_HEADERS_FILE``: the variable's format, lines joined by commas."""
    with open(path, encoding="utf-8") as f:
        text = f.read(1024 * 1024)
    return ",".join(line.strip() for line in text.splitlines() if line.strip())


def url_problem(url: str) -> str | None:
    """What makes ``url`` unusable (a malformed IPv6 address, a bad port, no host), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if not parts.hostname:
        return "not a valid URL (no host)"
    return None


def _has_userinfo(url: str) -> bool:
    return "@" in urlsplit(url).netloc


def _shown_url(url: str) -> str:
    """``url`` with any user info replaced (a password is not shown)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc = rest[:end]
    if "@" in netloc:
        netloc = "<credentials>@" + netloc.rsplit("@", 1)[1]
    return f"{scheme}://{netloc}{rest[end:]}"
