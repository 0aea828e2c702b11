"""Shared pytest configuration: the ``--update-golden`` option of the golden-file tests, the
real OTLP receiver most end-to-end tests export to, and an environment with no inherited
settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.otlp_receiver import HttpOtlpReceiver

pytest_plugins = ["tests.support.postgres"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the expected files tests/testdata/*.otlp.json from the current code "
        "instead of comparing against them (then review the diff before committing)",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when the run was asked to rewrite golden files (``pytest --update-golden``)."""
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def receiver() -> Iterator[HttpOtlpReceiver]:
    """A real OTLP/HTTP receiver on 127.0.0.1, stopped after the test."""
    with HttpOtlpReceiver() as r:
        yield r


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """``monkeypatch``, with every inherited ``OTELBRIDGE_*`` / ``OTEL_*`` variable removed."""
    for name in list(os.environ):
        if name.upper().startswith(("OTELBRIDGE_", "OTEL_")):
            monkeypatch.delenv(name)
    return monkeypatch
