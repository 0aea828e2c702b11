import pytest

from otelbridge.mapping.policy import TextPolicy
from otelbridge.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith(("OTELBRIDGE_", "OTEL_")):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert (s.exporter, s.transcript_text, s.max_attribute_bytes) == ("otlp", TextPolicy.KEEP, 2048)
    assert s.export_phone_numbers is False
    assert s.resolved_service_name() == "otelbridge"
    assert s.resolved_instance_id() == s.resolved_instance_id()  # stable once chosen


def test_env_vars_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELBRIDGE_TRANSCRIPT_TEXT", "truncate")
    monkeypatch.setenv("OTELBRIDGE_TRANSCRIPT_MAX_CHARS", "40")
    monkeypatch.setenv("OTELBRIDGE_EXPORT_PHONE_NUMBERS", "true")
    options = load_settings().mapping_options()
    assert (options.text_policy, options.text_max_chars, options.export_phone_numbers) == (
        TextPolicy.TRUNCATE,
        40,
        True,
    )


def test_service_name_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-otel")
    assert load_settings().resolved_service_name() == "from-otel"
    monkeypatch.setenv("OTELBRIDGE_SERVICE_NAME", "from-otelbridge")
    assert load_settings().resolved_service_name() == "from-otelbridge"


def test_all_problems_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELBRIDGE_TRANSCRIPT_TEXT", "foo")
    monkeypatch.setenv("OTELBRIDGE_MAX_ATTRIBUTE_BYTES", "12")
    monkeypatch.setenv("OTELBRIDGE_EXPORT_PHONE_NUMBERS", "maybe")
    monkeypatch.setenv("OTELBRIDGE_EXPORTR", "console")
    with pytest.raises(SettingsError) as info:
        load_settings()
    problems = info.value.problems
    assert len(problems) == 4
    text = info.value.render()
    assert "OTELBRIDGE_EXPORTR: not an otelbridge setting. Fix: did you mean OTELBRIDGE_EXPORTER?" in text
    assert "OTELBRIDGE_TRANSCRIPT_TEXT='foo': Input should be 'keep', 'truncate' or 'drop'" in text
    assert "OTELBRIDGE_MAX_ATTRIBUTE_BYTES='12'" in text and "default 2048" in text
    assert "OTELBRIDGE_EXPORT_PHONE_NUMBERS='maybe'" in text
    assert text.startswith("invalid settings (4 problems):")


def test_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELBRIDGE_EXPORTER", "none")
    assert load_settings(exporter="console").exporter == "console"


def test_every_setting_is_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for field in Settings.model_fields:
        assert f"OTELBRIDGE_{field.upper()}" in readme, field
