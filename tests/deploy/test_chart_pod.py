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

In database mode (``database.existingSecret``) the Deployment's pod template is played the same
way as two Pods sharing a real PostgreSQL on 127.0.0.1 (:mod:`tests.support.postgres`; the pods
are on the host's network, so the URI works from inside them). Each Pod has a copy of the
ConfigMap of its own, differing only in its ports (two pods on one host network cannot share
ports as two pod IPs do), and its own projection of the secret volumes, the database URI's
included; the state directory stays the rendered emptyDir.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import copy
import dataclasses
import functools
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy import podman
from tests.deploy.chart import Rendered, render
from tests.deploy.podman import kube_play, unique_name, wait_for_exit
from tests.support.cartesia_api import CartesiaStandIn
from tests.support.otlp_receiver import HttpOtlpReceiver
from tests.support.serve_process import (
    WEBHOOK_PATH,
    Delivery,
    Poster,
    expected_span_ids,
    free_port,
    post_webhook,
    sample_deliveries,
)

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


def host_config_map(rendered: Rendered) -> dict[str, Any]:
    """A copy of the settings ConfigMap with both listeners on loopback: on the host network
    there is no pod network to bind 0.0.0.0 in."""
    config_map = copy.deepcopy(
        rendered.one("ConfigMap", rendered.container["envFrom"][0]["configMapRef"]["name"])
    )
    config_map["data"]["OTELBRIDGE_LISTEN_HOST"] = "127.0.0.1"
    config_map["data"]["OTELBRIDGE_ADMIN_HOST"] = "127.0.0.1"
    return config_map


def host_pod(
    template: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]], workdir: Path, name: str
) -> dict[str, Any]:
    """The workload's pod template as a Pod named ``name``, adapted as the module docstring says
    (host network, no ports lists, ``secret:`` volumes projected into ``workdir`` as hostPath
    directories, annotations podman refuses left out); other volumes stay as rendered."""
    template = copy.deepcopy(dict(template))
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
    spec["volumes"] = volumes
    # podman 4.3 refuses annotation values over 63 characters (Kubernetes has no such limit);
    # the checksum's 64 only matter to a workload's rollout, which is not played here.
    annotations = template["metadata"].get("annotations", {})
    template["metadata"]["annotations"] = {k: v for k, v in annotations.items() if len(v) <= 63}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **template["metadata"]},
        "spec": spec,
    }


def yaml_documents(*documents: Mapping[str, Any]) -> str:
    """Kubernetes objects as one multi-document YAML (JSON documents, which YAML reads as they are)."""
    return "\n---\n".join(json.dumps(doc, indent=1) for doc in documents) + "\n"


def pod_yaml(
    rendered: Rendered, secrets: Mapping[str, Mapping[str, str]], workdir: Path, state_dir: Path
) -> str:
    """The ConfigMap and the StatefulSet's pod template as one Pod, adapted as the module
    docstring says, as a two-document YAML (JSON documents, which YAML reads as they are)."""
    config_map = host_config_map(rendered)
    pod = host_pod(
        rendered.statefulset["spec"]["template"], secrets, workdir, unique_name("otelbridge-chart")
    )
    (claim,) = rendered.statefulset["spec"]["volumeClaimTemplates"]
    pod["spec"]["volumes"].append(
        {"name": claim["metadata"]["name"], "hostPath": {"path": str(state_dir), "type": "Directory"}}
    )
    return yaml_documents(config_map, pod)


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


# --- database mode: the Deployment's pod, two replicas sharing a real PostgreSQL ---------------

DATABASE_KEY = "uri"
#: ``otelbridge.leader`` as /metrics names it, e.g. ``otelbridge_leader{otel_scope_name=
#: "otelbridge.self",...} 1.0``, and its value
LEADER_SAMPLE = re.compile(r"^otelbridge_leader(?:\{[^}]*\})? (\S+)$", re.MULTILINE)
#: the replica's service.instance.id, from the ``target_info`` sample of /metrics
INSTANCE_ID = re.compile(r'^target_info\{[^}]*\bservice_instance_id="([^"]+)"', re.MULTILINE)
#: the lease's TTL (10 s) plus a follower's retry plus slack: a leader must be there within it
LEADER_TIMEOUT_S = 30.0
#: ``otelbridge_leader`` of the two replicas when exactly one leads
ONE_LEADER = ([1.0, 0.0], [0.0, 1.0])


@dataclasses.dataclass(frozen=True, slots=True)
class Replica:
    """One played pod of the Deployment: its podman pod name and its own ports."""

    pod: str
    listen_port: int
    admin_port: int

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}{WEBHOOK_PATH}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


