"""otelbridge's settings: ``OTELBRIDGE_*`` environment variables, read by pydantic-settings.

Every problem is reported at once (:class:`SettingsError`), each naming the variable, what is
wrong and how to fix it. An ``OTELBRIDGE_*`` variable that is not a setting is a problem too
(a typo would otherwise silently leave the default in force). The standard ``OTEL_*``
variables (endpoint, headers, protocol…) are read by :mod:`otelbridge.delivery.environment`;
a config file's ``[otel]`` table sets them.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import os
import tomllib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from otelbridge.delivery.cardinality import SeriesLimits
from otelbridge.delivery.environment import CONFIG_OTEL_VARS, KNOWN_OTLP_VARS, url_problem
from otelbridge.mapping.policy import (
    DEFAULT_MAX_ATTRIBUTE_BYTES,
    DEFAULT_SERVICE_NAME,
    DEFAULT_TEXT_MAX_CHARS,
    MappingOptions,
    TextPolicy,
)

ENV_PREFIX = "OTELBRIDGE_"
#: a shorter webhook secret can be guessed; refused unless OTELBRIDGE_ALLOW_SHORT_WEBHOOK_SECRET
MIN_WEBHOOK_SECRET_CHARS = 16
#: admin connections past OTELBRIDGE_ADMIN_MAX_CONNECTIONS that answer /healthz and /readyz only
ADMIN_PROBE_RESERVE = 8


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", case_sensitive=False, validate_default=True
    )

    service_name: Annotated[str, Field(min_length=1)] | None = Field(
        default=None,
        description=f"service.name of everything exported; else OTEL_SERVICE_NAME, "
        f"else {DEFAULT_SERVICE_NAME!r}",
    )
    service_instance_id: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="service.instance.id; a random UUID per process when unset"
    )
    exporter: Literal["otlp", "console", "none"] = Field(
        default="otlp", description="where spans and metrics go"
    )
    transcript_text: TextPolicy = Field(
        default=TextPolicy.KEEP, description="keep | truncate | drop transcript text"
    )
    transcript_max_chars: int = Field(
        default=DEFAULT_TEXT_MAX_CHARS, ge=1, description="characters kept when truncating"
    )
    export_phone_numbers: bool = Field(default=False, description="export telephony from/to unmasked")
    max_attribute_bytes: int = Field(
        default=DEFAULT_MAX_ATTRIBUTE_BYTES,
        ge=64,
        le=1_048_576,
        description="cap on any string attribute, in UTF-8 bytes",
    )
    text_chunk_events: bool = Field(
        default=True, description="export cartesia.text_chunk span events on turns (false: leave them out)"
    )
    metric_max_agents: int = Field(
        default=100,
        ge=1,
        description="agents whose id call metrics carry; the points of later ones read other",
    )
    metric_max_tool_names: int = Field(
        default=50, ge=1, description="tool names per agent in cartesia.tool_calls; later ones read other"
    )
    log_metric_max_names: int = Field(
        default=50, ge=1, description="LogMetric (and evaluation) names per agent turned into series"
    )
    log_metric_max_values: int = Field(
        default=20, ge=1, description="distinct values kept per string LogMetric"
    )
    deployments_per_agent: int = Field(
        default=20,
        ge=0,
        description="most recent deployments per agent (by first call) whose id metrics carry; older: other",
    )

    # --- otelbridge serve -------------------------------------------------------------
    listen_host: str = Field(
        default="127.0.0.1", description="address the webhook listener binds (0.0.0.0 in containers)"
    )
    listen_port: int = Field(default=8080, ge=0, le=65535, description="port of POST /webhooks/cartesia")
    admin_host: str = Field(
        default="127.0.0.1", description="address of the admin listener (/healthz, /readyz, /metrics)"
    )
    admin_port: int = Field(default=9464, ge=0, le=65535, description="port of the admin listener")
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="X-Webhook-Secret values accepted, comma-separated (several during rotation)",
    )
    webhook_secret_file: Path | None = Field(
        default=None, description="file holding the webhook secret(s), comma- or newline-separated"
    )
    allow_unauthenticated: bool = Field(
        default=False, description="accept webhooks without a secret (serve --allow-unauthenticated)"
    )
    allow_short_webhook_secret: bool = Field(
        default=False,
        description=f"accept a webhook secret shorter than {MIN_WEBHOOK_SECRET_CHARS} characters "
        "(one already configured in Cartesia)",
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="largest webhook body accepted, in bytes (413 beyond)",
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="largest request line plus headers, in bytes (431 beyond)",
    )
    max_headers: int = Field(
        default=100, ge=1, le=10_000, description="most header fields in a request (431 beyond)"
    )
    max_url_bytes: int = Field(
        default=8 * 1024, ge=256, le=1024 * 1024, description="longest request target, in bytes (414 beyond)"
    )
    head_timeout: float = Field(
        default=10.0, gt=0, description="seconds from a request's first byte to the end of its headers (408)"
    )
    body_timeout: float = Field(
        default=30.0, gt=0, description="seconds from the end of the headers to the end of the body (408)"
    )
    idle_timeout: float = Field(
        default=15.0,
        gt=0,
        description="seconds a connection may stay open without sending a request (closed); also keep-alive",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="open webhook connections at most, kept below the open-file limit (503 beyond)",
    )
    admin_max_connections: int = Field(
        default=64,
        ge=1,
        description="open admin connections at most; past it the oldest idle one is closed, and "
        f"{ADMIN_PROBE_RESERVE} more answer /healthz and /readyz only (503 beyond)",
    )
    admin_max_connections_per_client: int = Field(
        default=16,
        ge=0,
        description="open admin connections per client address at most; past it that client's oldest "
        "idle one is closed, else only /healthz and /readyz are answered (0: no per-client cap)",
    )
    admin_idle_timeout: float = Field(
        default=15.0,
        gt=0,
        description="seconds an admin connection may stay open without sending a request (closed); "
        "also keep-alive",
    )
    min_free_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="free space kept on the state volume, in bytes: below it webhooks get 503 and "
        "/readyz fails, so processing and trimming always have room (0: no floor)",
    )
    state_dir: Path = Field(
        default=Path("otelbridge-state"),
        description="directory of the SQLite state (inbox, spool, ledger); must be writable",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL libpq URI (postgresql://user:password@host:5432/db?sslmode=...); several "
        "replicas share it. Empty: SQLite in state_dir. libpq's PG* variables fill what it leaves out",
    )
    database_url_file: Path | None = Field(
        default=None, description="file holding the PostgreSQL URI (a mounted Secret's key)"
    )
    shutdown_timeout: float = Field(
        default=10.0, ge=0, description="seconds to drain and flush on SIGTERM/SIGINT"
    )
    spool_max_bytes: int = Field(
        default=1024 * 1024 * 1024,
        ge=1024 * 1024,
        description="cap on the spool of unsent OTLP requests, in bytes; oldest dropped beyond",
    )
    spool_max_age: float = Field(
        default=86_400.0, gt=0, description="seconds an unsent request is kept before it is dropped"
    )
    retry_initial_backoff: float = Field(
        default=1.0, gt=0, description="seconds before the first export retry (doubles, with jitter)"
    )
    retry_max_backoff: float = Field(default=60.0, gt=0, description="longest wait between export retries")
    call_timeout: float = Field(
        default=14_400.0,
        gt=0,
        description="seconds without news after which an unfinished call is exported as it stands",
    )
    state_retention: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description="seconds the ledger remembers an exported call (re-deliveries stay no-ops)",
    )
    # --- Cartesia API: polling and backfill -------------------------------------------
    cartesia_base_url: str = Field(default="https://api.cartesia.ai", description="Cartesia API base URL")
    cartesia_api_key: SecretStr | None = Field(
        default=None, description="Cartesia API key (Bearer); polling and backfill need it"
    )
    cartesia_api_key_file: Path | None = Field(default=None, description="file holding the Cartesia API key")
    cartesia_version: str = Field(
        default="2026-03-01",
        min_length=1,
        description="Cartesia-Version header (the call format depends on it)",
    )
    agent_ids: str = Field(
        default="", description="agents to poll, comma-separated; empty: discover them with GET /agents"
    )
    poll_interval: float = Field(
        default=60.0, ge=0, description="seconds between List Calls polls per agent; 0 turns polling off"
    )
    poll_concurrency: int = Field(default=4, ge=1, le=64, description="agents polled at the same time")
    agent_refresh_interval: float = Field(
        default=600.0, gt=0, description="seconds between GET /agents discoveries (when agent_ids is empty)"
    )
    running_call_give_up: float = Field(
        default=21_600.0,
        gt=0,
        description="seconds a listed unfinished call is re-read before it is given up",
    )
    evaluations: bool = Field(
        default=False,
        description="attach LLM-judge results (GET /agents/metrics/results) to the calls' traces",
    )
    log_format: Literal["text", "json"] = Field(default="text", description="text | json log lines")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="debug | info | warning | error"
    )

    def webhook_secrets(self) -> list[bytes]:
        """The accepted secrets (empty when none is configured); raises ``SettingsError``
        when the secret file cannot be read or holds none."""
        if self.webhook_secret is not None:
            raw = self.webhook_secret.get_secret_value()
            where = env_name("webhook_secret")
        elif self.webhook_secret_file is not None:
            where = f"{env_name('webhook_secret_file')}={str(self.webhook_secret_file)!r}"
            try:
                raw = self.webhook_secret_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise SettingsError(
                    [f"{where}: cannot read the file ({reason}). Fix: point it at a readable file"]
                ) from None
        else:
            return []
        secrets = [s.strip() for s in raw.replace("\n", ",").split(",") if s.strip()]
        if not secrets:
            raise SettingsError([f"{where}: holds no secret. Fix: put the webhook secret in it"])
        short = [i for i, s in enumerate(secrets, 1) if len(s) < MIN_WEBHOOK_SECRET_CHARS]
        if short and not self.allow_short_webhook_secret:
            which = "the secret" if len(secrets) == 1 else f"secret {', '.join(map(str, short))}"
            raise SettingsError(
                [
                    f"{where}: {which} is shorter than {MIN_WEBHOOK_SECRET_CHARS} characters (not shown). "
                    "Fix: set a longer one in Cartesia and here (e.g. openssl rand -hex 32), or set "
                    f"{env_name('allow_short_webhook_secret')}=true to accept it"
                ]
            )
        return [s.encode() for s in secrets]

    def agent_id_list(self) -> list[str]:
        return [a.strip() for a in self.agent_ids.split(",") if a.strip()]

    def cartesia_api_key_value(self) -> str | None:
        """The API key, from the variable or the file; raises ``SettingsError`` when the file
        cannot be read or is empty."""
        if self.cartesia_api_key is not None:
            return self.cartesia_api_key.get_secret_value().strip() or None
        if self.cartesia_api_key_file is None:
            return None
        return _read_secret_file("cartesia_api_key_file", self.cartesia_api_key_file, "the Cartesia API key")

    def database_url_value(self) -> str | None:
        """The PostgreSQL URI, from the variable or the file (None: SQLite); raises
        ``SettingsError`` when the file cannot be read or the value is not a PostgreSQL URI."""
        if self.database_url is not None:
            url, where = self.database_url.get_secret_value().strip(), env_name("database_url")
        elif self.database_url_file is not None:
            url = _read_secret_file("database_url_file", self.database_url_file, "the PostgreSQL URI")
            where = f"{env_name('database_url_file')}={str(self.database_url_file)!r}"
        else:
            return None
        if not url:
            return None
        if not url.startswith(("postgresql://", "postgres://")):
            raise SettingsError(
                [
                    f"{where}: not a PostgreSQL URI (it must start with postgresql://). Fix: set it as "
                    "postgresql://USER:PASSWORD@HOST:5432/DATABASE, or unset it to keep the state in SQLite"
                ]
            )
        return url

    def mapping_options(self) -> MappingOptions:
        return MappingOptions(
            text_policy=self.transcript_text,
            text_max_chars=self.transcript_max_chars,
            export_phone_numbers=self.export_phone_numbers,
            max_attribute_bytes=self.max_attribute_bytes,
            text_chunk_events=self.text_chunk_events,
        )

    def series_limits(self) -> SeriesLimits:
        return SeriesLimits(
            agents=self.metric_max_agents,
            tool_names=self.metric_max_tool_names,
            log_metric_names=self.log_metric_max_names,
            log_metric_values=self.log_metric_max_values,
            deployments=self.deployments_per_agent,
        )

    def resolved_service_name(self, environ: Mapping[str, str] | None = None) -> str:
        env = os.environ if environ is None else environ
        return self.service_name or env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME

    def resolved_instance_id(self) -> str:
        if self.service_instance_id is None:
            self.service_instance_id = str(uuid.uuid4())
        return self.service_instance_id


def _read_secret_file(field: str, path: Path, what: str) -> str:
    """The stripped contents of a ``*_FILE`` setting's file; ``SettingsError`` naming the setting
    when it cannot be read or is empty."""
    where = f"{env_name(field)}={str(path)!r}"
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SettingsError(
            [f"{where}: cannot read the file ({reason}). Fix: point it at a readable file"]
        ) from None
    if not value:
        raise SettingsError([f"{where}: the file is empty. Fix: put {what} in it"])
    return value


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


class SettingsError(Exception):
    """Invalid settings: ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        lines = [f"invalid settings ({count} problem{'s' if count != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        lines.append("`otelbridge serve --help` lists every setting with its default.")
        return "\n".join(lines)


def settings_help() -> str:
    """Every setting: its variable, default and meaning (the epilog of ``--help``)."""
    lines = [
        "settings (environment variables, or keys of the --config file in lower case without the prefix):"
    ]
    for field in Settings.model_fields:
        choices = _choices(field)
        values = f"; one of: {' | '.join(choices)}" if choices else ""
        lines.append(f"  {env_name(field)}  (default {_default_text(field)}{values})")
        lines.append(f"      {Settings.model_fields[field].description}")
    return "\n".join(lines)


def _choices(field: str) -> list[str]:
    """The values a setting takes when they are a fixed set (a Literal or an Enum), else []."""
    annotation = Settings.model_fields[field].annotation
    if get_origin(annotation) is Literal:
        return [str(v) for v in get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(member.value) for member in annotation]
    return []


def _default_text(field: str) -> str:
    default = Settings.model_fields[field].default
    return "unset" if default is None else str(getattr(default, "value", default)).lower()


#: fields whose values never appear in messages
_SECRET_FIELDS = frozenset({"webhook_secret", "cartesia_api_key", "database_url"})


def _field_hint(field: str) -> str:
    return f"{Settings.model_fields[field].description}; default {_default_text(field)}"


def _otel_equivalent(name: str) -> str | None:
    """The standard ``OTEL_*`` variable that ``name`` (an unknown setting, without the
    ``OTELBRIDGE_`` prefix, any case) most likely means: ``OTLP_ENDPOINT``,
    ``EXPORTER_OTLP_ENDPOINT`` and ``OTEL_EXPORTER_OTLP_ENDPOINT`` all mean
    ``OTEL_EXPORTER_OTLP_ENDPOINT``; ``TRACES_EXPORTER`` means ``OTEL_TRACES_EXPORTER``."""
    upper = name.upper()
    rest = upper.removeprefix("OTEL_")
    candidates = [f"OTEL_{rest}"]
    if rest.startswith("OTLP_"):
        candidates.append(f"OTEL_EXPORTER_{rest}")
    found = next((c for c in candidates if c in CONFIG_OTEL_VARS), None)
    if found is not None:
        return found
    if rest.startswith(("OTLP_", "EXPORTER_OTLP_")):  # an OTLP exporter variable, misspelt
        close = difflib.get_close_matches(candidates[-1], sorted(KNOWN_OTLP_VARS), n=1, cutoff=0.8)
        return close[0] if close else "OTEL_EXPORTER_OTLP_ENDPOINT"
    return None


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    known = {env_name(f) for f in Settings.model_fields}
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            otel = _otel_equivalent(upper.removeprefix(ENV_PREFIX))
            if otel is not None:
                fix = (
                    f"did you mean {otel}? (OTLP export and the resource are configured by the standard "
                    "OTEL_* variables; otelbridge has no OTELBRIDGE_ name for them)"
                )
            else:
                close = difflib.get_close_matches(upper, sorted(known), n=1)
                fix = f"did you mean {close[0]}?" if close else "remove it"
            problems.append(f"{name}: not an otelbridge setting. Fix: {fix}")
    return problems


#: the table of OTEL_* variables in a config file
OTEL_TABLE = "otel"
_SETTINGS_TABLE = "otelbridge"


def _unknown_key(where: str, key: str, known: Mapping[str, object], what: str) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    fix = f"did you mean {close[0]}?" if close else "remove it"
    return f"{where}: key {key!r} is not {what}. Fix: {fix}"


def _read_config_file(path: Path) -> tuple[dict[str, object], dict[str, str], list[str]]:
    """(settings, OTEL_* variables, problems) of a TOML config file: the settings' names in
    lower case without the prefix (``listen_port = 8080``), at the top level or all under an
    ``[otelbridge]`` table; the standard ``OTEL_*`` variables the same way under ``[otel]``
    (``exporter_otlp_endpoint = "https://…"``)."""
    where = f"--config {str(path)!r}"
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        return {}, {}, [f"{where}: cannot read the file ({exc.strerror}). Fix: point --config at a TOML file"]
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return {}, {}, [f"{where}: not valid TOML ({exc}). Fix: correct the file"]
    problems = []
    otel_table = data.pop(OTEL_TABLE, {})
    if _SETTINGS_TABLE in data:
        table = data.pop(_SETTINGS_TABLE)
        for key in data:  # a key beside [otelbridge] would otherwise be ignored silently
            problems.append(
                f"{where}: {key!r} is outside the [otelbridge] table. Fix: move it into [otelbridge]"
                if not isinstance(data[key], dict)
                else f"{where}: table [{key}] is not known. Fix: settings go in [otelbridge], "
                "OTEL_* variables in [otel]"
            )
    else:
        table = data
    if not isinstance(table, dict):
        return {}, {}, [f"{where}: [otelbridge] is not a table. Fix: use key = value lines"]
    values: dict[str, object] = {}
    for key, value in table.items():
        if isinstance(value, dict) and table is data:
            problems.append(
                f"{where}: table [{key}] is not known. Fix: settings go at the top level or in "
                "[otelbridge], OTEL_* variables in [otel]"
            )
        elif key not in Settings.model_fields:
            variable = _otel_equivalent(key)
            if variable is not None:
                problems.append(
                    f"{where}: key {key!r} is the OTEL_* variable {variable}, not an otelbridge setting. "
                    f"Fix: move it to the [otel] table, as {variable.removeprefix('OTEL_').lower()} = ..."
                )
            else:
                problems.append(_unknown_key(where, key, Settings.model_fields, "an otelbridge setting"))
        else:
            values[key] = value
    otel: dict[str, str] = {}
    if not isinstance(otel_table, dict):
        return values, {}, [*problems, f"{where}: [otel] is not a table. Fix: use key = value lines"]
    known = {name.removeprefix("OTEL_").lower(): name for name in CONFIG_OTEL_VARS}
    for key, value in otel_table.items():
        if key not in known and key.upper() in CONFIG_OTEL_VARS:
            short = key.upper().removeprefix("OTEL_").lower()
            problems.append(
                f"{where} [otel]: key {key!r} is written as the variable's name. Fix: {short} = ... "
                "(the name without OTEL_, in lower case)"
            )
        elif key not in known:
            problems.append(_unknown_key(f"{where} [otel]", key, known, "an OTEL_* variable it reads"))
        elif isinstance(value, dict | list):
            problems.append(f'{where} [otel]: {key!r} is not a string. Fix: {key} = "value"')
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            otel[known[key]] = text
    return values, otel, problems


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Read the settings; raise :class:`SettingsError` listing every problem.

    Precedence: ``overrides`` (command-line flags) > ``OTELBRIDGE_*`` environment variables >
    the TOML ``config_file`` > defaults. The file's ``[otel]`` values become the ``OTEL_*``
    variables they name, unless the environment sets them."""
    problems = _unknown_variables(os.environ)
    from_file: dict[str, object] = {}
    if config_file is not None:
        from_file, otel, file_problems = _read_config_file(config_file)
        problems += file_problems
        from_file = {k: v for k, v in from_file.items() if _getenv_ci(env_name(k)) is None}
        for name, value in otel.items():  # the environment wins, as for the settings
            os.environ.setdefault(name, value)
    values = {**from_file, **overrides}
    for field in ("webhook_secret", "cartesia_api_key", "database_url"):
        if all(f in values or _getenv_ci(env_name(f)) for f in (field, f"{field}_file")):
            problems.append(
                f"{env_name(field)} and {env_name(field + '_file')} are both set. Fix: set only one of them"
            )
    settings: Settings | None = None
    try:
        settings = Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else ""
            if field in Settings.model_fields:
                name = env_name(field)
                if field in overrides:
                    source, shown = f"{name} (command line)", overrides[field]
                elif field in from_file:
                    source, shown = f"{name} (config key {field!r})", from_file[field]
                else:
                    source, shown = name, _getenv_ci(name)
                value = "<hidden>" if field in _SECRET_FIELDS else repr(shown)
                problems.append(
                    f"{source}={value}: {error['msg']}. Fix: set a valid value or unset it "
                    f"({_field_hint(field)})"
                )
            else:
                problems.append(f"{field or 'settings'}: {error['msg']}. Fix: correct the value")
    if settings is not None:
        problems += _base_url_problems(settings.cartesia_base_url)
    if problems:
        raise SettingsError(problems)
    assert settings is not None
    return settings


def _base_url_problems(url: str) -> list[str]:
    """OTELBRIDGE_CARTESIA_BASE_URL: a valid http(s) URL, plain http only to this machine (the
    API key travels in every request)."""
    name = env_name("cartesia_base_url")
    fix = f"Fix: e.g. {Settings.model_fields['cartesia_base_url'].default}"
    if not url.lower().startswith(("http://", "https://")):
        return [f"{name}={url!r}: not an http(s) URL. {fix}"]
    problem = url_problem(url)
    if problem is not None:
        return [f"{name}={url!r}: {problem}. {fix}"]
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return [f"{name}=<not shown>: credentials in the URL are not used. Fix: remove them ({fix[5:]})"]
    if parts.scheme.lower() == "http" and not _is_loopback(parts.hostname or ""):
        return [
            f"{name}={url!r}: plain http would send the API key unencrypted. {fix} "
            "(http:// only to this machine: localhost, 127.0.0.0/8, ::1)"
        ]
    return []


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _getenv_ci(name: str) -> str | None:
    return next((v for k, v in os.environ.items() if k.upper() == name), None)
