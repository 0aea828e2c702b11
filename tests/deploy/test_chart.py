"""The Helm chart, rendered and linted by real Helm (helm-python-sdk, in process) for its defaults
and every ci/*-values.yaml, each object checked against the Kubernetes schemas (strict), and the
chart's promises checked on what it renders: one replica, secrets only by reference, the admin
port never exposed, a checksum that rolls the pod on a settings change, a grace period above the
drain, and the rule file and dashboard rendered from their one source."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from otelbridge.settings import Settings, SettingsError, load_settings
from tests.deploy.chart import (
    CHART_DIR,
    CI_VALUES,
    DASHBOARD_FILE,
    KUBE_VERSION,
    RULES_FILE,
    Rendered,
    load_values,
    render,
    validate_object,
)

CASES = [pytest.param(None, id="defaults")] + [pytest.param(path, id=path.name) for path in CI_VALUES]
MONITORING = {
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    }
}
# Variables whose value is a secret: never in a ConfigMap, never a plain env value.
SECRET_VARS = re.compile(
    r"^(OTELBRIDGE_WEBHOOK_SECRET|OTELBRIDGE_CARTESIA_API_KEY|OTEL_EXPORTER_OTLP_(\w+_)?HEADERS)$"
)
# Settings the chart sets itself; config may not set them (schema) and they are not in it.
CHART_OWNED = {
    "listen_host",
    "listen_port",
    "admin_host",
    "admin_port",
    "webhook_secret",
    "webhook_secret_file",
    "allow_unauthenticated",
    "state_dir",
    "shutdown_timeout",
    "cartesia_api_key",
    "cartesia_api_key_file",
}


def values_of(path: Path | None) -> dict[str, Any]:
    return load_values(path) if path is not None else {}


def rejection(values: dict[str, Any]) -> str:
    """The message Helm refuses ``values`` with (schema or a template's fail)."""
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    return str(caught.value)


def checksum(rendered: Rendered) -> str:
    value: str = rendered.statefulset["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    return value


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest) -> tuple[dict[str, Any], Rendered]:
    values = values_of(request.param)
    return values, render(values)


# --- every rendering ------------------------------------------------------------------------
def test_every_object_is_valid_against_the_kubernetes_schemas(case: tuple[dict[str, Any], Rendered]) -> None:
    _, rendered = case
    kinds = {obj["kind"] for obj in rendered.objects}
    assert {"StatefulSet", "ConfigMap", "Service", "ServiceAccount", "PodDisruptionBudget"} <= kinds
    for obj in rendered.objects:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            # prometheus-operator's kinds are not in Kubernetes' schemas: their metadata is, and
            # their spec is checked against the admin Service and the rule file below.
            assert obj["kind"] in {"ServiceMonitor", "PrometheusRule"}
            validate_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]})
        else:
            validate_object(obj)


def test_one_replica_non_root_read_only_with_probes(case: tuple[dict[str, Any], Rendered]) -> None:
    _, rendered = case
    assert rendered.statefulset["spec"]["replicas"] == 1
    pod, container = rendered.pod_spec, rendered.container
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["runAsNonRoot"] is True
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["webhook"] == int(rendered.config["OTELBRIDGE_LISTEN_PORT"])
    assert ports["admin"] == int(rendered.config["OTELBRIDGE_ADMIN_PORT"])
    probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")}
    assert probes == {
        "startup": {"path": "/healthz", "port": "admin"},
        "liveness": {"path": "/healthz", "port": "admin"},
        "readiness": {"path": "/readyz", "port": "admin"},
    }
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["requests"]["cpu"]
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    state_dir = rendered.config["OTELBRIDGE_STATE_DIR"]
    # the volume itself, or (an emptyDir, world-writable) a directory otelbridge makes under it
    assert state_dir in mounts or state_dir.rsplit("/", 1)[0] in mounts


def test_grace_period_is_above_the_drain(case: tuple[dict[str, Any], Rendered]) -> None:
    _, rendered = case
    drain = float(rendered.config["OTELBRIDGE_SHUTDOWN_TIMEOUT"])
    assert rendered.pod_spec["terminationGracePeriodSeconds"] >= drain + 5


