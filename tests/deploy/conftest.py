"""Fixtures of the container tests: ``image``, the otelbridge image built once per session."""

from __future__ import annotations

import pytest

from tests.deploy import podman


@pytest.fixture(scope="session")
def image() -> str:
    """The tag of the otelbridge image built from this checkout's Dockerfile on the local Debian
    base (``localhost/otelbridge:test``). Fails, not skips, when podman is not set up: these
    tests run only when asked for (``-m container``), and then they must run."""
    try:
        podman.check_podman()
        podman.ensure_base_image()
        return podman.build_image()
    except podman.PodmanError as exc:
        pytest.fail(str(exc), pytrace=False)
