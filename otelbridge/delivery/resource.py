"""The OpenTelemetry resource of everything otelbridge exports.

``OTEL_RESOURCE_ATTRIBUTES`` is parsed by the SDK's own detector; ``service.name`` comes from
``OTELBRIDGE_SERVICE_NAME`` > ``OTEL_SERVICE_NAME`` > ``OTEL_RESOURCE_ATTRIBUTES`` > ``otelbridge``;
``service.instance.id`` from ``OTELBRIDGE_SERVICE_INSTANCE_ID`` or a random UUID per process
(Prometheus rejects out-of-order samples: each replica needs its own).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry.sdk.resources import OTELResourceDetector, Resource

from otelbridge.settings import Settings


def build_resource(service_name: str, instance_id: str, extra: Mapping[str, str] | None = None) -> Resource:
    """A deterministic resource (no detectors): ``extra`` first, then the two we own."""
    attributes: dict[str, str] = dict(extra or {})
    attributes["service.name"] = service_name
    attributes["service.instance.id"] = instance_id
    attributes.setdefault("telemetry.sdk.language", "python")
    return Resource(attributes)


def service_resource(settings: Settings) -> Resource:
    from_env = {str(k): str(v) for k, v in OTELResourceDetector().detect().attributes.items()}
    name = settings.service_name or settings.resolved_service_name()
    if not settings.service_name and "OTEL_SERVICE_NAME" not in os.environ:
        name = from_env.get("service.name", name)
    return build_resource(name, settings.resolved_instance_id(), from_env)