def test_admin_port_is_never_exposed(case: tuple[dict[str, Any], Rendered]) -> None:
    _, rendered = case
    services = {svc["metadata"]["name"]: svc["spec"] for svc in rendered.of_kind("Service")}
    assert len(services) == 2
    admin = [spec for spec in services.values() if any(p["targetPort"] == "admin" for p in spec["ports"])]
    webhook = [spec for spec in services.values() if any(p["targetPort"] == "webhook" for p in spec["ports"])]
    assert len(admin) == 1 and len(webhook) == 1
    # Headless ClusterIP: no virtual address, no node port, no load balancer; webhook port only elsewhere.
    assert admin[0]["type"] == "ClusterIP" and admin[0]["clusterIP"] == "None"
    assert [p["targetPort"] for p in webhook[0]["ports"]] == ["webhook"]
    assert rendered.statefulset["spec"]["serviceName"] in services
    for ingress in rendered.of_kind("Ingress"):
        (rule,) = ingress["spec"]["rules"]
        (path,) = rule["http"]["paths"]
        assert path["path"] == "/webhooks/cartesia" and path["pathType"] == "Exact"
        backend = path["backend"]["service"]
        assert services[backend["name"]] is webhook[0]
        assert backend["port"] == {"name": "http"}
        assert webhook[0]["ports"][0]["name"] == "http"


