"""The backend presets in config/: each is read by ``otelbridge check --config FILE`` (a real
subprocess) with valid settings, and sends each signal where its comment says."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.support.serve_process import clean_env, run_cli

CONFIG = Path(__file__).resolve().parents[1] / "config"
#: preset -> (traces endpoint, metrics endpoint or None when metrics are not sent over OTLP)
PRESETS = {
    "honeycomb-us.toml": ("https://api.honeycomb.io/v1/traces", "https://api.honeycomb.io/v1/metrics"),
    "honeycomb-eu.toml": (
        "https://api.eu1.honeycomb.io/v1/traces",
        "https://api.eu1.honeycomb.io/v1/metrics",
    ),
    "grafana-cloud.toml": (
        "https://otlp-gateway-prod-us-east-0.grafana.net/otlp/v1/traces",
        "https://otlp-gateway-prod-us-east-0.grafana.net/otlp/v1/metrics",
    ),
    "tempo-mimir.toml": ("http://tempo:4318/v1/traces", "http://mimir:8080/otlp/v1/metrics"),
    "tempo-prometheus.toml": ("http://tempo:4318/v1/traces", None),
    "jaeger.toml": ("http://jaeger-collector:4318/v1/traces", None),
    "phoenix.toml": ("http://phoenix:6006/v1/traces", None),
    "otel-collector.toml": ("http://localhost:4318/v1/traces", "http://localhost:4318/v1/metrics"),
}


def test_every_preset_is_covered() -> None:
    assert sorted(p.name for p in CONFIG.glob("*.toml")) == sorted(PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_check_reads_the_preset(preset: str, tmp_path: Path) -> None:
    env = clean_env(
        {
            "OTELBRIDGE_WEBHOOK_SECRET": "preset-test-secret-0123456789",
            "OTELBRIDGE_STATE_DIR": str(tmp_path / "state"),
            "OTELBRIDGE_ADMIN_PORT": "0",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2",  # nothing of these answers here: fail fast
        }
    )
    result = run_cli(["check", "--config", str(CONFIG / preset)], env, tmp_path)
    assert result.returncode in (0, 1), result.stderr  # 2 would be invalid settings
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("settings: ok\n")
    traces, metrics = PRESETS[preset]
    assert f"OTLP traces endpoint {traces}: " in result.stdout
    if metrics is None:
        assert "metrics: exporter none (no OTLP endpoint to probe)" in result.stdout
    else:
        assert f"OTLP metrics endpoint {metrics}: " in result.stdout


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_hold_no_secret_and_say_what_to_fill_in(preset: str) -> None:
    text = (CONFIG / preset).read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert set(data) <= {"otelbridge", "otel"}
    assert "Fill in" in text
    for key in data.get("otel", {}):
        assert key != "exporter_otlp_headers", "credentials belong in the environment"
    assert "webhook_secret" not in data.get("otelbridge", {})


def test_gateway_collector_config_pipelines_use_declared_components() -> None:
    """A structural check (no Collector binary can be installed here): every component a
    pipeline names is declared, and otelbridge's two signals each have a pipeline."""
    import yaml

    config = yaml.safe_load((CONFIG / "collector-gateway.yaml").read_text(encoding="utf-8"))
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline[kind]) <= set(config[kind]), (kind, pipeline[kind])
        assert pipeline["processors"][0] == "memory_limiter"
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
