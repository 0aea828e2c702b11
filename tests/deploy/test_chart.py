"""The Helm chart, rendered and linted by real Helm (helm-python-sdk, in process) for its defaults
and every ci/*-values.yaml, each object checked against the Kubernetes schemas (strict), and the
chart's promises checked on what it renders: one replica (a StatefulSet on SQLite) without a
database and a Deployment of several sharing PostgreSQL with one, secrets only by reference, the
admin port never exposed, a checksum that rolls the pod on a settings change, a grace period
above the drain, and the rule file and dashboard rendered from their one source."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from otelbridge.mapping import conventions
from otelbridge.settings import Settings, SettingsError, load_settings
from tests.deploy.chart import (
    CHART_DIR,
    CI_VALUES,
    DASHBOARD_FILE,
    KUBE_VERSION,
    RELEASE,
    REPO,
    RULES_FILE,
    Rendered,
    load_values,
    render,
    validate_object,
)
from tests.deploy.slo_rules import SLO_GROUP_PREFIX, SLO_RULES_FILE, rendered_slo_groups, slo_rules_text

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
    r"^(OTELBRIDGE_WEBHOOK_SECRET|OTELBRIDGE_CARTESIA_API_KEY|OTELBRIDGE_DATABASE_URL"
    r"|OTEL_EXPORTER_OTLP_(\w+_)?HEADERS)$"
)
# The example CloudNativePG Cluster and its README; the chart names the Secret it makes.
CNPG_DIR = REPO / "deploy" / "cloudnativepg"
CNPG_SECRET = "otelbridge-db-app"
DATABASE = {"database": {"existingSecret": CNPG_SECRET}}
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
    "database_url",
    "database_url_file",
}


def values_of(path: Path | None) -> dict[str, Any]:
    return load_values(path) if path is not None else {}


def with_database(values: dict[str, Any]) -> bool:
    """Whether ``values`` put the state in PostgreSQL (a Deployment of several replicas)."""
    return bool(values.get("database", {}).get("existingSecret"))


def rejection(values: dict[str, Any]) -> str:
    """The message Helm refuses ``values`` with (schema or a template's fail)."""
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    return str(caught.value)


def checksum(rendered: Rendered) -> str:
    value: str = rendered.workload["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    return value


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest) -> tuple[dict[str, Any], Rendered]:
    values = values_of(request.param)
    return values, render(values)


# --- every rendering ------------------------------------------------------------------------
def test_every_object_is_valid_against_the_kubernetes_schemas(case: tuple[dict[str, Any], Rendered]) -> None:
    values, rendered = case
    kinds = {obj["kind"] for obj in rendered.objects}
    workload, other = (
        ("Deployment", "StatefulSet") if with_database(values) else ("StatefulSet", "Deployment")
    )
    assert {workload, "ConfigMap", "Service", "ServiceAccount", "PodDisruptionBudget"} <= kinds
    assert other not in kinds
    for obj in rendered.objects:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            # prometheus-operator's kinds are not in Kubernetes' schemas: their metadata is, and
            # their spec is checked against the admin Service and the rule file below.
            assert obj["kind"] in {"ServiceMonitor", "PrometheusRule"}
            validate_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]})
        else:
            validate_object(obj)


def test_replicas_by_mode_non_root_read_only_with_probes(case: tuple[dict[str, Any], Rendered]) -> None:
    values, rendered = case
    # one replica without a database; with one, the number given, else 2
    assert rendered.workload["spec"]["replicas"] == (
        (values.get("replicas") or 2) if with_database(values) else 1
    )
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
    if rendered.workload["kind"] == "StatefulSet":
        assert rendered.workload["spec"]["serviceName"] in services
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
    database = with_database(case[0])
    # a claim only without a database; an emptyDir (world-writable) gets a directory under it
    persistent = case[0].get("persistence", {}).get("enabled", True) and not database
    assert str(settings.state_dir) == ("/var/lib/otelbridge" if persistent else "/var/lib/otelbridge/state")
    assert settings.database_url is None
    assert settings.database_url_file == (Path("/etc/otelbridge/database/uri") if database else None)


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
        (
            {"database": {"secretName": "db"}},
            "at '/database': additional properties 'secretName' not allowed",
        ),
        ({"database": {"existingSecret": "Db_App"}}, "at '/database/existingSecret'"),
        ({"database": {"secretKey": ""}}, "at '/database/secretKey'"),
        ({"replicas": "2"}, "at '/replicas': got string, want null or integer"),
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