def replica_documents(
    rendered: Rendered,
    secrets: Mapping[str, Mapping[str, str]],
    workdir: Path,
    replica: Replica,
) -> list[dict[str, Any]]:
    """One replica of the Deployment's pod template, adapted as the module docstring says: a
    Pod, and a ConfigMap of its own (named after the pod) that differs from the rendered one
    only in its listeners (loopback, this replica's ports): on the host network two pods
    cannot share a port as two pod IPs would. Its secret volumes are projected into
    ``workdir``, as the kubelet projects them for each pod; the state directory stays the
    rendered emptyDir (with a database nothing is kept in it)."""
    config_map = host_config_map(rendered)
    config_map["metadata"]["name"] = f"{replica.pod}-config"
    config_map["data"]["OTELBRIDGE_LISTEN_PORT"] = str(replica.listen_port)
    config_map["data"]["OTELBRIDGE_ADMIN_PORT"] = str(replica.admin_port)
    workdir.mkdir()
    pod = host_pod(rendered.deployment["spec"]["template"], secrets, workdir, replica.pod)
    (container,) = pod["spec"]["containers"]
    (source,) = container["envFrom"]
    source["configMapRef"]["name"] = config_map["metadata"]["name"]
    return [config_map, pod]


class SpreadPoster(Poster):
    """A :class:`Poster` in front of several replicas, as their Service is: each call's events
    still in order on one lane, delivery ``i`` to ``urls[i % len(urls)]``, so every delivery goes
    to one replica and the events of a call reach both. ``acked_by`` counts the 2xx by URL."""

    def __init__(self, urls: Sequence[str], secret: str, *, threads: int = 4) -> None:
        super().__init__(urls[0], secret, threads=threads)
        self.urls = list(urls)
        self.acked_by: collections.Counter[str] = collections.Counter()

    def _lane(self, lane: list[Delivery]) -> None:
        with httpx.Client(timeout=10.0) as client:
            for d in lane:
                url = self.urls[d.index % len(self.urls)]
                status = post_webhook(client, url, d.body, self.secret)
                with self._lock:
                    self.answers[d.index] = status
                    if status is not None and 200 <= status < 300:
                        self.acked.add(d.index)
                        self.acked_by[url] += 1


def metrics_text(replica: Replica) -> str:
    """The replica's /metrics ("" when it does not answer 200)."""
    try:
        response = httpx.get(f"{replica.admin_url}/metrics", timeout=2.0)
    except httpx.HTTPError:
        return ""
    return response.text if response.status_code == 200 else ""


def leader_value(replica: Replica) -> float | None:
    """The replica's ``otelbridge_leader`` on /metrics (None: no answer, or not one sample)."""
    samples = LEADER_SAMPLE.findall(metrics_text(replica))
    return float(samples[0]) if len(samples) == 1 else None


def instance_id(replica: Replica) -> str:
    """The replica's ``service.instance.id`` (``target_info`` on /metrics)."""
    text = metrics_text(replica)
    found = INSTANCE_ID.findall(text)
    assert len(found) == 1, text
    return str(found[0])


def is_running(name: str) -> bool:
    return bool(podman.inspect(name)["State"]["Running"])


