"""The ``otelbridge`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from otelbridge import __version__
from otelbridge.delivery import exporters
from otelbridge.settings import Settings, SettingsError, load_settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


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
        "/metrics on the admin port. Settings: OTELBRIDGE_* variables (README.md) or --config.",
    )
    _config_option(serve)
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        default=None,
        help="accept webhooks without X-Webhook-Secret (only behind a trusted proxy)",
    )
    check = commands.add_parser(
        "check",
        help="validate the settings and probe the OTLP endpoints",
        description="Report every settings problem at once, check the state directory is "
        "writable and send an empty export to each OTLP endpoint. Exit 0 when all is well, "
        "1 when a probe fails, 2 for invalid settings.",
    )
    _config_option(check)
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file of settings (keys as in README.md, lower case); OTELBRIDGE_* variables win",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="otelbridge: %(levelname)s %(name)s: %(message)s")
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
    # List the OTEL_* problems too (all problems at once), unless otlp is known not to be used.
    if (settings.exporter if settings else getattr(args, "exporter", None) or "otlp") == "otlp":
        problems += exporters.environment_problems()
    if args.command in ("serve", "check"):
        from otelbridge.delivery.telemetry import environment_problems

        problems += environment_problems()
        if settings is not None:
            problems += _secret_problems(settings)
    if problems or settings is None:
        sys.stderr.write(f"otelbridge: {SettingsError(problems).render()}\n")
        return EXIT_USAGE
    if args.command == "serve":
        return _serve(settings)
    if args.command == "check":
        return _check(settings)
    if args.command == "replay":
        from otelbridge.replay import run_replay

        return run_replay(args.paths, settings, settings.exporter, sys.stdout, sys.stderr)
    return EXIT_USAGE  # pragma: no cover - argparse enforces the choices


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


def _serve(settings: Settings) -> int:
    import anyio

    from otelbridge.daemon import serve
    from otelbridge.logs import configure_logging
    from otelbridge.store import StoreError
    from otelbridge.web import StartupError

    secrets = settings.webhook_secrets()
    configure_logging(settings.log_format, settings.log_level, secrets=[s.decode() for s in secrets])
    try:
        anyio.run(serve, settings, secrets, backend_options={"use_uvloop": True})
    except (StartupError, StoreError) as exc:
        logging.getLogger("otelbridge").error("cannot start: %s", exc)
        return EXIT_USAGE
    except BaseExceptionGroup as group:
        startup = group.subgroup(lambda e: isinstance(e, StartupError | StoreError))
        if startup is None:
            raise
        first: BaseException = startup
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        logging.getLogger("otelbridge").error("cannot start: %s", first)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        return EXIT_FAILED
    return EXIT_OK


def _check(settings: Settings) -> int:
    from otelbridge.delivery.transport import probe
    from otelbridge.pipeline import make_transport
    from otelbridge.store import StoreError, open_inbox, open_state

    out = sys.stdout
    out.write("settings: ok\n")
    failed = False
    try:
        for db in (open_state(settings.state_dir), open_inbox(settings.state_dir)):
            with db.transaction():
                pass
            db.close()
        out.write(f"state directory {settings.state_dir}: writable\n")
    except StoreError as exc:
        out.write(f"state directory: FAILED: {exc}. Fix: OTELBRIDGE_STATE_DIR must be a writable directory\n")
        failed = True
    if settings.exporter != "otlp":
        out.write(f"exporter: {settings.exporter} (no OTLP endpoint to probe)\n")
        return EXIT_FAILED if failed else EXIT_OK
    transport = make_transport(settings)
    try:
        for signal in ("traces", "metrics"):
            result = probe(transport, signal)
            where = transport.endpoint(signal)
            if result.outcome == "ok":
                out.write(f"OTLP {signal} endpoint {where}: ok ({result.status})\n")
            else:
                out.write(f"OTLP {signal} endpoint {where}: FAILED ({result.status}: {result.message})\n")
                failed = True
    finally:
        transport.close()
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
