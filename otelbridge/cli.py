"""The ``otelbridge`` command line."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from otelbridge import __version__
from otelbridge.delivery.environment import SIGNALS, ExporterKind, OtelEnvironment, Signal
from otelbridge.settings import Settings, SettingsError, load_settings, settings_help

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: serve: a listen/admin port or the state directory is held by another process (retry later)
EXIT_IN_USE = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otelbridge",
        description="Cartesia Line voice-agent calls as OpenTelemetry traces and metrics.",
    )
    parser.add_argument("--version", action="version", version=f"otelbridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    replay = commands.add_parser(
        "replay",
        help="map saved calls or webhook streams and export them",
        description="Read List Calls responses, Get Call objects, JSON arrays of calls and "
        "webhook streams (JSON lines), map every call to a trace and export it over OTLP "
        "(configured by the standard OTEL_EXPORTER_OTLP_* variables) or print it.",
    )
    replay.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    _config_option(replay)
    replay.add_argument(
        "--exporter",
        choices=("otlp", "console", "none"),
        help="override OTELBRIDGE_EXPORTER (default otlp)",
    )
    serve = commands.add_parser(
        "serve",
        help="receive Cartesia webhooks and export every call over OTLP (the daemon)",
        description="Receive Cartesia webhooks on POST /webhooks/cartesia, store them durably, "
        "map every call to a trace as it happens and export it over OTLP; /healthz, /readyz and "
        "/metrics on the admin port. Settings: OTELBRIDGE_* variables (below) or --config; OTLP: "
        "the standard OTEL_EXPORTER_OTLP_* variables, OTEL_TRACES_EXPORTER and OTEL_METRICS_EXPORTER. "
        "Exit 2 for invalid settings, 3 when a port or the state directory is in use by another process.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check = commands.add_parser(
        "check",
        help="validate the settings and probe the OTLP endpoints",
        description="Report every settings problem at once, check the state directory is "
        "writable and send an empty export to each OTLP endpoint. Exit 0 when all is well, "
        "1 when a probe fails, 2 for invalid settings. Takes the options of serve.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for command in (serve, check):
        _config_option(command)
        command.add_argument(
            "--allow-unauthenticated",
            action="store_true",
            default=None,
            help="accept webhooks without X-Webhook-Secret (only behind a trusted proxy)",
        )
    backfill = commands.add_parser(
        "backfill",
        help="export past calls from the List Calls API (resumable)",
        description="Page through List Calls (newest first) for the named agents (all agents when "
        "none is named, or OTELBRIDGE_AGENT_IDS), store every call in the state directory and export "
        "it. Rerun the same command after Ctrl-C or a failure to resume; nothing is exported twice.",
    )
    _config_option(backfill)
    backfill.add_argument("--agent-id", action="append", default=[], metavar="ID", help="repeatable")
    backfill.add_argument(
        "--since", metavar="TIME", help="only calls started at or after TIME (RFC 3339 or YYYY-MM-DD)"
    )
    backfill.add_argument(
        "--until", metavar="TIME", help="only calls started before TIME (RFC 3339 or YYYY-MM-DD)"
    )
    backfill.add_argument(
        "--dry-run", action="store_true", help="count what would be exported; store nothing"
    )
    drain = commands.add_parser(
        "drain",
        help="process and send what a stopped serve left in the state directory, then exit",
        description="Take the SQLite state in OTELBRIDGE_STATE_DIR (whatever OTELBRIDGE_DATABASE_URL "
        "says), process every stored webhook and send every spooled export, then exit: 0 when the "
        "directory holds nothing unsent, 1 when the backend stopped taking exports (run it again), "
        "3 while a serve still runs on it. The step that moves an installation to PostgreSQL "
        "(docs/postgres.md).",
    )
    _config_option(drain)
    drain.add_argument(
        "--stall",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up when the spool has not shrunk for this long (default 60)",
    )
    return parser


def _time_arg(option: str, value: str | None) -> tuple[int | None, str | None]:
    """(ns, problem) of a --since/--until value."""
    if value is None:
        return None, None
    from otelbridge.cartesia.timestamps import parse_rfc3339_ns

    text = value.strip()
    if len(text) == 10:
        text += "T00:00:00Z"
    try:
        return parse_rfc3339_ns(text), None
    except ValueError:
        return None, f"{option} {value!r}: not a time. Fix: use RFC 3339 (2026-11-01T00:00:00Z) or YYYY-MM-DD"


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file of settings (the OTELBRIDGE_* names in lower case without the prefix, "
        "optionally under [otelbridge]); OTELBRIDGE_* variables win",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from otelbridge.logs import CommandFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(CommandFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    overrides: dict[str, object] = {}
    if getattr(args, "exporter", None):
        overrides["exporter"] = args.exporter
    if getattr(args, "allow_unauthenticated", None):
        overrides["allow_unauthenticated"] = True
    problems: list[str] = []
    settings = None
    try:
        settings = load_settings(getattr(args, "config", None), **overrides)
    except SettingsError as exc:
        problems += exc.problems
    environment = OtelEnvironment()
    exporters = _exporters(environment, settings, getattr(args, "exporter", None))
    # The OTEL_* problems too (all problems at once); the OTLP ones only when OTLP is used.
    problems += environment.problems(otlp="otlp" in exporters.values())
    if args.command == "backfill":
        for option in ("since", "until"):
            _, problem = _time_arg(f"--{option}", getattr(args, option))
            if problem:
                problems.append(problem)
        if settings is not None:
            problems += _api_key_problems(settings, required=True)
    if args.command in ("serve", "check") and settings is not None:
        problems += _secret_problems(settings)
        problems += _api_key_problems(settings, required=False)
    if args.command in ("serve", "check", "backfill") and settings is not None:
        problems += _database_problems(settings)
    if problems or settings is None:
        sys.stderr.write(f"otelbridge: {SettingsError(problems).render()}\n")
        return EXIT_USAGE
    warnings = environment.unknown_variables()
    if args.command == "serve":
        return _serve(settings, warnings)
    _warn(warnings)
    if args.command == "check":
        return _check(settings, exporters)
    if args.command == "backfill":
        return _backfill(args, settings)
    if args.command == "drain":
        return _drain(args, settings)
    if args.command == "replay":
        from otelbridge.replay import run_replay

        return run_replay(args.paths, settings, exporters, sys.stdout, sys.stderr)
    return EXIT_USAGE  # pragma: no cover - argparse enforces the choices


def _exporters(
    environment: OtelEnvironment, settings: Settings | None, forced: ExporterKind | None
) -> dict[Signal, ExporterKind]:
    """Where each signal goes: ``replay --exporter`` for both, else OTEL_TRACES_EXPORTER /
    OTEL_METRICS_EXPORTER, else OTELBRIDGE_EXPORTER."""
    if forced is not None:
        return dict.fromkeys(SIGNALS, forced)
    return environment.exporters(settings.exporter if settings is not None else "otlp")


def _warn(warnings: Sequence[str]) -> None:
    for warning in warnings:
        logging.getLogger("otelbridge").warning("%s", warning)


def _secret_problems(settings: Settings) -> list[str]:
    try:
        secrets = settings.webhook_secrets()
    except SettingsError as exc:
        return exc.problems
    if not secrets and not settings.allow_unauthenticated:
        return [
            "no webhook secret: set OTELBRIDGE_WEBHOOK_SECRET (the secret configured for the agent's "
            "webhook in Cartesia) or OTELBRIDGE_WEBHOOK_SECRET_FILE. Fix: set one, or pass "
            "--allow-unauthenticated to accept unauthenticated webhooks"
        ]
    return []


def _api_key_problems(settings: Settings, *, required: bool) -> list[str]:
    try:
        key = settings.cartesia_api_key_value()
    except SettingsError as exc:
        return exc.problems
    if key is None and required:
        return [
            "no Cartesia API key: set OTELBRIDGE_CARTESIA_API_KEY (or OTELBRIDGE_CARTESIA_API_KEY_FILE). "
            "Fix: create a key in the Cartesia playground and set it"
        ]
    return []


def _database_problems(settings: Settings) -> list[str]:
    try:
        settings.database_url_value()
    except SettingsError as exc:
        return exc.problems
    return []


def _drain(args: argparse.Namespace, settings: Settings) -> int:
    import anyio

    from otelbridge.drain import run_drain
    from otelbridge.logs import configure_logging
    from otelbridge.store import StoreError

    configure_logging(settings.log_format, settings.log_level)
    try:
        return anyio.run(run_drain, settings, args.stall, sys.stdout, sys.stderr)
    except StoreError as exc:
        sys.stderr.write(f"otelbridge drain: {exc}\n")
        return EXIT_USAGE


def _backfill(args: argparse.Namespace, settings: Settings) -> int:
    import anyio

    from otelbridge.allocator import fix_mmap_threshold, tune_garbage_collection
    from otelbridge.backfill import run_backfill
    from otelbridge.logs import configure_logging
    from otelbridge.store import database_secrets

    fix_mmap_threshold()
    tune_garbage_collection()

    api_key = settings.cartesia_api_key_value()
    assert api_key is not None
    configure_logging(settings.log_format, "warning" if settings.log_level == "info" else settings.log_level,
                      secrets=[api_key, *database_secrets(settings.database_url_value())])  # fmt: skip
    since, _ = _time_arg("--since", args.since)
    until, _ = _time_arg("--until", args.until)
    try:
        return anyio.run(
            functools.partial(
                run_backfill, settings, api_key, agent_ids=args.agent_id, since_ns=since, until_ns=until,
                dry_run=args.dry_run, out=sys.stdout, err=sys.stderr,
            ),
            backend_options={"use_uvloop": True},
        )  # fmt: skip
    except KeyboardInterrupt:
        sys.stderr.write("\notelbridge backfill: interrupted; run the same command again to resume\n")
        return 130


def _serve(settings: Settings, warnings: Sequence[str]) -> int:
    import anyio

    from otelbridge.allocator import tune_garbage_collection
    from otelbridge.daemon import serve
    from otelbridge.logs import configure_logging
    from otelbridge.store import StoreError, database_secrets
    from otelbridge.web import InUseError, StartupError

    secrets = settings.webhook_secrets()
    api_key = settings.cartesia_api_key_value()
    database_url = settings.database_url_value()
    hidden = [s.decode() for s in secrets] + ([api_key] if api_key else []) + database_secrets(database_url)
    configure_logging(settings.log_format, settings.log_level, secrets=hidden)
    _warn(warnings)
    if api_key is None and settings.poll_interval > 0:
        logging.getLogger("otelbridge").info("no OTELBRIDGE_CARTESIA_API_KEY: List Calls polling is off")
    tune_garbage_collection()
    try:
        anyio.run(serve, settings, secrets, api_key, database_url, backend_options={"use_uvloop": True})
    except (StartupError, StoreError) as exc:
        logging.getLogger("otelbridge").error("cannot start: %s", exc)
        return EXIT_IN_USE if isinstance(exc, InUseError) else EXIT_USAGE
    except BaseExceptionGroup as group:
        startup = group.subgroup(lambda e: isinstance(e, StartupError | StoreError))
        if startup is None:
            raise
        first: BaseException = startup
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        logging.getLogger("otelbridge").error("cannot start: %s", first)
        return EXIT_IN_USE if isinstance(first, InUseError) else EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        return EXIT_FAILED
    return EXIT_OK


def _check(settings: Settings, exporters: dict[Signal, ExporterKind]) -> int:
    from otelbridge.delivery.transport import failure_fix, make_transport, probe
    from otelbridge.logs import Redactor, otlp_header_values
    from otelbridge.store import database_secrets

    # A backend's error message may echo an OTLP header value (an API key): redacted as the
    # daemon's log lines are (otelbridge.logs), with the other configured secrets.
    api_key = settings.cartesia_api_key_value()
    redact = Redactor([
        *otlp_header_values(), *(s.decode() for s in settings.webhook_secrets()),
        *([api_key] if api_key else []), *database_secrets(settings.database_url_value()),
    ])  # fmt: skip
    out = _RedactingWriter(sys.stdout, redact)
    out.write("settings: ok\n")
    failed = False
    database_url = settings.database_url_value()
    if database_url:
        try:
            from otelbridge.store.postgres import describe
        except ImportError:
            out.write("database: FAILED: the PostgreSQL driver is not installed. "
                      "Fix: pip install 'otelbridge[postgres]'\n")  # fmt: skip
            return EXIT_FAILED
        ok, line = describe(database_url)
        fix = "check OTELBRIDGE_DATABASE_URL and that this process may reach and write the database"
        out.write(f"database {line}\n" if ok else f"database: FAILED: {_with_fix(line, fix)}\n")
        failed = not ok
    else:
        failed = _check_state_dir(settings, out)
    transport = make_transport(exporters)
    try:
        for signal in SIGNALS:
            if exporters[signal] != "otlp":
                out.write(f"{signal}: exporter {exporters[signal]} (no OTLP endpoint to probe)\n")
                continue
            result = probe(transport, signal)
            where = transport.endpoint(signal)
            if result.outcome == "ok":
                out.write(f"OTLP {signal} endpoint {where}: ok ({result.status})\n")
            else:
                out.write(
                    f"OTLP {signal} endpoint {where}: FAILED ({result.status}: {result.message}). "
                    f"Fix: {failure_fix(transport, signal, result)}\n"
                )
                failed = True
    finally:
        transport.close()
    return EXIT_FAILED if failed else EXIT_OK


class _RedactingWriter:
    """``write`` of ``out`` with every secret of ``redact`` replaced by ``[redacted]``."""

    def __init__(self, out: TextIO, redact: Callable[[str], str]) -> None:
        self._out = out
        self._redact = redact

    def write(self, text: str) -> int:
        return self._out.write(self._redact(text))


def _check_state_dir(settings: Settings, out: _RedactingWriter | TextIO) -> bool:
    """True when the SQLite state cannot be used (a real write into each file)."""
    from otelbridge.store import StoreError, StoreWriteError, open_inbox, open_state

    try:
        for store in (open_state(settings.state_dir), open_inbox(settings.state_dir)):
            try:
                store.probe()  # a real write, committed
            finally:
                store.close()
        out.write(f"state directory {settings.state_dir.absolute()}: writable\n")
    except (StoreError, StoreWriteError) as exc:
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            fix = (
                f"the file is damaged or not otelbridge's: move it out of {settings.state_dir.absolute()} "
                "(a new one is created at the next start; restore it from a backup if you keep one)"
            )
        else:
            fix = (
                "make OTELBRIDGE_STATE_DIR a directory this user owns and can write (mode 0700), on a "
                "volume with free space"
            )
        out.write(f"state directory: FAILED: {_with_fix(text, fix)}\n")
        return True
    return False


def _with_fix(text: str, fix: str) -> str:
    """``text``, ending in ``Fix: fix`` unless it already names one."""
    return text if "Fix:" in text else f"{text.rstrip('. ')}. Fix: {fix}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
