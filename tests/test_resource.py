"""service.name precedence and OTEL_RESOURCE_ATTRIBUTES in what replay exports."""

import io
import os

import pytest

from otelbridge.delivery.environment import ExporterKind, Signal
from otelbridge.replay import Replay
from otelbridge.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("OTEL_", "OTELBRIDGE_")):
            monkeypatch.delenv(name)


NOWHERE: dict[Signal, ExporterKind] = {"traces": "none", "metrics": "none"}


def _attributes() -> dict[str, object]:
    return dict(Replay(load_settings(), NOWHERE, io.StringIO(), io.StringIO()).resource().attributes)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "otelbridge"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs"}, "from-attrs"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs", "OTEL_SERVICE_NAME": "svc"}, "svc"),
        ({"OTEL_SERVICE_NAME": "svc", "OTELBRIDGE_SERVICE_NAME": "ours"}, "ours"),
    ],
)
def test_service_name_precedence(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _attributes()["service.name"] == expected


def test_resource_attributes_are_kept_and_instance_id_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=voice")
    monkeypatch.setenv("OTELBRIDGE_SERVICE_INSTANCE_ID", "pod-7")
    attrs = _attributes()
    assert attrs["deployment.environment"] == "prod"
    assert attrs["team"] == "voice"
    assert attrs["service.instance.id"] == "pod-7"