# --- the two modes: SQLite (a StatefulSet) or PostgreSQL (a Deployment) -----------------------
def test_without_a_database_one_replica_statefulset_with_a_claim() -> None:
    rendered = render()
    assert not rendered.of_kind("Deployment")
    statefulset = rendered.statefulset
    assert statefulset["spec"]["replicas"] == 1
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert "topologySpreadConstraints" not in rendered.pod_spec
    assert rendered.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in rendered.one("PodDisruptionBudget")["spec"]
    assert not any(key.startswith("OTELBRIDGE_DATABASE") for key in rendered.config)
    assert "database-url" not in {volume["name"] for volume in rendered.pod_spec["volumes"]}
    # replicas left empty or given as 1: the same rendering
    assert render({"replicas": None}).objects == rendered.objects
    assert render({"replicas": 1}).objects == rendered.objects


def test_with_a_database_a_deployment_of_two_replicas_without_a_claim() -> None:
    rendered = render(DATABASE)
    assert not rendered.of_kind("StatefulSet") and not rendered.of_kind("PersistentVolumeClaim")
    deployment = rendered.deployment
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert "volumeClaimTemplates" not in spec
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    # persistence.enabled (true by default) makes no claim with a database: an emptyDir, under
    # which otelbridge makes its (unused) state directory
    (state,) = [volume for volume in rendered.pod_spec["volumes"] if volume["name"] == "state"]
    assert state["emptyDir"] == {"sizeLimit": "2Gi"}
    assert rendered.config["OTELBRIDGE_STATE_DIR"] == "/var/lib/otelbridge/state"
    (spread,) = rendered.pod_spec["topologySpreadConstraints"]
    assert spread == {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": spec["selector"]["matchLabels"]},
    }
    budget = rendered.one("PodDisruptionBudget")["spec"]
    assert budget["minAvailable"] == 1 and "maxUnavailable" not in budget
    assert budget["selector"] == spec["selector"]
    for obj in rendered.objects:
        validate_object(obj)


