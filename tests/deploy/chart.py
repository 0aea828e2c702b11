"""The Helm chart deploy/helm/otelbridge rendered by real Helm, in process.

Helm is PyPI's ``helm-python-sdk``: ctypes bindings to ``libhelm_c``, Helm v4's Go SDK built
as a C library and shipped in the wheel, so rendering, linting, schema validation and packaging
are Helm's own code with no ``helm`` binary and no cluster. Rendered YAML is parsed with Helm's
own parser too (``values_from_yaml``: sigs.k8s.io/yaml, what kubectl uses), so a document reads
here as the API server would read it.

Objects are checked with ``kubernetes-validate`` (the Kubernetes OpenAPI schemas as JSON Schema)
in strict mode, which refuses unknown fields, against the newest Kubernetes version it ships.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "otelbridge"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RULES_FILE = REPO / "deploy" / "prometheus" / "otelbridge.rules.yaml"
DASHBOARD_FILE = REPO / "deploy" / "grafana" / "otelbridge-dashboard.json"
RELEASE = "ob"
NAMESPACE = "voice"
KUBE_VERSION: str = kubernetes_validate.latest_version()
_DOCUMENT_SEPARATOR = re.compile(r"^---\s*$", re.MULTILINE)


def load_values(path: Path) -> dict[str, Any]:
    """A values file as Helm reads ``-f FILE``."""
    return helm.values_from_yaml(path.read_text(encoding="utf-8"))


def parse_documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of one rendered template."""
    documents = []
    for part in _DOCUMENT_SEPARATOR.split(text):
        if part.strip() and any(
            line.strip() and not line.lstrip().startswith("#") for line in part.splitlines()
        ):
            parsed = helm.values_from_yaml(part)
            if parsed:
                documents.append(parsed)
    return documents


@dataclass(frozen=True, slots=True)
class Rendered:
    """One ``helm template``: the manifests by template path, parsed, and NOTES.txt."""

    manifests: dict[str, str]
    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [obj for obj in self.of_kind(kind) if name is None or obj["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} objects named {name}: {[o['metadata'] for o in found]}"
        return found[0]

    @property
    def statefulset(self) -> dict[str, Any]:
        return self.one("StatefulSet")

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def workload(self) -> dict[str, Any]:
        """The one workload: the StatefulSet (SQLite) or the Deployment (PostgreSQL), never both."""
        found = self.of_kind("StatefulSet") + self.of_kind("Deployment")
        assert len(found) == 1, (
            f"{len(found)} workloads: {[(o['kind'], o['metadata']['name']) for o in found]}"
        )
        return found[0]

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.workload["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod_spec["containers"]
        assert len(containers) == 1
        container: dict[str, Any] = containers[0]
        return container

    @property
    def config(self) -> dict[str, str]:
        """The data of the settings ConfigMap (the one the container's envFrom names)."""
        (source,) = self.container["envFrom"]
        data: dict[str, str] = self.one("ConfigMap", source["configMapRef"]["name"])["data"]
        return data


def render(
    values: Mapping[str, Any] | None = None,
    *,
    chart_dir: Path = CHART_DIR,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Rendered:
    """``helm template RELEASE CHART --namespace NAMESPACE`` with ``values``: Helm validates them
    against values.schema.json first (raising :class:`helm_python.HelmValuesError`)."""
    with helm.Chart.load(chart_dir) as chart:
        manifests = chart.render(
            dict(values) if values is not None else None,
            name=release,
            namespace=namespace,
            is_install=True,
        )
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("/NOTES.txt"):
            notes = text
        else:
            objects.extend(parse_documents(text))
    return Rendered(manifests, objects, notes)


def validate_object(obj: Mapping[str, Any], kube_version: str = KUBE_VERSION) -> None:
    """Raise unless ``obj`` is valid against Kubernetes' schema of its kind (strict: unknown
    fields refused). Kinds Kubernetes does not define (CRDs) raise ``SchemaNotFoundError``."""
    # A JSON round trip: the validator wants plain JSON types, as the API server sees them.
    kubernetes_validate.validate(json.loads(json.dumps(obj)), kube_version, strict=True)
