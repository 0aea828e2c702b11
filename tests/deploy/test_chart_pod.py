"""The chart's pod, rendered by real Helm and run with ``podman kube play``: the image, the
ConfigMap's environment (envFrom), the secret files and secretKeyRef variables, the volume
mounts, the user and the read-only root of the rendered pod template, working together.

What is changed from the rendered objects, and only because Debian's podman 4.3 needs it (the
chart itself stays standard Kubernetes):

* the StatefulSet's pod template is wrapped into a Pod (kube play runs Pods and Deployments);
* each ``secret:`` volume (which crashes kube play) becomes a ``hostPath`` directory holding the
  same files, written here as the kubelet would project them (root-owned, group 10001, 0440);
* the ``state`` claim of ``volumeClaimTemplates`` becomes a ``hostPath`` directory;
* ``hostNetwork: true`` (no CNI), with free ports chosen here and both listeners on loopback,
  and without the container's ``ports`` list (podman 4.3 makes port mappings of it, which it
  refuses on the host's network);
* probes are not run by podman: ``/healthz`` and ``/readyz`` are called from here;
* the ``checksum/config`` annotation is left out: podman 4.3 refuses annotation values longer
  than 63 characters (Kubernetes limits only their total size), and a sha256 has 64.

``secretKeyRef`` variables need nothing changed: kube play reads them from podman secrets (a
JSON object of base64 values, as a Secret's ``data``), which the test creates and removes.
Webhooks go in with the secret from the mounted file, spans come out to an
:class:`HttpOtlpReceiver` carrying the header from the secretKeyRef, and the Cartesia API key
file drives polling against the Cartesia stand-in.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import copy
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy import podman
from tests.deploy.chart import Rendered, render
from tests.deploy.podman import kube_play, unique_name, wait_for_exit
from tests.support.cartesia_api import CartesiaStandIn
from tests.support.otlp_receiver import HttpOtlpReceiver
from tests.support.serve_process import WEBHOOK_PATH, Poster, expected_span_ids, free_port, sample_deliveries

pytestmark = pytest.mark.container

UID = 10001
WEBHOOK_SECRET = "chart-pod-webhook-secret"
API_KEY = "sk_chart_pod_key"
OTLP_HEADER = ("x-chart-pod-auth", "from-a-secret-key-ref")


@contextlib.contextmanager
def podman_secrets(secrets: Mapping[str, Mapping[str, str]]) -> Iterator[None]:
    """Podman secrets standing in for Kubernetes Secrets of ``secretKeyRef`` variables:
    ``{secret name: {key: value}}``; removed on exit."""
    created: list[str] = []
    try:
        for name, data in secrets.items():
            encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
            podman.podman("secret", "create", name, "-", input=json.dumps(encoded))
            created.append(name)
        yield
    finally:
        for name in created:
            podman.podman("secret", "rm", name, check=False)


def project_secret(
    volume: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]], directory: Path
) -> None:
    """Write a ``secret:`` volume's items into ``directory`` as the kubelet would: each key under
    its path, root-owned, group fsGroup (10001), the volume's mode (0440)."""
    secret = volume["secret"]
    directory.mkdir(mode=0o755)
    for item in secret["items"]:
        target = directory / item["path"]
        target.write_text(secrets[secret["secretName"]][item["key"]], encoding="utf-8")
        os.chown(target, 0, UID)
        target.chmod(secret.get("defaultMode", 0o644))