@pytest.mark.parametrize(("secret_key", "expected_key"), [(None, "uri"), ("fqdn-uri", "fqdn-uri")])
def test_the_database_uri_is_a_mounted_key_of_the_named_secret(
    secret_key: str | None, expected_key: str
) -> None:
    database: dict[str, Any] = {"existingSecret": CNPG_SECRET}
    if secret_key is not None:
        database["secretKey"] = secret_key
    rendered = render({"database": database})
    path = rendered.config["OTELBRIDGE_DATABASE_URL_FILE"]
    volumes = {volume["name"]: volume for volume in rendered.pod_spec["volumes"]}
    mounted = {}
    for mount in rendered.container["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret and secret["secretName"] == CNPG_SECRET:
            assert mount["readOnly"] is True
            assert secret["defaultMode"] == 0o440
            for item in secret["items"]:
                mounted[f"{mount['mountPath']}/{item['path']}"] = item["key"]
    assert mounted == {path: expected_key}
    # Only the path is a setting: the URI is not in the values, so nowhere in a ConfigMap or env.
    assert "OTELBRIDGE_DATABASE_URL" not in rendered.config
    for config_map in rendered.of_kind("ConfigMap"):
        assert not any("postgres" in str(value) for value in config_map.get("data", {}).values())
    assert "OTELBRIDGE_DATABASE_URL" not in {env["name"] for env in rendered.container.get("env", [])}
    assert not rendered.of_kind("Secret")


@pytest.mark.parametrize(("replicas", "budget"), [(3, {"minAvailable": 1}), (1, {"maxUnavailable": 1})])
def test_replicas_with_a_database(replicas: int, budget: dict[str, int]) -> None:
    """Any number with a database. The budget is minAvailable 1 with several; with one it is
    maxUnavailable as without a database (minAvailable 1 on one pod would block every drain)."""
    rendered = render({**DATABASE, "replicas": replicas})
    assert rendered.deployment["spec"]["replicas"] == replicas
    spec = rendered.one("PodDisruptionBudget")["spec"]
    assert {key: spec[key] for key in ("minAvailable", "maxUnavailable") if key in spec} == budget
    off = render({**DATABASE, "replicas": replicas, "podDisruptionBudget": {"enabled": False}})
    assert not off.of_kind("PodDisruptionBudget")


@pytest.mark.parametrize("values", [{"replicas": 2}, {"replicas": 3, "database": {"existingSecret": ""}}])
def test_several_replicas_without_a_database_are_refused(values: dict[str, Any]) -> None:
    message = rejection(values)
    # Helm's schema error names both ends: replicas must be 1, or the database must be named.
    assert "at '/replicas': value must be 1" in message
    assert "at '/database/existingSecret': minLength: got 0, want 1" in message


def test_without_the_schema_the_chart_still_refuses_several_replicas_on_sqlite(tmp_path: Path) -> None:
    """``--skip-schema-validation`` skips values.schema.json, not the template's own check."""
    chart_dir = tmp_path / "otelbridge"
    shutil.copytree(CHART_DIR, chart_dir)
    (chart_dir / "values.schema.json").unlink()
    with pytest.raises(helm.HelmError) as caught:
        render({"replicas": 2}, chart_dir=chart_dir)
    assert "replicas is 2 but database.existingSecret is empty" in str(caught.value)
    assert render({**DATABASE, "replicas": 2}, chart_dir=chart_dir).deployment["spec"]["replicas"] == 2


def test_the_pod_is_the_same_in_both_modes() -> None:
    """One pod template (otelbridge.podTemplate) for both workloads: with the state on an
    emptyDir in both, the pods differ only by the database's Secret file, the spread across
    nodes and the settings' checksum."""
    sqlite = render({"persistence": {"enabled": False}})
    database = render({**DATABASE, "persistence": {"enabled": False}})
    sqlite_pod = copy.deepcopy(sqlite.statefulset["spec"]["template"])
    database_pod = copy.deepcopy(database.deployment["spec"]["template"])
    for pod in (sqlite_pod, database_pod):
        del pod["metadata"]["annotations"]["checksum/config"]
    spec = database_pod["spec"]
    assert spec.pop("topologySpreadConstraints")
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "database-url"]
    spec["containers"][0]["volumeMounts"].remove(mount)
    (volume,) = [v for v in spec["volumes"] if v["name"] == "database-url"]
    spec["volumes"].remove(volume)
    assert database_pod == sqlite_pod
    assert {**sqlite.config, "OTELBRIDGE_DATABASE_URL_FILE": mount["mountPath"] + "/uri"} == database.config


