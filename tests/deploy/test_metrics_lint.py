"""/metrics of a real ``otelbridge serve`` fed with the sample calls passes ``promtool check
metrics``: no abbreviated units, base units only (LogMetric durations in seconds)."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.deploy.prometheus import Stack, binary, stack

__all__ = ["stack"]  # the shared session fixture, imported for pytest

pytestmark = pytest.mark.prometheus


def test_metrics_endpoint_is_clean_under_promtool(stack: Stack) -> None:
    text = httpx.get(f"{stack.serve.admin_url}/metrics", timeout=10).text
    assert "cartesia_log_metric_agent_turn_seconds_bucket" in text  # a duration, in seconds
    assert "_ms_" not in text and "milliseconds" not in text
    assert "otelbridge_export_dead_letters_total{" in text  # zero from start
    lint = subprocess.run(
        [binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")
