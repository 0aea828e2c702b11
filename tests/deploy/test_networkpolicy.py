"""The chart's optional NetworkPolicy (networkPolicy.*), rendered by real Helm and validated
against the Kubernetes schemas: off by default; on, the webhook port open, the admin port from
the monitoring namespace or the selectors given, egress to DNS, the OTLP endpoint, Cartesia and
(with a database) PostgreSQL, and nothing else."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart import CHART_DIR, KUBE_VERSION, Rendered, render, validate_object

ON: dict[str, Any] = {"networkPolicy": {"enabled": True}}
DATABASE = {"database": {"existingSecret": "otelbridge-db-app"}}
MONITORING_NAMESPACE = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
KUBE_DNS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}


def enabled(**network_policy: Any) -> dict[str, Any]:
    return {"networkPolicy": {"enabled": True, **network_policy}}


def policy(rendered: Rendered) -> dict[str, Any]:
    """The one NetworkPolicy, checked against Kubernetes' schema and selecting the workload's pods."""
    obj = rendered.one("NetworkPolicy")
    validate_object(obj)
    spec: dict[str, Any] = obj["spec"]
    pod_labels = rendered.workload["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert spec["podSelector"]["matchLabels"] == rendered.workload["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    return spec


def ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(port["protocol"], port["port"]) for port in rule["ports"]}


def ingress_on(spec: dict[str, Any], port: int) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [rule for rule in spec["ingress"] if ("TCP", port) in ports(rule)]
    (rule,) = rules
    return rule


def egress_to(spec: dict[str, Any], port: int, protocol: str = "TCP") -> dict[str, Any]:
    rules: list[dict[str, Any]] = [rule for rule in spec["egress"] if (protocol, port) in ports(rule)]
    (rule,) = rules
    return rule


def container_port(rendered: Rendered, name: str) -> int:
    (port,) = [p["containerPort"] for p in rendered.container["ports"] if p["name"] == name]
    return int(port)


def test_off_by_default() -> None:
    assert not render().of_kind("NetworkPolicy")
    assert not render(DATABASE).of_kind("NetworkPolicy")


def test_enabled_the_defaults() -> None:
    rendered = render(ON)
    spec = policy(rendered)
    webhook, admin = container_port(rendered, "webhook"), container_port(rendered, "admin")
    # ingress: the webhook port from anywhere (no `from`), the admin port from monitoring only
    assert [ports(rule) for rule in spec["ingress"]] == [{("TCP", webhook)}, {("TCP", admin)}]
    assert "from" not in ingress_on(spec, webhook)
    assert ingress_on(spec, admin)["from"] == [MONITORING_NAMESPACE]
    # egress: DNS to kube-dns, OTLP and Cartesia to any address, no database without one
    assert [ports(rule) for rule in spec["egress"]] == [
        {("UDP", 53), ("TCP", 53)},
        {("TCP", 4317), ("TCP", 4318)},
        {("TCP", 443)},
    ]
    assert egress_to(spec, 53, "UDP")["to"] == [KUBE_DNS]
    assert "to" not in egress_to(spec, 4318)
    assert "to" not in egress_to(spec, 443)
    assert not any(("TCP", 5432) in ports(rule) for rule in spec["egress"])


def test_a_database_adds_the_postgresql_egress() -> None:
    spec = policy(render({**ON, **DATABASE}))
    assert ports(spec["egress"][-1]) == {("TCP", 5432)}
    assert "to" not in egress_to(spec, 5432)
    cnpg = [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "otelbridge-db"}}}]
    spec = policy(render({**enabled(egress={"database": {"port": 6432, "to": cnpg}}), **DATABASE}))
    assert egress_to(spec, 6432)["to"] == cnpg
    assert not any(("TCP", 5432) in ports(rule) for rule in spec["egress"])
    # a database port without a database opens nothing
    spec = policy(render(enabled(egress={"database": {"port": 6432}})))
    assert not any(("TCP", 6432) in ports(rule) for rule in spec["egress"])


def test_ports_follow_the_webhook_and_admin_ports() -> None:
    rendered = render({**ON, "webhook": {"port": 9000}, "admin": {"port": 9100}})
    spec = policy(rendered)
    assert [ports(rule) for rule in spec["ingress"]] == [{("TCP", 9000)}, {("TCP", 9100)}]
    assert (container_port(rendered, "webhook"), container_port(rendered, "admin")) == (9000, 9100)


def test_webhook_peers() -> None:
    controller = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    rendered = render(enabled(webhook={"from": controller}))
    assert ingress_on(policy(rendered), container_port(rendered, "webhook"))["from"] == controller


@pytest.mark.parametrize(
    ("admin", "expected"),
    [
        (
            {"namespaceSelector": {"matchLabels": {"team": "observability"}}},
            [{"namespaceSelector": {"matchLabels": {"team": "observability"}}}],
        ),
        (
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
            [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
        ),
        (
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            },
            # one peer: those pods in those namespaces (not either)
            [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                }
            ],
        ),
        (
            {"extraFrom": [{"ipBlock": {"cidr": "10.0.0.0/16"}}]},
            [MONITORING_NAMESPACE, {"ipBlock": {"cidr": "10.0.0.0/16"}}],
        ),
    ],
)
def test_admin_peers_replace_the_monitoring_default(admin: dict[str, Any], expected: list[Any]) -> None:
    """A selector given replaces the default namespace (not merged into it, as Helm would merge a
    default map); extraFrom adds peers (e.g. the nodes, where a CNI filters the probes)."""
    rendered = render(enabled(admin=admin))
    assert ingress_on(policy(rendered), container_port(rendered, "admin"))["from"] == expected


@pytest.mark.parametrize(
    ("otlp", "expected"),
    [
        ({}, {4317, 4318}),
        ({"endpoint": "http://otel-collector.observability:4317", "protocol": "grpc"}, {4317, 4318}),
        ({"endpoint": "http://phoenix.phoenix:6006"}, {4317, 4318, 6006}),
        ({"endpoint": "https://api.honeycomb.io"}, {4317, 4318, 443}),
        ({"endpoint": "http://collector"}, {4317, 4318, 80}),
        (
            {
                "tracesEndpoint": "http://tempo-distributor.tempo:4318/v1/traces",
                "metricsEndpoint": "http://mimir-distributor.mimir:8080/otlp/v1/metrics",
            },
            {4317, 4318, 8080},
        ),
        ({"endpoint": "http://[fd00::1]:4319"}, {4317, 4318, 4319}),
    ],
)
def test_otlp_egress_adds_the_endpoints_ports(otlp: dict[str, Any], expected: set[int]) -> None:
    spec = policy(render({**ON, "otlp": otlp}))
    # DNS first, then OTLP: each port once
    rule = spec["egress"][1]
    assert len(rule["ports"]) == len(ports(rule))
    assert ports(rule) == {("TCP", port) for port in expected}


def test_otlp_ports_and_peers_given() -> None:
    observability = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]
    spec = policy(render(enabled(egress={"otlp": {"ports": [4317], "to": observability}})))
    assert ports(spec["egress"][1]) == {("TCP", 4317)}
    assert spec["egress"][1]["to"] == observability
    # no port at all (none given, no endpoint: a sidecar Collector on localhost): no OTLP rule,
    # never a rule without ports (which would open every port)
    spec = policy(render(enabled(egress={"otlp": {"ports": []}})))
    assert [ports(rule) for rule in spec["egress"]] == [{("UDP", 53), ("TCP", 53)}, {("TCP", 443)}]
    assert all(rule.get("ports") for rule in spec["egress"] + spec["ingress"])


def test_dns_to_any_and_cartesia_off() -> None:
    spec = policy(render(enabled(egress={"dns": {"to": []}, "cartesia": {"enabled": False}})))
    assert "to" not in egress_to(spec, 53, "UDP")
    assert not any(("TCP", 443) in ports(rule) for rule in spec["egress"])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (enabled(admin={"namespaceSelectors": {}}), "at '/networkPolicy/admin': additional properties"),
        (enabled(webhook={"from": [{}]}), "at '/networkPolicy/webhook/from/0'"),
        (enabled(webhook={"from": [{"namespace": "x"}]}), "at '/networkPolicy/webhook/from/0'"),
        (enabled(egress={"otlp": {"ports": ["4317"]}}), "at '/networkPolicy/egress/otlp/ports/0'"),
        (enabled(egress={"database": {"port": 70000}}), "at '/networkPolicy/egress/database/port'"),
        (
            enabled(admin={"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}),
            "at '/networkPolicy/admin/podSelector/matchExpressions/0/operator'",
        ),
        ({"networkPolicy": {"enabled": "yes"}}, "at '/networkPolicy/enabled': got string, want boolean"),
    ],
)
def test_network_policy_values_are_schema_checked(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    assert expected in str(caught.value)


@pytest.mark.parametrize("values", [ON, {**ON, **DATABASE}], ids=["sqlite", "database"])
def test_lint_is_clean_with_the_policy(values: dict[str, Any]) -> None:
    report = helm.lint(CHART_DIR, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