@pytest.mark.parametrize("name", ["OTELBRIDGE_DATABASE_URL", "OTELBRIDGE_DATABASE_URL_FILE"])
def test_extra_env_may_not_choose_the_database(name: str) -> None:
    message = rejection(
        {"extraEnv": [{"name": name, "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    )
    assert f"extraEnv {name}" in message and "database.existingSecret" in message


def test_notes_name_the_workload_of_each_mode() -> None:
    sqlite = render({"persistence": {"enabled": False}}).notes
    assert "installed as StatefulSet ob-otelbridge in namespace voice" in sqlite
    assert "port-forward statefulset/ob-otelbridge 9464" in sqlite
    database = render({**DATABASE, "persistence": {"enabled": False}}).notes
    assert "installed as Deployment ob-otelbridge in namespace voice" in database
    assert "port-forward deployment/ob-otelbridge 9464" in database
    assert f"2 replica(s) share the state in PostgreSQL, the URI read from Secret {CNPG_SECRET}" in database
    # no claim to lose with a database: persistence.enabled=false warns of nothing
    assert "WARNING" not in database


# NOTES.txt's and the README's commands: the secret read back, the port-forward, the claim.
SECRET_READ_BACK = re.compile(r"get secret (\S+) -o jsonpath='\{\.data\.((?:\\\.|[^}])+)\}' \| base64 -d")
PORT_FORWARD = re.compile(r"port-forward (statefulset|deployment)/(\S+) (\d+)")
DELETE_CLAIM = re.compile(r"delete pvc (state-\S+)")
# the README's own release and values
README_RELEASE = "otelbridge"
README_VALUES = {
    "webhook": {"secret": {"existingSecret": "otelbridge-webhook"}},
    "otlp": {"endpoint": "http://otel-collector.observability:4318"},
}


def webhook_secret_of(rendered: Rendered) -> tuple[str, str]:
    """(Secret, key) the pod mounts the webhook secret from."""
    (volume,) = [v for v in rendered.pod_spec["volumes"] if v["name"] == "webhook-secret"]
    (item,) = volume["secret"]["items"]
    return volume["secret"]["secretName"], item["key"]


def read_back(text: str) -> list[tuple[str, str]]:
    """(Secret, key) of every read-back command in ``text``, the jsonpath's escaped dots undone."""
    return [(name, key.replace("\\.", ".")) for name, key in SECRET_READ_BACK.findall(text)]


def forwarded(text: str) -> list[tuple[str, str, int]]:
    return [(kind, name, int(port)) for kind, name, port in PORT_FORWARD.findall(text)]


@pytest.mark.parametrize(
    ("values", "release"),
    [
        ({}, RELEASE),
        (README_VALUES, README_RELEASE),
        ({"webhook": {"secret": {"existingSecret": "cartesia-hook", "key": "hook.secret"}}}, RELEASE),
        ({**DATABASE, "admin": {"port": 9500}}, RELEASE),
        ({"fullnameOverride": "bridge", "persistence": {"enabled": False}}, RELEASE),
    ],
    ids=["defaults", "readme", "dotted-key", "database", "fullname-override"],
)
def test_notes_commands_name_what_the_chart_renders(values: dict[str, Any], release: str) -> None:
    """The secret NOTES.txt reads back is the one the pod mounts, its key too; the port-forward
    targets the workload rendered, on its admin port; the claim to delete is the StatefulSet's."""
    rendered = render(values, release=release)
    notes = rendered.notes
    assert read_back(notes) == [webhook_secret_of(rendered)]
    workload = rendered.workload
    (admin_port,) = [p["containerPort"] for p in rendered.container["ports"] if p["name"] == "admin"]
    assert forwarded(notes) == [(workload["kind"].lower(), workload["metadata"]["name"], admin_port)]
    # /readyz and the two counters that show a trace went out, as /metrics names them
    assert f"curl -s localhost:{admin_port}/readyz" in notes
    assert f"curl -s localhost:{admin_port}/metrics | grep -E " in notes
    templates = workload["spec"].get("volumeClaimTemplates", [])
    claims = [f"{t['metadata']['name']}-{workload['metadata']['name']}-0" for t in templates]
    assert DELETE_CLAIM.findall(notes) == claims
    if claims:
        assert "helm uninstall leaves it (persistence.retentionPolicy.whenDeleted=Retain)" in notes


def test_notes_grep_finds_the_first_trace_counters_in_metrics() -> None:
    """The grep NOTES.txt prints picks, from what /metrics serves (the daemon's own Prometheus
    exposition, every series there from start), the spans counter and the successful export
    attempts, the traces' among them, and nothing else."""
    from opentelemetry.sdk.resources import Resource

    from otelbridge.delivery.telemetry import Telemetry

    match = re.search(r"\| grep -E '([^']+)'", render().notes)
    assert match is not None
    pattern = re.compile(match.group(1))
    telemetry = Telemetry(Resource.create({}))
    try:
        exposition = telemetry.prometheus_text().decode()
    finally:
        telemetry.shutdown()
    picked = [line.rsplit(" ", 1)[0] for line in exposition.splitlines() if pattern.search(line)]
    spans = conventions.SELF_SPANS.replace(".", "_") + "_total"
    attempts = conventions.SELF_EXPORT_ATTEMPTS.replace(".", "_") + "_total"
    assert [line for line in picked if line.startswith(spans + "{")]
    ok = [line for line in picked if line.startswith(attempts + "{")]
    assert any('signal="traces"' in line for line in ok)
    assert all('outcome="ok"' in line for line in ok)
    assert len(picked) == 1 + len(ok)


def test_notes_on_the_claim_follow_the_retention_policy() -> None:
    delete = render({"persistence": {"retentionPolicy": {"whenDeleted": "Delete"}}})
    assert delete.statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    assert "helm uninstall deletes it with the StatefulSet" in delete.notes
    assert not DELETE_CLAIM.findall(delete.notes)
    # no claim (an emptyDir, or a database): nothing said about one
    assert "claim" not in render({"persistence": {"enabled": False}}).notes.split("WARNING")[0]
    assert "delete pvc" not in render(DATABASE).notes
    # unauthenticated: no secret to read back
    assert not read_back(render({"webhook": {"allowUnauthenticated": True}}).notes)


def test_the_readme_commands_name_what_its_release_renders() -> None:
    """The chart README's commands, for its own release (otelbridge) and values: the port-forward
    targets the StatefulSet (the Deployment with a database) by its real name, the secret read
    back is the one created above it and mounted by the pod, the claim is the StatefulSet's."""
    readme = (CHART_DIR / "README.md").read_text(encoding="utf-8")
    sqlite = render(README_VALUES, release=README_RELEASE)
    database = render({**README_VALUES, **DATABASE}, release=README_RELEASE)
    targets = {(w["kind"].lower(), w["metadata"]["name"]) for w in (sqlite.workload, database.workload)}
    found = forwarded(readme)
    assert found and {(kind, name) for kind, name, _ in found} == {("statefulset", "otelbridge")}
    assert {(kind, name) for kind, name, _ in found} <= targets
    assert "`deployment/otelbridge`" in readme and ("deployment", "otelbridge") in targets
    (admin_port,) = [p["containerPort"] for p in sqlite.container["ports"] if p["name"] == "admin"]
    assert {port for _, _, port in found} == {admin_port}
    assert "otelbridge-otelbridge" not in readme
    secrets = read_back(readme)
    assert secrets and set(secrets) == {webhook_secret_of(sqlite)}
    assert "create secret generic otelbridge-webhook \\\n  --from-literal=webhook-secret=" in readme
    (template,) = sqlite.statefulset["spec"]["volumeClaimTemplates"]
    claim = f"{template['metadata']['name']}-{sqlite.statefulset['metadata']['name']}-0"
    assert set(DELETE_CLAIM.findall(readme)) == {claim}
    assert "persistentVolumeClaimRetentionPolicy" in readme


def test_the_cloudnativepg_example_plugs_into_the_chart() -> None:
    """deploy/cloudnativepg/cluster.yaml parses, is a CloudNativePG Cluster of 3 instances with an
    otelbridge database and owner, and its "<cluster>-app" Secret is the one the READMEs and
    ci/database-values.yaml name."""
    (cluster,) = [doc for doc in yaml.safe_load_all((CNPG_DIR / "cluster.yaml").read_text()) if doc]
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1" and cluster["kind"] == "Cluster"
    spec = cluster["spec"]
    assert spec["instances"] == 3
    assert spec["bootstrap"]["initdb"] == {"database": "otelbridge", "owner": "otelbridge"}
    assert spec["storage"]["size"]
    # CloudNativePG takes parameters as strings (YAML's bare on/off would be booleans)
    assert all(isinstance(value, str) for value in spec["postgresql"]["parameters"].values())
    validate_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": cluster["metadata"]})
    secret = f"{cluster['metadata']['name']}-app"
    assert secret == CNPG_SECRET
    readme = (CNPG_DIR / "README.md").read_text()
    assert f"--set database.existingSecret={secret}" in readme
    assert f"{cluster['metadata']['name']}-rw" in readme
    assert "never bundles PostgreSQL" in readme
    assert f"--set database.existingSecret={secret}" in (CHART_DIR / "README.md").read_text()
    assert load_values(CHART_DIR / "ci" / "database-values.yaml")["database"]["existingSecret"] == secret


# --- one source for the rules and the dashboard ---------------------------------------------
def test_prometheus_rule_groups_are_the_rule_files_groups() -> None:
    """The rule file's groups as they are, then the default SLOs' groups: those of the static
    SLO rule file (checked to be current below)."""
    rendered = render(MONITORING)
    rule = rendered.one("PrometheusRule")
    groups = load_values(RULES_FILE)["groups"]
    slo_groups = load_values(SLO_RULES_FILE)["groups"]
    assert groups and [g["name"] for g in slo_groups] == [
        "otelbridge-slo-responseLatency",
        "otelbridge-slo-ttsTtfb",
    ]
    assert rule["spec"]["groups"] == groups + slo_groups


# --- the SLOs ---------------------------------------------------------------------------------
def slo_values(**slos: dict[str, Any]) -> dict[str, Any]:
    return {"monitoring": {"prometheusRule": {"enabled": True, "slos": slos}}}


def slo_rules(values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """SLO name -> its rules, as the chart renders them with ``values``."""
    return {g["name"].removeprefix(SLO_GROUP_PREFIX): g["rules"] for g in rendered_slo_groups(values)}


def rule(rules: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [r for r in rules if name in (r.get("record"), r.get("alert"))]
    return found


def test_the_slo_rule_file_is_what_the_chart_renders() -> None:
    """deploy/prometheus/otelbridge.slo.rules.yaml is the chart's SLO groups with its defaults,
    written by tests/deploy/slo_rules.py: neither can change without the other."""
    assert SLO_RULES_FILE.read_text(encoding="utf-8") == slo_rules_text(), (
        "deploy/prometheus/otelbridge.slo.rules.yaml is stale: run python3 -m tests.deploy.slo_rules"
    )
    assert load_values(SLO_RULES_FILE)["groups"] == rendered_slo_groups()


def test_the_charts_slo_buckets_are_the_histograms() -> None:
    """The bucket boundaries the template accepts as thresholds are the daemon's own."""
    template = (CHART_DIR / "templates" / "_slo.tpl").read_text(encoding="utf-8")
    catalogue = re.search(r'define "otelbridge.sloSlis" -}}\n(.*?)\n{{- end }}', template, re.S)
    assert catalogue is not None
    slis = yaml.safe_load(catalogue.group(1))
    assert {name: (sli["metric"], tuple(sli["buckets"])) for name, sli in slis.items()} == {
        "responseLatency": ("cartesia_turn_response_latency_seconds", conventions.RESPONSE_LATENCY_BUCKETS_S),
        "ttsTtfb": ("cartesia_tts_ttfb_seconds", conventions.TTFB_BUCKETS_S),
        "sttTtfb": ("cartesia_stt_ttfb_seconds", conventions.TTFB_BUCKETS_S),
    }
    # the defaults' 1.5 s is a boundary of both histograms
    assert 1.5 in conventions.RESPONSE_LATENCY_BUCKETS_S and 1.5 in conventions.TTFB_BUCKETS_S


def test_slo_defaults_and_their_labels() -> None:
    slos = slo_rules(slo_values())
    assert set(slos) == {"responseLatency", "ttsTtfb"}
    for name, rules in slos.items():
        assert all(r["labels"]["slo"] == name for r in rules)
        assert rule(rules, "cartesia_slo:objective:ratio")["expr"] == "vector(0.95)"
        assert rule(rules, "cartesia_slo:sli:ratio_window")["labels"]["slo_window"] == "28d"
        assert 'le="1.5"' in rule(rules, "cartesia_slo:good:rate5m")["expr"]
        assert rule(rules, "CartesiaSloBurnFast")["labels"]["severity"] == "critical"
        assert rule(rules, "CartesiaSloBurnSlow")["labels"]["severity"] == "warning"


def test_per_slo_overrides_an_slo_off_and_one_added() -> None:
    """ci/slo-values.yaml: one field of a default overridden keeps the others; ``enabled: false``
    drops its group; a new name with every field adds one. A whole-number threshold matches its
    bucket as Prometheus scrapes it (``le="2.0"``) and as OTLP backends write it (``le="2"``)."""
    values = load_values(CHART_DIR / "ci" / "slo-values.yaml")
    slos = slo_rules(values)
    assert set(slos) == {"responseLatency", "sttTtfb"}
    latency = slos["responseLatency"]
    assert rule(latency, "cartesia_slo:objective:ratio")["expr"] == "vector(0.99)"
    good = rule(latency, "cartesia_slo:good:rate5m")["expr"]
    assert 'cartesia_turn_response_latency_seconds_bucket{le=~"2(\\\\.0)?"}[5m]' in good
    assert "(1 - 0.99) > 14.4" in rule(latency, "CartesiaSloBurnFast")["expr"]
    assert "[28d]" in rule(latency, "cartesia_slo:sli:ratio_window")["expr"]  # the default window kept
    stt = slos["sttTtfb"]
    assert 'cartesia_stt_ttfb_seconds_bucket{le="0.5"}[5m]' in rule(stt, "cartesia_slo:good:rate5m")["expr"]
    assert "[7d]" in rule(stt, "cartesia_slo:sli:ratio_window")["expr"]
    description = rule(stt, "CartesiaSloBurnFast")["annotations"]["description"]
    assert "95% of the user turns get their first transcript within 0.5 s over 7d" in description
    assert "At 14.4x a 7d error budget lasts 0.5 days (8.6% of it burns per 1h)" in description
    # all off: no SLO group, the rule file's groups still there
    off = slo_values(responseLatency={"enabled": False}, ttsTtfb={"enabled": False})
    assert render(off).one("PrometheusRule")["spec"]["groups"] == load_values(RULES_FILE)["groups"]


@pytest.mark.parametrize(
    ("slos", "expected"),
    [
        (
            {"ttsTtfb": {"threshold": 1.6}},
            "monitoring.prometheusRule.slos.ttsTtfb.threshold: 1.6 s is not a bucket boundary of "
            "cartesia_tts_ttfb_seconds, so no bucket counts the turns at or under it; choose one of "
            "0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1, 1.25, 1.5, 2, "
            "2.5, 3, 4, 5, 7.5, 10 (docs/conventions.md section 5)",
        ),
        (
            {"responseLatency": {"threshold": 0.025}},
            "monitoring.prometheusRule.slos.responseLatency.threshold: 0.025 s is not a bucket boundary of "
            "cartesia_turn_response_latency_seconds",
        ),
        (
            {"responseLatency": {"objective": 0.9}},
            "monitoring.prometheusRule.slos.responseLatency.objective: 0.9 leaves an error budget the page",
        ),
    ],
)
def test_slo_thresholds_off_the_buckets_and_low_objectives_are_refused(
    slos: dict[str, Any], expected: str
) -> None:
    assert expected in rejection(slo_values(**slos))


SLOS_AT = "at '/monitoring/prometheusRule/slos"
STT = {"enabled": True, "sli": "sttTtfb", "objective": 0.95, "threshold": 0.5, "window": "28d"}


@pytest.mark.parametrize(
    ("slos", "expected"),
    [
        ({"ttsTtfb": {"treshold": 1.5}}, f"{SLOS_AT}/ttsTtfb': additional properties 'treshold' not allowed"),
        ({"ttsTtfb": {"objective": 1.5}}, f"{SLOS_AT}/ttsTtfb/objective'"),
        ({"ttsTtfb": {"objective": "95%"}}, f"{SLOS_AT}/ttsTtfb/objective': got string, want number"),
        ({"ttsTtfb": {"threshold": 0}}, f"{SLOS_AT}/ttsTtfb/threshold'"),
        ({"ttsTtfb": {"window": "4w"}}, f"{SLOS_AT}/ttsTtfb/window'"),
        ({"ttsTtfb": {"sli": "llmFirstChunk"}}, f"{SLOS_AT}/ttsTtfb/sli'"),
        ({"ttsTtfb": {"enabled": "yes"}}, f"{SLOS_AT}/ttsTtfb/enabled': got string, want boolean"),
        ({"stt": {"enabled": True, "sli": "sttTtfb"}}, f"{SLOS_AT}/stt': missing properties"),
        ({"stt-ttfb": STT}, "invalid propertyName 'stt-ttfb'"),
    ],
)
def test_slo_values_are_schema_checked(slos: dict[str, Any], expected: str) -> None:
    assert expected in rejection(slo_values(**slos))


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
