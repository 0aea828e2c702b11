"""docs/settings.md, generated from :class:`otelbridge.settings.Settings`.

``python3 -m otelbridge.settings_doc > docs/settings.md`` rewrites the page; ``--check FILE``
exits 1 when FILE differs from what would be written (tests/test_docs.py fails on a stale page).
Each setting's variable, default and description come from ``Settings``; :data:`NOTES` adds what
an operator needs beyond the one-line description (a new setting needs no note to be listed).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Final

from pydantic import SecretStr

from otelbridge.settings import Settings, env_name

#: settings whose bytes default reads better with its unit beside it
_KIB: Final = 1024

#: more than the one-line description, by setting (keys are Settings' field names)
NOTES: Final[dict[str, str]] = {
    "exporter": (
        "`otlp`, `console` (a readable tree per call: `replay` per call it maps, `serve` per call as "
        "its root span leaves) or `none`, for both signals; `OTEL_TRACES_EXPORTER` / "
        "`OTEL_METRICS_EXPORTER` override it per signal and `replay --exporter` overrides all three"
    ),
    "export_phone_numbers": "masked: all digits but the last 4",
    "max_attribute_bytes": (
        "Tempo truncates at 2 KB by default; otelbridge cuts first and names what it cut in the "
        "span attribute `otelbridge.truncated_attributes`"
    ),
    "text_chunk_events": (
        "one event per streamed word or two, with its time and text; `false` gives smaller traces: "
        "the turn spans keep their text (`cartesia.turn.text`, `input.value` / `output.value`)"
    ),
    "metric_max_agents": (
        "an agent idle for an hour gives its place, and its series are dropped; see "
        "[cardinality.md](cardinality.md)"
    ),
    "log_metric_max_names": "later names count in `cartesia.log_metric.other`",
    "deployments_per_agent": (
        "on the TTFB, response latency, turn duration and call metrics (`cartesia.deployment.id`); "
        "older ones are counted in `otelbridge.deployments.folded`; `0` turns the id off (all `other`)"
    ),
    "webhook_secret": "`serve` refuses to start without a secret unless `--allow-unauthenticated`",
    "webhook_secret_file": "for Kubernetes Secrets; not together with `OTELBRIDGE_WEBHOOK_SECRET`",
    "allow_short_webhook_secret": "a shorter secret is refused otherwise: it can be guessed",
    "max_body_bytes": "an hour-long call's transcript is well under 2 MiB",
    "body_timeout": "a total deadline: a trickle does not extend it",
    "max_connections": (
        "kept 64 below the open-file limit, whose soft value is raised to the hard one at start"
    ),
    "admin_max_connections": ("so idle sockets and slow `/metrics` clients never fail a probe"),
    "min_free_bytes": "8 × the default body limit",
    "state_dir": (
        "relative to the working directory; holds `inbox.db`, `state.db`, `acks.db` and lock files; "
        "must be persistent (a volume in containers); created 0700, files 0600; refused when group- "
        "or world-writable (except a setgid volume of the process's own group, as `fsGroup` makes "
        "it) or when a state file is a symlink ([operate.md](operate.md#data-at-rest))"
    ),
    "database_url": (
        "e.g. `postgresql://user:password@host:5432/db?sslmode=require`: each replica receives, one "
        "leader processes, polls and sends; the password is redacted wherever it could appear; needs "
        "`pip install 'otelbridge[postgres]'` (in the image); see [postgres.md](postgres.md)"
    ),
    "database_url_file": "e.g. CloudNativePG's `<cluster>-app` `uri`; set only one of the two",
    "spool_max_bytes": "dropped requests are counted and logged (`SPOOL CAP REACHED`)",
    "retry_max_backoff": "a `Retry-After` up to 15 minutes is honoured",
    "cartesia_api_key": "turns on List Calls polling in `serve` ([commands.md](commands.md#polling))",
    "cartesia_api_key_file": "not together with `OTELBRIDGE_CARTESIA_API_KEY`",
    "cartesia_base_url": "`http://` only to this machine (`localhost`, `127.0.0.0/8`, `::1`)",
    "cartesia_version": "older versions' call shapes and status words are read too",
}

#: the standard OTEL_* variables otelbridge reads (otelbridge/delivery/environment.py), for
#: serve, replay, backfill and check alike
OTEL_ROWS: Final[tuple[tuple[str, str], ...]] = (
    (
        "`OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`",
        "`otlp`, `console` or `none`, per signal; unset: `OTELBRIDGE_EXPORTER`. "
        "`OTEL_METRICS_EXPORTER=none` for a traces-only backend (Jaeger, Phoenix): no metrics are "
        "sent, `/metrics` still serves them",
    ),
    (
        "`OTEL_EXPORTER_OTLP_ENDPOINT`",
        "base URL (`/v1/traces` and `/v1/metrics` are appended for HTTP); default "
        "`http://localhost:4318` (HTTP) or `http://localhost:4317` (gRPC)",
    ),
    (
        "`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`",
        "full per-signal URLs, used verbatim",
    ),
    (
        "`OTEL_EXPORTER_OTLP_PROTOCOL` (and `_TRACES_` / `_METRICS_` variants)",
        "`http/protobuf` (default) or `grpc`",
    ),
    (
        "`OTEL_EXPORTER_OTLP_HEADERS` (and `_TRACES_` / `_METRICS_` variants)",
        "e.g. `x-honeycomb-team=KEY` or `Authorization=Basic …` (credentials in the endpoint URL "
        "are refused)",
    ),
    (
        "`OTEL_EXPORTER_OTLP_HEADERS_FILE` (and `_TRACES_` / `_METRICS_` variants)",
        "a file holding the headers in the same format (a mounted Secret; newlines read as "
        "commas), instead of the variable of the same level",
    ),
    (
        "`OTEL_EXPORTER_OTLP_COMPRESSION` (and `_TRACES_` / `_METRICS_` variants)",
        "`gzip`, `deflate` or `none`",
    ),
    ("`OTEL_EXPORTER_OTLP_TIMEOUT` (and `_TRACES_` / `_METRICS_` variants)", "seconds"),
    (
        "`OTEL_EXPORTER_OTLP_CERTIFICATE`, `OTEL_EXPORTER_OTLP_INSECURE` (and variants)",
        "TLS: the CA bundle; plaintext gRPC",
    ),
    (
        "`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `OTEL_EXPORTER_OTLP_CLIENT_KEY` (and variants)",
        "mTLS",
    ),
    ("`OTEL_SERVICE_NAME`", "`service.name` unless `OTELBRIDGE_SERVICE_NAME` is set"),
    ("`OTEL_METRIC_EXPORT_INTERVAL`", "`serve`: milliseconds between metric exports (default 60000)"),
    (
        "`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`",
        "`cumulative` (default) or `delta`",
    ),
    (
        "`OTEL_RESOURCE_ATTRIBUTES`",
        "extra resource attributes, e.g. `deployment.environment=prod`; its `service.name` is used "
        "when neither variable above is set",
    ),
)

_HEAD: Final = """\
<!-- Generated by `python3 -m otelbridge.settings_doc` from otelbridge/settings.py: do not edit
here. Change the setting's description there (or its note in otelbridge/settings_doc.py), then
regenerate; tests/test_docs.py fails while this page is stale. -->

