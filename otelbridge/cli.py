"""The ``otelbridge`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from otelbridge import __version__
from otelbridge.delivery import exporters
from otelbridge.settings import SettingsError, load_settings

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="otelbridge: %(levelname)s %(name)s: %(message)s")
    overrides = {"exporter": args.exporter} if getattr(args, "exporter", None) else {}
    problems: list[str] = []
    settings = None
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        problems += exc.problems
    # List the OTEL_* problems too (all problems at once), unless otlp is known not to be used.
    if (settings.exporter if settings else args.exporter or "otlp") == "otlp":
        problems += exporters.environment_problems()
    if problems or settings is None:
        sys.stderr.write(f"otelbridge: {SettingsError(problems).render()}\n")
        return EXIT_USAGE
    if args.command == "replay":
        from otelbridge.replay import run_replay

        return run_replay(args.paths, settings, settings.exporter, sys.stdout, sys.stderr)
    return EXIT_USAGE  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