def test_two_rendered_replicas_share_a_real_postgresql(
    image: str, tmp_path: Path, postgres_url: str, receiver: HttpOtlpReceiver
) -> None:
    """Database mode (issue 17): the Deployment's pod played twice against a real PostgreSQL on
    127.0.0.1 (the pods use the host's network), the URI from the Secret's mounted file. Both
    replicas take webhooks, one leads and exports: every span arrives once."""
    deliveries = sample_deliveries()
    expected = expected_span_ids(d.event for d in deliveries)
    # Delivery i goes to replica i % 2: every call has events on both (the inbox is shared).
    parities: dict[str, set[int]] = collections.defaultdict(set)
    for d in deliveries:
        parities[d.call_id].add(d.index % 2)
    assert all(p == {0, 1} for p in parities.values()), parities
    suffix = f"{os.getpid()}-{time.monotonic_ns()}"
    webhook_secret, database_secret, otlp_secret = (
        f"ob-{kind}-{suffix}" for kind in ("webhook", "database", "otlp")
    )
    secrets = {
        webhook_secret: {"webhook-secret": WEBHOOK_SECRET},
        database_secret: {DATABASE_KEY: postgres_url},
        otlp_secret: {"headers": f"{OTLP_HEADER[0]}={OTLP_HEADER[1]}"},
    }
    repository, tag = image.rsplit(":", 1)
    rendered = render(
        {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "database": {"existingSecret": database_secret, "secretKey": DATABASE_KEY},
            "webhook": {"secret": {"existingSecret": webhook_secret, "key": "webhook-secret"}},
            "otlp": {
                "endpoint": receiver.url,
                "metricExportInterval": 1000,
                "headers": {"existingSecret": otlp_secret, "key": "headers"},
            },
        }
    )
    assert rendered.workload["kind"] == "Deployment"
    replica_count = rendered.deployment["spec"]["replicas"]
    assert replica_count == 2
    assert rendered.config["OTELBRIDGE_DATABASE_URL_FILE"] == f"/etc/otelbridge/database/{DATABASE_KEY}"
    assert postgres_url not in json.dumps(rendered.objects)  # only the Secret's name is rendered
    grace = rendered.pod_spec["terminationGracePeriodSeconds"]

    replicas = [
        Replica(unique_name("otelbridge-replica"), free_port(), free_port()) for _ in range(replica_count)
    ]
    documents = [
        doc
        for n, replica in enumerate(replicas)
        for doc in replica_documents(rendered, secrets, tmp_path / f"replica-{n}", replica)
    ]
    manifest = tmp_path / "replicas.yaml"
    manifest.write_text(yaml_documents(*documents), encoding="utf-8")

    with podman_secrets(secrets), kube_play(manifest) as play:
        names = {pod.name: pod.containers["otelbridge"] for pod in play.pods}
        assert set(names) == {r.pod for r in replicas}, play.pods
        for replica in replicas:
            name = names[replica.pod]
            podman.wait_ready(replica.admin_url, play.all_logs, running=functools.partial(is_running, name))
            with httpx.Client(timeout=5.0) as client:
                for path in ("/healthz", "/readyz"):
                    answer = client.get(f"{replica.admin_url}{path}")
                    assert answer.status_code == 200, (replica, path, answer.text)

        # One leader: /metrics says 1 on exactly one replica, 0 on the other.
        deadline = time.monotonic() + LEADER_TIMEOUT_S
        values = [leader_value(r) for r in replicas]
        while values not in ONE_LEADER and time.monotonic() < deadline:
            time.sleep(0.2)
            values = [leader_value(r) for r in replicas]
        assert values in ONE_LEADER, (values, play.all_logs())
        leader, follower = replicas[values.index(1.0)], replicas[values.index(0.0)]
        leader_id, follower_id = instance_id(leader), instance_id(follower)
        assert leader_id != follower_id

        # The stream through both: every delivery acknowledged by the replica it went to.
        poster = SpreadPoster([r.webhook_url for r in replicas], WEBHOOK_SECRET, threads=4)
        poster.post_all(deliveries)
        assert poster.acked == {d.index for d in deliveries}, poster.answers
        assert all(poster.acked_by[r.webhook_url] > 0 for r in replicas), poster.acked_by
        assert receiver.wait_until(lambda: receiver.span_ids() >= expected, timeout=60), play.all_logs()

        # Each replica's own metrics reach the backend (the leader sends the follower's too).
        assert receiver.wait_until(
            lambda: (
                {leader_id, follower_id}
                <= {r.get("service.instance.id") for r in receiver.metric_resources()}
            ),
            timeout=20,
        ), (receiver.metric_resources(), play.all_logs())

        # Still one leader, the same one, and both still healthy and ready.
        assert [leader_value(r) for r in replicas] == values, play.all_logs()
        with httpx.Client(timeout=5.0) as client:
            for replica in replicas:
                for path in ("/healthz", "/readyz"):
                    answer = client.get(f"{replica.admin_url}{path}")
                    assert answer.status_code == 200, (replica, path, answer.text)

        # Pod deletions, the follower first (a scale-down): each drains and exits 0 well inside
        # the grace period; the leader's drain exports what is left.
        for replica in (follower, leader):
            name = names[replica.pod]
            started = time.monotonic()
            podman.podman("stop", "--time", str(grace), name, timeout=grace + 30)
            stopped_s = time.monotonic() - started
            code = wait_for_exit(name, timeout=10)
            logs = podman.container_logs(name)
            assert code == 0, logs
            assert stopped_s < grace, f"stop took {stopped_s:.1f}s of {grace}s:\n{logs}"
            assert "Traceback" not in logs, logs
            assert not [line for line in logs.splitlines() if " ERROR " in line], logs
            if replica is follower:
                assert "another replica leads and exports what this one received" in logs, logs

    # Every span once, all exported by the leader; every export with the secretKeyRef's header.
    counts = collections.Counter(span.span_id.hex() for span in receiver.spans())
    assert set(counts) == expected and set(counts.values()) == {1}, counts
    assert {r.get("service.instance.id") for r in receiver.trace_resources()} == {leader_id}
    assert receiver.requests
    assert {r.headers.get(OTLP_HEADER[0]) for r in receiver.requests} == {OTLP_HEADER[1]}
