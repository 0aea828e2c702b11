from pathlib import Path

import pytest

from otelbridge.mapping.policy import TextPolicy
from otelbridge.settings import Settings, SettingsError, load_settings

pytestmark = pytest.mark.usefixtures("clean_env")


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


def test_every_setting_is_in_docs_settings() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "settings.md").read_text()
    for field in Settings.model_fields:
        assert f"| `OTELBRIDGE_{field.upper()}` |" in page, field


def test_config_file_values_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text('listen_port = 9000\nadmin_port = 9001\nlog_format = "json"\n')
    monkeypatch.setenv("OTELBRIDGE_ADMIN_PORT", "9500")
    s = load_settings(config)
    assert (s.listen_port, s.admin_port, s.log_format) == (9000, 9500, "json")  # env wins over the file
    assert load_settings(config, listen_port=1234).listen_port == 1234  # flags win over both


def test_config_file_problems_are_listed_with_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text('[otelbridge]\nlisten_prot = 9000\nadmin_port = "x"\n')
    monkeypatch.setenv("OTELBRIDGE_LOG_LEVEL", "loud")
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    text = "\n".join(info.value.problems)
    assert "'listen_prot' is not an otelbridge setting" in text and "did you mean listen_port?" in text
    assert "OTELBRIDGE_ADMIN_PORT (config key 'admin_port')='x'" in text
    assert "OTELBRIDGE_LOG_LEVEL='loud'" in text


def test_config_file_keys_beside_the_otelbridge_table_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text('listen_prot = 8081\n[otelbridge]\nlisten_port = 9000\n[exporter]\nkind = "otlp"\n')
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    problems = info.value.problems
    assert len(problems) == 2
    assert "'listen_prot' is outside the [otelbridge] table. Fix: move it into [otelbridge]" in problems[0]
    assert "table [exporter] is not known" in problems[1] and "did you mean" not in problems[1]


def test_config_file_unknown_table_at_the_top_level_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text('listen_port = 9000\n[exportr]\nendpoint = "x"\n')
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    (problem,) = info.value.problems
    assert "table [exportr] is not known. Fix: settings go at the top level or in [otelbridge]" in problem


def test_config_file_otel_table_sets_the_otel_variables_unless_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_METRICS_EXPORTER", "OTEL_METRIC_EXPORT_INTERVAL"):
        monkeypatch.setenv(name, "")  # so that monkeypatch removes what load_settings sets
        monkeypatch.delenv(name)
    config = tmp_path / "otelbridge.toml"
    config.write_text(
        '[otelbridge]\nlisten_port = 9000\n[otel]\nexporter_otlp_endpoint = "https://api.honeycomb.io"\n'
        'metrics_exporter = "none"\nservice_name = "voice"\nmetric_export_interval = 5000\n'
    )
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    settings = load_settings(config)
    assert settings.listen_port == 9000
    assert os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://api.honeycomb.io"
    assert (os.environ["OTEL_METRICS_EXPORTER"], os.environ["OTEL_METRIC_EXPORT_INTERVAL"]) == (
        "none",
        "5000",
    )
    assert settings.resolved_service_name() == "from-env"  # the environment wins over the file


def test_config_file_otel_table_problems(tmp_path: Path) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text('[otel]\nexporter_otlp_endpiont = "x"\nexporter_otlp_headers = ["a"]\n')
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    first, second = info.value.problems
    assert "[otel]: key 'exporter_otlp_endpiont' is not an OTEL_* variable it reads" in first
    assert "did you mean exporter_otlp_endpoint?" in first
    assert "'exporter_otlp_headers' is not a string" in second


def test_the_report_points_at_the_help_that_lists_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELBRIDGE_EXPORTR", "console")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "README" not in str(info.value)
    assert str(info.value).endswith("`otelbridge serve --help` lists every setting with its default.")


