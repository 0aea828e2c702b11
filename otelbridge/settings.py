"""otelbridge's settings: ``OTELBRIDGE_*`` environment variables, read by pydantic-settings.

Every problem is reported at once (:class:`SettingsError`), each naming the variable, what is
wrong and how to fix it. An ``OTELBRIDGE_*`` variable that is not a setting is a problem too
(a typo would otherwise silently leave the default in force). The standard ``OTEL_*``
variables (endpoint, headers, protocol…) are read by the OpenTelemetry exporters themselves.
"""

from __future__ import annotations

import difflib
import os
import uuid
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from otelbridge.mapping.policy import (
    DEFAULT_MAX_ATTRIBUTE_BYTES,
    DEFAULT_SERVICE_NAME,
    DEFAULT_TEXT_MAX_CHARS,
    MappingOptions,
    TextPolicy,
)

ENV_PREFIX = "OTELBRIDGE_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", case_sensitive=False, validate_default=True
    )

    service_name: Annotated[str, Field(min_length=1)] | None = Field(
        default=None,
        description=f"service.name of everything exported; else OTEL_SERVICE_NAME, "
        f"else {DEFAULT_SERVICE_NAME!r}",
    )
    service_instance_id: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="service.instance.id; a random UUID per process when unset"
    )
    exporter: Literal["otlp", "console", "none"] = Field(
        default="otlp", description="where spans and metrics go"
    )
    transcript_text: TextPolicy = Field(
        default=TextPolicy.KEEP, description="keep | truncate | drop transcript text"
    )
    transcript_max_chars: int = Field(
        default=DEFAULT_TEXT_MAX_CHARS, ge=1, description="characters kept when truncating"
    )
    export_phone_numbers: bool = Field(default=False, description="export telephony from/to unmasked")
    max_attribute_bytes: int = Field(
        default=DEFAULT_MAX_ATTRIBUTE_BYTES,
        ge=64,
        le=1_048_576,
        description="cap on any string attribute, in UTF-8 bytes",
    )
    log_metric_max_names: int = Field(
        default=50, ge=1, description="distinct LogMetric names turned into instruments"
    )
    log_metric_max_values: int = Field(
        default=20, ge=1, description="distinct values kept per string LogMetric"
    )

    def mapping_options(self) -> MappingOptions:
        return MappingOptions(
            text_policy=self.transcript_text,
            text_max_chars=self.transcript_max_chars,
            export_phone_numbers=self.export_phone_numbers,
            max_attribute_bytes=self.max_attribute_bytes,
        )

    def resolved_service_name(self, environ: Mapping[str, str] | None = None) -> str:
        env = os.environ if environ is None else environ
        return self.service_name or env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME

    def resolved_instance_id(self) -> str:
        if self.service_instance_id is None:
            self.service_instance_id = str(uuid.uuid4())
        return self.service_instance_id


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


class SettingsError(Exception):
    """Invalid settings: ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        lines = [f"invalid settings ({count} problem{'s' if count != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        lines.append("Every setting, with its default, is listed in README.md under 'Settings'.")
        return "\n".join(lines)


def _field_hint(field: str) -> str:
    info = Settings.model_fields[field]
    default = info.default
    shown = "unset" if default is None else str(getattr(default, "value", default)).lower()
    return f"{info.description}; default {shown}"


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    known = {env_name(f) for f in Settings.model_fields}
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            close = difflib.get_close_matches(upper, sorted(known), n=1)
            fix = f"did you mean {close[0]}?" if close else "remove it"
            problems.append(f"{name}: not an otelbridge setting. Fix: {fix}")
    return problems


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment; raise :class:`SettingsError` listing every
    problem. ``overrides`` (from command-line flags) win over the environment."""
    problems = _unknown_variables(os.environ)
    settings: Settings | None = None
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else ""
            if field in Settings.model_fields:
                name = env_name(field)
                shown = overrides.get(field, _getenv_ci(name))
                problems.append(
                    f"{name}={shown!r}: {error['msg']}. Fix: set a valid value or unset it "
                    f"({_field_hint(field)})"
                )
            else:
                problems.append(f"{field}: {error['msg']}")
    if problems:
        raise SettingsError(problems)
    assert settings is not None
    return settings


def _getenv_ci(name: str) -> str | None:
    return next((v for k, v in os.environ.items() if k.upper() == name), None)