def test_secrets_are_never_in_a_config_map_or_a_plain_value(case: tuple[dict[str, Any], Rendered]) -> None:
    values, rendered = case
    for config_map in rendered.of_kind("ConfigMap"):
        for key in config_map.get("data", {}):
            assert not SECRET_VARS.match(key), (config_map["metadata"]["name"], key)
    for env in rendered.container.get("env", []):
        if SECRET_VARS.match(env["name"]):
            assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
    assert not rendered.of_kind("Secret")
    # Every secret file a setting names is a key of a mounted Secret volume.
    files = {}
    volumes = {volume["name"]: volume for volume in rendered.pod_spec["volumes"]}
    for mount in rendered.container["volumeMounts"]:
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret:
            assert mount["readOnly"] is True
            for item in secret["items"]:
                files[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    named = {
        key: value
        for key, value in rendered.config.items()
        if key.endswith("_FILE") or key.endswith(("_CERTIFICATE", "_CLIENT_KEY"))
    }
    assert set(named.values()) == set(files), (named, files)
    unauthenticated = values.get("webhook", {}).get("allowUnauthenticated", False)
    assert ("OTELBRIDGE_WEBHOOK_SECRET_FILE" in named) is not unauthenticated
    assert (rendered.config.get("OTELBRIDGE_ALLOW_UNAUTHENTICATED") == "true") is unauthenticated


def test_the_config_map_is_what_the_daemon_accepts(
    case: tuple[dict[str, Any], Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rendered OTELBRIDGE_* variables (and extraEnv's plain ones) pass otelbridge's own
    settings validation, which refuses unknown names and invalid values."""
    _, rendered = case
    env = dict(rendered.config)
    env.update({e["name"]: e["value"] for e in rendered.container.get("env", []) if "value" in e})
    for name in [name for name in os.environ if name.upper().startswith("OTELBRIDGE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("OTELBRIDGE_"):
            monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.listen_host == "0.0.0.0"
    assert settings.admin_host == "0.0.0.0"
    persistent = case[0].get("persistence", {}).get("enabled", True)
    assert str(settings.state_dir) == ("/var/lib/otelbridge" if persistent else "/var/lib/otelbridge/state")


def test_lint_is_clean_in_strict_mode(case: tuple[dict[str, Any], Rendered]) -> None:
    values, _ = case
    report = helm.lint(CHART_DIR, values or None, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # Severity 1 is INFO ("icon is recommended": the project has no icon); 2+ are warnings and errors.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


# --- the schema -----------------------------------------------------------------------------
def test_replicas_other_than_one_are_refused() -> None:
    message = rejection({"replicas": 2})
    assert "at '/replicas': value must be 1" in message
    report = helm.lint(CHART_DIR, {"replicas": 3}, strict=True)
    assert any("/replicas" in error for error in report["errors"])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"persistance": {"enabled": False}}, "at '': additional properties 'persistance' not allowed"),
        ({"webhook": {"secrets": {}}}, "at '/webhook': additional properties 'secrets' not allowed"),
        (
            {"config": {"transcriptTxt": "drop"}},
            "at '/config': additional properties 'transcriptTxt' not allowed",
        ),
        (
            {"ingress": {"tls": {"secret": "x"}}},
            "at '/ingress/tls': additional properties 'secret' not allowed",
        ),
        ({"webhook": {"port": "8080"}}, "at '/webhook/port': got string, want integer"),
        ({"persistence": {"enabled": "yes"}}, "at '/persistence/enabled': got string, want boolean"),
        ({"config": {"transcriptText": "none"}}, "at '/config/transcriptText'"),
        ({"config": {"maxAttributeBytes": 10}}, "at '/config/maxAttributeBytes'"),
        ({"otlp": {"protocol": "http/json"}}, "at '/otlp/protocol'"),
        ({"otlp": {"endpoint": "otel-collector:4318"}}, "at '/otlp/endpoint'"),
    ],
)
def test_misspelt_keys_and_wrong_types_are_refused_with_the_path(
    values: dict[str, Any], expected: str
) -> None:
    assert expected in rejection(values)


@pytest.mark.parametrize(
    "values",
    [
        {"config": {"webhookSecret": "s3cret"}},
        {"config": {"cartesiaApiKey": "sk_live"}},
        {"webhook": {"secret": {"value": "s3cret"}}},
        {"otlp": {"headers": "x-honeycomb-team=KEY"}},
        {"config": {"listenPort": 9000}},
        {"config": {"stateDir": "/data"}},
    ],
)
def test_secret_values_and_chart_owned_settings_are_refused(values: dict[str, Any]) -> None:
    assert "at '/" in rejection(values)


@pytest.mark.parametrize(
    "name", ["OTELBRIDGE_WEBHOOK_SECRET", "OTEL_EXPORTER_OTLP_HEADERS", "OTELBRIDGE_CARTESIA_API_KEY"]
)
def test_extra_env_refuses_a_plain_secret_value(name: str) -> None:
    message = rejection({"extraEnv": [{"name": name, "value": "k"}]})
    assert f"extraEnv {name} holds a secret" in message and "secretKeyRef" in message
    allowed = render({"extraEnv": [{"name": name, "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]})
    assert {"name": name, "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}} in allowed.container[
        "env"
    ]


def test_config_keys_are_the_daemons_settings() -> None:
    """Every key config accepts is an otelbridge setting of the same type, and every setting the
    chart does not own itself is accepted."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    accepted = schema["properties"]["config"]["properties"]
    snake = {re.sub(r"([A-Z])", r"_\1", key).lower(): spec for key, spec in accepted.items()}
    assert set(snake) == set(Settings.model_fields) - CHART_OWNED
    for field, spec in snake.items():
        annotation = str(Settings.model_fields[field].annotation)
        kind = {"integer": "int", "number": "float", "boolean": "bool", "string": "str"}[spec["type"]]
        assert kind in annotation or "enum" in spec, (field, annotation, spec)
        assert spec["description"].startswith(f"OTELBRIDGE_{field.upper()}:")
    rendered = render(
        {"config": {"pollInterval": 0, "spoolMaxBytes": 2147483648, "retryInitialBackoff": 0.5}}
    )
    assert rendered.config["OTELBRIDGE_POLL_INTERVAL"] == "0"
    assert rendered.config["OTELBRIDGE_SPOOL_MAX_BYTES"] == "2147483648"  # not 2.147483648e+09
    assert rendered.config["OTELBRIDGE_RETRY_INITIAL_BACKOFF"] == "0.5"


def test_the_settings_daemon_refuses_are_refused_by_the_schema_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value the schema lets through for an enum setting is one the daemon takes; the one it
    refuses, the daemon refuses too (the schema's enums are the daemon's)."""
    monkeypatch.setenv("OTELBRIDGE_TRANSCRIPT_TEXT", "none")
    with pytest.raises(SettingsError):
        load_settings()
    assert "at '/config/transcriptText'" in rejection({"config": {"transcriptText": "none"}})


# --- behaviour of single options ------------------------------------------------------------
def test_a_settings_change_changes_the_checksum_and_nothing_else_does() -> None:
    base = render()
    configmap = base.manifests["otelbridge/templates/configmap.yaml"]
    assert checksum(base) == hashlib.sha256(configmap.encode()).hexdigest()
    assert checksum(render({"config": {"logLevel": "debug"}})) != checksum(base)
    assert checksum(render({"otlp": {"endpoint": "http://collector:4318"}})) != checksum(base)
    assert checksum(render({"shutdownTimeout": 20})) != checksum(base)
    assert checksum(render({"resources": {"requests": {"cpu": "1"}}})) == checksum(base)


@pytest.mark.parametrize(
    ("values", "grace"),
    [
        ({}, 30),
        ({"shutdownTimeout": 45}, 65),
        ({"shutdownTimeout": 12.5}, 33),
        ({"shutdownTimeout": 10, "terminationGracePeriodSeconds": 15}, 15),
    ],
)
def test_grace_period_is_derived_from_the_shutdown_timeout(values: dict[str, Any], grace: int) -> None:
    rendered = render(values)
    assert rendered.pod_spec["terminationGracePeriodSeconds"] == grace
    assert float(rendered.config["OTELBRIDGE_SHUTDOWN_TIMEOUT"]) == values.get("shutdownTimeout", 10)


def test_a_grace_period_inside_the_drain_is_refused() -> None:
    message = rejection({"shutdownTimeout": 30, "terminationGracePeriodSeconds": 30})
    assert "terminationGracePeriodSeconds (30) must be at least shutdownTimeout + 5 (35)" in message


def test_a_tls_secret_without_keys_is_refused() -> None:
    message = rejection({"otlp": {"tls": {"existingSecret": "otlp-tls"}}})
    assert "none of otlp.tls.caKey, certKey, keyKey" in message


def test_persistence_claim_or_empty_dir() -> None:
    claimed = render()
    (template,) = claimed.statefulset["spec"]["volumeClaimTemplates"]
    assert template["metadata"]["name"] == "state"
    assert template["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert "state" not in {volume["name"] for volume in claimed.pod_spec["volumes"]}
    ephemeral = render({"persistence": {"enabled": False}})
    assert "volumeClaimTemplates" not in ephemeral.statefulset["spec"]
    (state,) = [volume for volume in ephemeral.pod_spec["volumes"] if volume["name"] == "state"]
    assert state["emptyDir"] == {"sizeLimit": "2Gi"}


def test_secrets_by_reference_reach_the_pod() -> None:
    rendered = render(load_values(CHART_DIR / "ci" / "secrets-values.yaml"))
    volumes = {volume["name"]: volume.get("secret") for volume in rendered.pod_spec["volumes"]}
    assert volumes["webhook-secret"]["secretName"] == "otelbridge-webhook"
    assert volumes["webhook-secret"]["items"] == [{"key": "secret", "path": "secret"}]
    assert volumes["cartesia-api-key"]["items"] == [{"key": "api-key", "path": "api-key"}]
    assert rendered.config["OTELBRIDGE_WEBHOOK_SECRET_FILE"] == "/etc/otelbridge/webhook/secret"
    assert rendered.config["OTELBRIDGE_CARTESIA_API_KEY_FILE"] == "/etc/otelbridge/cartesia/api-key"
    assert rendered.config["OTEL_EXPORTER_OTLP_CERTIFICATE"] == "/etc/otelbridge/otlp-tls/ca.crt"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in rendered.container["env"]}
    assert env == {
        "OTEL_EXPORTER_OTLP_HEADERS": {"name": "otlp-auth", "key": "headers"},
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": {"name": "otlp-auth", "key": "traces-headers"},
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS": {"name": "otlp-auth", "key": "metrics-headers"},
    }
    # Without a name the Secret is "<fullname>-webhook", and NOTES says how to create it.
    default = render()
    assert {v["name"]: v.get("secret", {}).get("secretName") for v in default.pod_spec["volumes"]}[
        "webhook-secret"
    ] == "ob-otelbridge-webhook"
    assert "create secret generic ob-otelbridge-webhook" in default.notes


@pytest.mark.parametrize(
    ("values_file", "expected"),
    [
        ("honeycomb-values.yaml", {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://api.honeycomb.io"}),
        ("honeycomb-eu-values.yaml", {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://api.eu1.honeycomb.io"}),
        (
            "grafana-cloud-values.yaml",
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otlp-gateway-prod-eu-west-2.grafana.net/otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
        ),
        (
            "tempo-mimir-values.yaml",
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo-distributor.tempo:4318/v1/traces",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://mimir-distributor.mimir:8080/otlp/v1/metrics",
                "OTEL_METRIC_EXPORT_INTERVAL": "30000",
            },
        ),
        ("jaeger-values.yaml", {"OTEL_METRICS_EXPORTER": "none"}),
        (
            "phoenix-values.yaml",
            {"OTEL_METRICS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://phoenix.phoenix:6006"},
        ),
        (
            "collector-values.yaml",
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_INSECURE": "true"},
        ),
    ],
)
def test_each_backend_sets_its_variables(values_file: str, expected: dict[str, str]) -> None:
    rendered = render(load_values(CHART_DIR / "ci" / values_file))
    assert {key: rendered.config.get(key) for key in expected} == expected


@pytest.mark.parametrize(
    ("values", "warning"),
    [
        ({"webhook": {"allowUnauthenticated": True}}, "WARNING: webhook.allowUnauthenticated=true"),
        ({"persistence": {"enabled": False}}, "WARNING: persistence.enabled=false"),
        ({"ingress": {"enabled": True}}, "WARNING: the Ingress has no TLS"),
        ({"service": {"type": "LoadBalancer"}}, "WARNING: the webhook Service is a LoadBalancer"),
    ],
)
def test_notes_warn_on_risky_settings(values: dict[str, Any], warning: str) -> None:
    notes = render(values).notes
    assert warning in notes
    assert notes.count("WARNING") == 1


def test_notes_of_a_safe_setup_warn_of_nothing_and_give_the_webhook_url() -> None:
    notes = render(load_values(CHART_DIR / "ci" / "ingress-values.yaml")).notes
    assert "WARNING" not in notes
    assert "https://otelbridge.voice.example.com/webhooks/cartesia" in notes
    assert "http://ob-otelbridge.voice.svc:80/webhooks/cartesia" in render().notes


# --- one source for the rules and the dashboard ---------------------------------------------
def test_prometheus_rule_groups_are_the_rule_files_groups() -> None:
    rendered = render(MONITORING)
    rule = rendered.one("PrometheusRule")
    assert rule["spec"]["groups"] == load_values(RULES_FILE)["groups"]
    assert rule["spec"]["groups"]  # the file is not empty


def test_dashboard_config_map_holds_the_dashboard_json_as_it_is() -> None:
    rendered = render({"monitoring": {"dashboard": {"enabled": True, "namespace": "monitoring"}}})
    (dashboard,) = [
        cm for cm in rendered.of_kind("ConfigMap") if cm["metadata"]["name"].endswith("-dashboard")
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["data"] == {"otelbridge-dashboard.json": DASHBOARD_FILE.read_text(encoding="utf-8")}


def test_service_monitor_scrapes_the_admin_service() -> None:
    rendered = render(MONITORING)
    monitor = rendered.one("ServiceMonitor")["spec"]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    matched = [
        svc
        for svc in rendered.of_kind("Service")
        if monitor["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    ]
    assert [svc["spec"]["clusterIP"] for svc in matched] == ["None"]
    assert endpoint["port"] in {port["name"] for port in matched[0]["spec"]["ports"]}
    # The rules' "daemon down" alerts match jobs named like otelbridge; jobLabel makes it so.
    assert matched[0]["metadata"]["labels"][monitor["jobLabel"]] == "otelbridge"


def test_monitoring_objects_are_off_by_default() -> None:
    rendered = render()
    assert not rendered.of_kind("ServiceMonitor") and not rendered.of_kind("PrometheusRule")
    assert [cm["metadata"]["name"] for cm in rendered.of_kind("ConfigMap")] == ["ob-otelbridge"]


def test_chart_files_are_symlinks_to_the_one_source() -> None:
    for link, source in [
        (CHART_DIR / "files" / "otelbridge.rules.yaml", RULES_FILE),
        (CHART_DIR / "files" / "otelbridge-dashboard.json", DASHBOARD_FILE),
    ]:
        assert link.is_symlink()
        assert link.resolve() == source.resolve()


def test_packaged_chart_carries_the_linked_files(tmp_path: Path) -> None:
    """``helm package`` follows the symlinks: the archive holds the files' content, so a chart
    installed from it (no repository beside it) renders the same rules and dashboard."""
    archive = Path(helm.package(CHART_DIR, destination=tmp_path))
    with tarfile.open(archive) as tar:
        for member, source in [
            ("otelbridge/files/otelbridge.rules.yaml", RULES_FILE),
            ("otelbridge/files/otelbridge-dashboard.json", DASHBOARD_FILE),
        ]:
            info = tar.getmember(member)
            assert info.isfile()
            extracted = tar.extractfile(info)
            assert extracted is not None
            assert extracted.read() == source.read_bytes()
    from_archive = render(MONITORING, chart_dir=archive)
    assert from_archive.objects == render(MONITORING).objects