def test_config_file_unreadable_or_not_toml(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read the file"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("listen_port = = 1\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(bad)


def test_webhook_secrets_from_variable_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELBRIDGE_WEBHOOK_SECRET", " new-secret-0123456 , old-secret-0123456 ")
    assert load_settings().webhook_secrets() == [b"new-secret-0123456", b"old-secret-0123456"]
    monkeypatch.delenv("OTELBRIDGE_WEBHOOK_SECRET")
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file-0123456789\n")
    monkeypatch.setenv("OTELBRIDGE_WEBHOOK_SECRET_FILE", str(secret_file))
    assert load_settings().webhook_secrets() == [b"from-file-0123456789"]
    secret_file.write_text("\n")
    with pytest.raises(SettingsError, match="holds no secret"):
        load_settings().webhook_secrets()
    monkeypatch.setenv("OTELBRIDGE_WEBHOOK_SECRET_FILE", str(tmp_path / "nope"))
    with pytest.raises(SettingsError, match="cannot read the file"):
        load_settings().webhook_secrets()


def test_secret_never_shown_and_both_sources_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELBRIDGE_WEBHOOK_SECRET", "hunter2-secret")
    monkeypatch.setenv("OTELBRIDGE_WEBHOOK_SECRET_FILE", "/run/secrets/x")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "set only one of them" in str(info.value)
    assert "hunter2-secret" not in str(info.value)
    monkeypatch.delenv("OTELBRIDGE_WEBHOOK_SECRET_FILE")
    assert "hunter2-secret" not in repr(load_settings())


def test_cartesia_api_key_from_variable_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().cartesia_api_key_value() is None
    monkeypatch.setenv("OTELBRIDGE_CARTESIA_API_KEY", "sk_car_123456")
    assert load_settings().cartesia_api_key_value() == "sk_car_123456"
    assert "sk_car_123456" not in repr(load_settings())
    monkeypatch.delenv("OTELBRIDGE_CARTESIA_API_KEY")
    key_file = tmp_path / "key"
    key_file.write_text("sk_car_from_file\n")
    monkeypatch.setenv("OTELBRIDGE_CARTESIA_API_KEY_FILE", str(key_file))
    assert load_settings().cartesia_api_key_value() == "sk_car_from_file"
    key_file.write_text("  \n")
    with pytest.raises(SettingsError, match="the file is empty"):
        load_settings().cartesia_api_key_value()
    monkeypatch.setenv("OTELBRIDGE_CARTESIA_API_KEY", "sk_car_123456")
    with pytest.raises(SettingsError, match="set only one of them") as info:
        load_settings()
    assert "sk_car_123456" not in str(info.value)


def test_agent_ids_and_polling_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELBRIDGE_AGENT_IDS", " agent_a, ,agent_b ")
    monkeypatch.setenv("OTELBRIDGE_POLL_INTERVAL", "0")
    s = load_settings()
    assert s.agent_id_list() == ["agent_a", "agent_b"] and s.poll_interval == 0
    monkeypatch.setenv("OTELBRIDGE_POLL_CONCURRENCY", "0")
    with pytest.raises(SettingsError, match="OTELBRIDGE_POLL_CONCURRENCY"):
        load_settings()


# --- secrets at the edges (issue 19) ---------------------------------------------------------
def test_a_short_webhook_secret_is_refused_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTELBRIDGE_WEBHOOK_SECRET", "long-enough-secret-0123,short-sec-42")
    with pytest.raises(SettingsError) as info:
        load_settings().webhook_secrets()
    (problem,) = info.value.problems
    assert problem.startswith("OTELBRIDGE_WEBHOOK_SECRET: secret 2 is shorter than 16 characters")
    assert "Fix:" in problem and "OTELBRIDGE_ALLOW_SHORT_WEBHOOK_SECRET=true" in problem
    assert "short-sec-42" not in str(info.value)
    monkeypatch.delenv("OTELBRIDGE_WEBHOOK_SECRET")
    secret_file = tmp_path / "secret"
    secret_file.write_text("tiny-secret\n")
    monkeypatch.setenv("OTELBRIDGE_WEBHOOK_SECRET_FILE", str(secret_file))
    with pytest.raises(SettingsError, match="the secret is shorter than 16 characters"):
        load_settings().webhook_secrets()
    monkeypatch.setenv("OTELBRIDGE_ALLOW_SHORT_WEBHOOK_SECRET", "true")
    assert load_settings().webhook_secrets() == [b"tiny-secret"]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8123", "http://127.8.0.1", "http://[::1]:8123", "http://localhost:8123",
            "https://api.cartesia.ai", "https://cartesia.internal:8443/api"],
)  # fmt: skip
def test_cartesia_base_url_accepted(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELBRIDGE_CARTESIA_BASE_URL", url)
    assert load_settings().cartesia_base_url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://api.cartesia.ai", "plain http would send the API key unencrypted"),
        ("http://10.0.0.5:8080", "plain http would send the API key unencrypted"),
        ("http://[::1", "not a valid URL (Invalid IPv6 URL)"),
        ("http://[zz]:4318", "not a valid URL"),
        ("api.cartesia.ai", "not an http(s) URL"),
    ],
)
def test_cartesia_base_url_refused(url: str, problem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELBRIDGE_CARTESIA_BASE_URL", url)
    with pytest.raises(SettingsError) as info:
        load_settings()
    (line,) = info.value.problems
    assert line.startswith(f"OTELBRIDGE_CARTESIA_BASE_URL={url!r}: {problem}")
    assert "Fix: e.g. https://api.cartesia.ai" in line


# --- hints that point the right way (issue 21) ------------------------------------------------
@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("OTELBRIDGE_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("OTELBRIDGE_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("OTELBRIDGE_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
        ("OTELBRIDGE_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ("OTELBRIDGE_OTLP_PROTOCALL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ("OTELBRIDGE_OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("OTELBRIDGE_TRACES_EXPORTER", "OTEL_TRACES_EXPORTER"),
    ],
)
def test_otlp_lookalike_variables_point_at_the_otel_name(
    name: str, meant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "http://collector:4318")
    with pytest.raises(SettingsError) as info:
        load_settings()
    (problem,) = info.value.problems
    assert problem.startswith(f"{name}: not an otelbridge setting. Fix: did you mean {meant}?"), problem
    assert "OTELBRIDGE_LISTEN_PORT" not in problem


@pytest.mark.parametrize("table", ["[otelbridge]\n", ""])
@pytest.mark.parametrize(
    ("key", "otel_key"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "exporter_otlp_endpoint"),
        ("otel_exporter_otlp_endpoint", "exporter_otlp_endpoint"),
        ("exporter_otlp_endpoint", "exporter_otlp_endpoint"),
        ("OTEL_SERVICE_NAME", "service_name"),
    ],
)
def test_an_otel_key_among_the_settings_is_moved_to_the_otel_table(
    table: str, key: str, otel_key: str, tmp_path: Path
) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text(f'{table}listen_port = 9000\n{key} = "http://collector:4318"\n')
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    (problem,) = info.value.problems
    assert f"key {key!r} is the OTEL_* variable" in problem
    assert f"Fix: move it to the [otel] table, as {otel_key} = ..." in problem
    assert "remove it" not in problem


def test_an_otel_table_key_written_as_the_variable_name_gets_its_short_form(tmp_path: Path) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text('[otel]\nOTEL_EXPORTER_OTLP_ENDPOINT = "http://collector:4318"\n')
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    (problem,) = info.value.problems
    assert "Fix: exporter_otlp_endpoint = ..." in problem