def pod_yaml(
    rendered: Rendered, secrets: Mapping[str, Mapping[str, str]], workdir: Path, state_dir: Path
) -> str:
    """The ConfigMap and the StatefulSet's pod template as one Pod, adapted as the module
    docstring says, as a two-document YAML (JSON documents, which YAML reads as they are)."""
    config_map = copy.deepcopy(
        rendered.one("ConfigMap", rendered.container["envFrom"][0]["configMapRef"]["name"])
    )
    # Host network: no pod network to bind 0.0.0.0 in; both listeners stay on loopback.
    config_map["data"]["OTELBRIDGE_LISTEN_HOST"] = "127.0.0.1"
    config_map["data"]["OTELBRIDGE_ADMIN_HOST"] = "127.0.0.1"
    template = copy.deepcopy(rendered.statefulset["spec"]["template"])
    spec = template["spec"]
    spec["hostNetwork"] = True
    # podman 4.3 turns a container's ports into port mappings, which it refuses on the host's
    # network; the listeners bind the ConfigMap's ports (test_chart checks they are the same).
    for container in spec["containers"]:
        container.pop("ports", None)
    volumes = []
    for volume in spec["volumes"]:
        if "secret" in volume:
            directory = workdir / volume["name"]
            project_secret(volume, secrets, directory)
            volumes.append(
                {"name": volume["name"], "hostPath": {"path": str(directory), "type": "Directory"}}
            )
        else:
            volumes.append(volume)
    (claim,) = rendered.statefulset["spec"]["volumeClaimTemplates"]
    volumes.append(
        {"name": claim["metadata"]["name"], "hostPath": {"path": str(state_dir), "type": "Directory"}}
    )
    spec["volumes"] = volumes
    # podman 4.3 refuses annotation values over 63 characters (Kubernetes has no such limit);
    # the checksum's 64 only matter to a StatefulSet's rollout, which is not played here.
    annotations = template["metadata"].get("annotations", {})
    template["metadata"]["annotations"] = {k: v for k, v in annotations.items() if len(v) <= 63}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": unique_name("otelbridge-chart"), **template["metadata"]},
        "spec": spec,
    }
    return "\n---\n".join(json.dumps(doc, indent=1) for doc in (config_map, pod)) + "\n"


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The state claim's stand-in, owned by the pod's user as fsGroup would make a volume."""
    path = tmp_path / "state"
    path.mkdir()
    shutil.chown(path, UID, UID)
    yield path
    shutil.rmtree(path)


def test_the_rendered_pod_runs_takes_webhooks_and_exports(
    image: str, tmp_path: Path, state_dir: Path
) -> None:
    deliveries = sample_deliveries()
    expected = expected_span_ids(d.event for d in deliveries)
    listen_port, admin_port = free_port(), free_port()
    suffix = f"{os.getpid()}-{time.monotonic_ns()}"
    webhook_secret, cartesia_secret, otlp_secret = (
        f"ob-{kind}-{suffix}" for kind in ("webhook", "cartesia", "otlp")
    )
    secrets = {
        webhook_secret: {"webhook-secret": WEBHOOK_SECRET},
        cartesia_secret: {"api-key": API_KEY},
        otlp_secret: {"headers": f"{OTLP_HEADER[0]}={OTLP_HEADER[1]}"},
    }
    repository, tag = image.rsplit(":", 1)
    with HttpOtlpReceiver() as receiver, CartesiaStandIn(api_key=API_KEY) as api:
        api.add_agent("agent_chart_pod", name="chart pod agent")
        rendered = render(
            {
                "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
                "webhook": {
                    "port": listen_port,
                    "secret": {"existingSecret": webhook_secret, "key": "webhook-secret"},
                },
                "admin": {"port": admin_port},
                "cartesia": {"apiKey": {"existingSecret": cartesia_secret, "key": "api-key"}},
                "config": {"cartesiaBaseUrl": api.url, "pollInterval": 1},
                "otlp": {
                    "endpoint": receiver.url,
                    "metricExportInterval": 1000,
                    "headers": {"existingSecret": otlp_secret, "key": "headers"},
                },
            }
        )
        grace = rendered.pod_spec["terminationGracePeriodSeconds"]
        manifest = tmp_path / "pod.yaml"
        manifest.write_text(pod_yaml(rendered, secrets, tmp_path, state_dir), encoding="utf-8")
        with podman_secrets(secrets), kube_play(manifest) as play:
            name = play.container("otelbridge")
            admin_url = f"http://127.0.0.1:{admin_port}"
            podman.wait_ready(admin_url, lambda: podman.container_logs(name))
            with httpx.Client(timeout=5.0) as client:
                assert client.get(f"{admin_url}/healthz").status_code == 200
                wrong = client.post(
                    f"http://127.0.0.1:{listen_port}{WEBHOOK_PATH}",
                    content=deliveries[0].body,
                    headers={"Content-Type": "application/json", "X-Webhook-Secret": "wrong"},
                )
                assert wrong.status_code == 401, wrong.text

            # The secret that the mounted file holds is the one accepted.
            poster = Poster(f"http://127.0.0.1:{listen_port}{WEBHOOK_PATH}", WEBHOOK_SECRET, threads=4)
            poster.post_all(deliveries)
            assert poster.acked == {d.index for d in deliveries}, poster.answers
            assert receiver.wait_until(lambda: receiver.span_ids() >= expected, timeout=30), play.all_logs()
            assert receiver.wait_until(lambda: bool(receiver.metric_requests), timeout=15), play.all_logs()

            # The API key file drove polling: every request the stand-in saw carried that key.
            deadline = time.monotonic() + 15
            while not any(r.path == "/agents/calls" for r in api.requests) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert any(r.path == "/agents/calls" for r in api.requests), play.all_logs()
            assert {r.headers.get("authorization") for r in api.requests} == {f"Bearer {API_KEY}"}

            # Run as the chart says: the image's user, a read-only root, no capabilities.
            status = podman.podman("exec", name, "cat", "/proc/1/status").stdout
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            assert fields["Uid"].split() == [str(UID)] * 4, status
            assert fields["Gid"].split() == [str(UID)] * 4, status
            assert int(fields["CapEff"].strip(), 16) == 0, status
            assert fields["NoNewPrivs"].strip() == "1", status
            touched = podman.podman("exec", name, "touch", "/written-to-root", check=False)
            assert touched.returncode != 0 and "Read-only file system" in touched.stderr, touched
            assert (state_dir / "inbox.db").stat().st_uid == UID

            # A pod deletion: SIGTERM, SIGKILL after the chart's grace period. The drain ends
            # well inside it, exit 0.
            started = time.monotonic()
            podman.podman("stop", "--time", str(grace), name, timeout=grace + 30)
            stopped_s = time.monotonic() - started
            code = wait_for_exit(name, timeout=10)
            logs = play.logs("otelbridge")
            assert code == 0, logs
            assert stopped_s < grace, f"stop took {stopped_s:.1f}s of {grace}s:\n{logs}"
            assert "Traceback" not in logs and "ERROR" not in logs, logs

    # Every span once, and every export carried the header from the secretKeyRef variable.
    counts = collections.Counter(span.span_id.hex() for span in receiver.spans())
    assert set(counts) == expected and set(counts.values()) == {1}, counts
    assert receiver.requests
    assert {r.headers.get(OTLP_HEADER[0]) for r in receiver.requests} == {OTLP_HEADER[1]}