# Settings

Every setting is an environment variable with the `OTELBRIDGE_` prefix, or a key of the
`--config` file. Invalid values, unknown `OTELBRIDGE_*` variables or keys, and invalid `OTEL_*`
exporter variables stop otelbridge at start, with every problem listed at once, each with its
fix:

```
{report}
```

`otelbridge serve --help` lists the same settings; `otelbridge check` validates them and probes
the OTLP endpoints. Rewrite this page with:

```sh
python3 -m otelbridge.settings_doc > docs/settings.md
```

## The config file

`--config FILE` reads a TOML file whose keys are the settings below in lower case without the
prefix (`listen_port = 8080`), at the top level or all under `[otelbridge]`, and the standard
`OTEL_*` variables the same way under `[otel]` (`exporter_otlp_endpoint =
"https://api.honeycomb.io"` is `OTEL_EXPORTER_OTLP_ENDPOINT`). Precedence: command-line flags >
environment variables > the file > defaults. A key that is not a setting, a key beside an
`[otelbridge]` table and an unknown table are refused with the other problems. `config/` holds
a ready file per backend ([backends.md](backends.md)).

## `OTELBRIDGE_*` settings

| variable | default | description |
|---|---|---|
"""

#: an example of the report of invalid settings
_REPORT: Final = (
    "otelbridge: invalid settings (2 problems):\n"
    "  - OTELBRIDGE_EXPORTR: not an otelbridge setting. Fix: did you mean OTELBRIDGE_EXPORTER?\n"
    "  - OTELBRIDGE_TRANSCRIPT_TEXT='foo': Input should be 'keep', 'truncate' or 'drop'. Fix: set a "
    "valid value or unset it (keep | truncate | drop transcript text; default keep)"
)

_OTEL_HEAD: Final = """
## Where it sends: the `OTEL_*` variables

OTLP is configured with the standard variables, read in one place for `serve`, `replay`,
`backfill` and `check` alike:

| variable | meaning |
|---|---|
"""

_TAIL: Final = """
An `OTEL_EXPORTER_OTLP_*` variable otelbridge does not read (a misspelt
`OTEL_EXPORTER_OTLP_ENDPIONT`) gets a WARNING naming the nearest known one. At start, `serve`
sends an empty export to each OTLP endpoint (it delays neither start nor readiness) and logs one
WARNING with the URL and the fix for each that does not answer.
"""


def default_text(field: str) -> str:
    """A setting's default as the page shows it: ``unset``, or the value in backticks (with its
    size in KiB/MiB/GiB for a whole number of bytes)."""
    default = Settings.model_fields[field].default
    if default is None or isinstance(default, SecretStr) or default == "":
        return "unset"
    if isinstance(default, Enum):
        default = default.value
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    text = f"`{default}`"
    if isinstance(default, int) and field.endswith("_bytes") and default >= _KIB:
        for unit, size in (("GiB", _KIB**3), ("MiB", _KIB**2), ("KiB", _KIB)):
            if default % size == 0:
                return f"{text} ({default // size} {unit})"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_page() -> str:
    """The whole of docs/settings.md."""
    rows = []
    for field, info in Settings.model_fields.items():
        description = info.description or ""
        note = NOTES.get(field)
        text = _cell(description) + (f"; {note}" if note else "")
        rows.append(f"| `{env_name(field)}` | {default_text(field)} | {text} |\n")
    otel = [f"| {name} | {meaning} |\n" for name, meaning in OTEL_ROWS]
    return _HEAD.format(report=_REPORT) + "".join(rows) + _OTEL_HEAD + "".join(otel) + _TAIL


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    page = settings_page()
    if args[:1] == ["--check"] and len(args) == 2:
        if Path(args[1]).read_text(encoding="utf-8") != page:
            print(f"{args[1]} is stale: run python3 -m otelbridge.settings_doc > {args[1]}", file=sys.stderr)
            return 1
        return 0
    if args:
        print("usage: python3 -m otelbridge.settings_doc [--check FILE]", file=sys.stderr)
        return 2
    sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
