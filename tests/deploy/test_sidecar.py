"""deploy/sidecar/otelbridge-sidecar.yaml run for real as a two-container pod with
``podman kube play``: webhooks in over HTTP, spans out of the otelbridge container into its
neighbour over the pod's localhost, probes answering over HTTP.

The manifest is played as shipped except for what Debian's podman 4.3 and this machine need,
each change made (and asserted to apply) in :func:`adapt`:

- the ``secret:`` volume crashes ``kube play``: it becomes a ``hostPath`` directory holding
  the same files, written here from the manifest's Secret (which is not played);
- no CNI networking: ``hostNetwork: true``, hence no ``ports`` lists (podman 4.3 turns them
  into port mappings, which it refuses on the host's network), and the three ports
  (otelbridge's webhook and admin listeners, the neighbour's OTLP port) are free loopback
  ports instead of 8080/9464/4318
  (otelbridge's through its OTELBRIDGE_*_PORT variables, the endpoint's port in
  OTEL_EXPORTER_OTLP_ENDPOINT, still ``http://localhost:…``);
- **no registry, so the Collector is not the real one**: the
  ``otel/opentelemetry-collector-contrib`` container runs a small OTLP/HTTP sink instead (the
  stdlib script :data:`SINK`, mounted by hostPath, on the local Debian base image, as user
  10001) that stores every request body it gets as a file; the test decodes them with
  opentelemetry-proto. The Collector's ConfigMap volume stays mounted and the sink copies the
  file out, so the test checks the config the real Collector would read;
- the otelbridge image is the one built from the Dockerfile (``localhost/otelbridge:test``).

The PersistentVolumeClaim, the ConfigMap and the Service are played as they are (podman makes
a named volume of the claim).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.deploy import podman
from tests.deploy.podman import kube_play
from tests.support.serve_process import WEBHOOK_PATH, Poster, expected_span_ids, free_port, sample_deliveries

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "sidecar" / "otelbridge-sidecar.yaml"
UID = 10001
COLLECTOR_CONFIG = "/etc/otelcol-contrib/config.yaml"
SECRET = "sidecar-test-secret"
#: the placeholder in the example manifest's Secret, which the test replaces with SECRET
EXAMPLE_SECRET = "change-me-to-a-long-secret"

# The Collector's stand-in: OTLP/HTTP on 127.0.0.1:PORT, each request body (decompressed) stored
# as OUT/NNNNNN-traces.pb or -metrics.pb (written, then renamed: the test never reads half a
# file), answered 200 with an empty Export*ServiceResponse (zero bytes of protobuf).
SINK = r"""
import gzip, os, shutil, sys, threading, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, out, config = int(sys.argv[1]), sys.argv[2], sys.argv[3]
shutil.copyfile(config, os.path.join(out, "collector-config.yaml"))
lock, count = threading.Lock(), [0]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        signal = {"/v1/traces": "traces", "/v1/metrics": "metrics"}.get(self.path)
        if signal is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with lock:
            count[0] += 1
            name = os.path.join(out, "%06d-%s.pb" % (count[0], signal))
        with open(name + ".tmp", "wb") as f:
            f.write(body)
        os.replace(name + ".tmp", name)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, fmt, *args):
        sys.stderr.write("sink: %s %s\n" % (self.client_address[0], fmt % args))

server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("sink: listening on 127.0.0.1:%d" % port, file=sys.stderr, flush=True)
server.serve_forever()
"""


def load_manifest() -> list[dict[str, Any]]:
    documents = [doc for doc in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if doc]
    assert all(isinstance(doc, dict) for doc in documents)
    return documents


def only(items: list[dict[str, Any]], **match: str) -> dict[str, Any]:
    found = [item for item in items if all(item.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, items)
    return found[0]


def set_env(container: dict[str, Any], name: str, value: str) -> None:
    env: list[dict[str, Any]] = container.setdefault("env", [])
    env[:] = [item for item in env if item["name"] != name]
    env.append({"name": name, "value": value})


def adapt(
    documents: list[dict[str, Any]], *, work: Path, image: str, ports: dict[str, int]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The manifest as podman 4.3 on this machine can play it (module docstring), and the
    files of the Secret. ``work`` holds the secret directory, the sink script and its output."""
    documents = copy.deepcopy(documents)
    secret = only(documents, kind="Secret")
    secret_files: dict[str, str] = dict(secret["stringData"])
    deployment = only(documents, kind="Deployment")
    pod = deployment["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    for container in pod["containers"]:
        # On the host's network podman 4.3 takes containerPorts for port mappings and refuses
        # them ("PortMappings can only be used with Bridge or slirp4netns networking").
        assert container.pop("ports")

    secret_volume = only(pod["volumes"], name="webhook-secret")
    assert secret_volume["secret"]["secretName"] == secret["metadata"]["name"]
    del secret_volume["secret"]
    secret_volume["hostPath"] = {"path": str(work / "secret"), "type": "Directory"}

    bridge = only(pod["containers"], name="otelbridge")
    assert {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://localhost:4318"} in bridge["env"]
    bridge["image"] = image
    set_env(bridge, "OTEL_EXPORTER_OTLP_ENDPOINT", f"http://localhost:{ports['otlp']}")
    set_env(bridge, "OTELBRIDGE_LISTEN_PORT", str(ports["webhooks"]))
    set_env(bridge, "OTELBRIDGE_ADMIN_PORT", str(ports["admin"]))

    collector = only(pod["containers"], name="otel-collector")
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert f"--config={COLLECTOR_CONFIG}" in collector["args"]
    collector["image"] = podman.BASE_IMAGE
    collector["command"] = ["/usr/bin/python3", "/sink/sink.py"]  # an imported root has no PATH
    collector["args"] = [str(ports["otlp"]), "/out", COLLECTOR_CONFIG]
    collector["securityContext"]["runAsUser"] = UID  # the contrib image's user; the base's is root
    set_env(collector, "PYTHONDONTWRITEBYTECODE", "1")
    collector["volumeMounts"] += [
        {"name": "sink", "mountPath": "/sink", "readOnly": True},
        {"name": "sink-out", "mountPath": "/out"},
    ]
    pod["volumes"] += [
        {"name": "sink", "hostPath": {"path": str(work / "sink"), "type": "Directory"}},
        {"name": "sink-out", "hostPath": {"path": str(work / "out"), "type": "Directory"}},
    ]
    played = [doc for doc in documents if doc["kind"] != "Secret"]
    return played, secret_files


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """Host directories for the pod (secret files, sink script, sink output), removed after."""
    root = tmp_path / "sidecar"
    for name in ("secret", "sink", "out"):
        (root / name).mkdir(parents=True)
    shutil.chown(root / "out", UID, UID)
    (root / "sink" / "sink.py").write_text(SINK, encoding="utf-8")
    yield root
    shutil.rmtree(root)


def received_span_ids(out: Path) -> list[str]:
    ids = []
    for path in sorted(out.glob("*-traces.pb")):
        request = ExportTraceServiceRequest()
        request.ParseFromString(path.read_bytes())
        ids += [
            span.span_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans
        ]
    return ids


def test_manifest_wires_otelbridge_to_the_collector_over_localhost() -> None:
    """What the pod test cannot see, since the Collector is replaced: its config receives OTLP
    on the endpoint otelbridge exports to, and pipes both signals on."""
    documents = load_manifest()
    config = yaml.safe_load(only(documents, kind="ConfigMap")["data"]["config.yaml"])
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "localhost:4318"
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    for pipeline in pipelines.values():
        assert pipeline["receivers"] == ["otlp"]
        assert all(exporter in config["exporters"] for exporter in pipeline["exporters"])
    pod = only(documents, kind="Deployment")["spec"]["template"]["spec"]
    bridge = only(pod["containers"], name="otelbridge")
    env = {item["name"]: item.get("value") for item in bridge["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4318"
    mount = only(bridge["volumeMounts"], name="webhook-secret")["mountPath"]
    secret = only(documents, kind="Secret")
    assert env["OTELBRIDGE_WEBHOOK_SECRET_FILE"] in {f"{mount}/{key}" for key in secret["stringData"]}
    assert only(bridge["volumeMounts"], name="state")["mountPath"] == "/var/lib/otelbridge"
    assert bridge["securityContext"]["readOnlyRootFilesystem"] is True
    assert bridge["securityContext"]["runAsUser"] == UID
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_sidecar_pod_webhooks_in_spans_out_to_the_neighbour(image: str, work: Path) -> None:
    ports = {"webhooks": free_port(), "admin": free_port(), "otlp": free_port()}
    documents, secret_files = adapt(load_manifest(), work=work, image=image, ports=ports)
    # The Secret's own value is a placeholder; the test's goes into the same file name.
    for name in secret_files:
        (work / "secret" / name).write_text(SECRET, encoding="utf-8")
    manifest = work / "sidecar.yaml"
    manifest.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")

    deliveries = sample_deliveries()
    expected = expected_span_ids(d.event for d in deliveries)
    admin_url = f"http://127.0.0.1:{ports['admin']}"
    webhook_url = f"http://127.0.0.1:{ports['webhooks']}{WEBHOOK_PATH}"
    with kube_play(manifest) as play:
        assert {c for pod in play.pods for c in pod.containers} == {"otel-collector", "otelbridge"}
        podman.wait_ready(admin_url, play.all_logs, timeout=30)
        with httpx.Client(timeout=5.0) as client:
            assert client.get(f"{admin_url}/healthz").status_code == 200
            assert client.get(f"{admin_url}/readyz").status_code == 200
            metrics = client.get(f"{admin_url}/metrics")
            assert metrics.status_code == 200 and "otelbridge_" in metrics.text
            # The secret comes from the mounted file: another value is refused.
            refused = client.post(
                webhook_url,
                content=deliveries[0].body,
                headers={"Content-Type": "application/json", "X-Webhook-Secret": EXAMPLE_SECRET},
            )
            assert refused.status_code == 401, refused.text

        poster = Poster(webhook_url, SECRET, threads=4)
        poster.post_all(deliveries)
        assert poster.acked == {d.index for d in deliveries}, poster.answers

        deadline = time.monotonic() + 30
        while set(received_span_ids(work / "out")) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        received = received_span_ids(work / "out")
        assert set(received) == expected, play.all_logs()
        assert len(received) == len(expected)  # nothing twice
        # Over the pod's loopback, to the neighbour that read the Collector's ConfigMap.
        sink_logs = play.logs("otel-collector")
        assert '127.0.0.1 "POST /v1/traces HTTP/1.1" 200' in sink_logs, sink_logs
        configmap = only(documents, kind="ConfigMap")["data"]["config.yaml"]
        assert (work / "out" / "collector-config.yaml").read_text(encoding="utf-8") == configmap

        # State on the claim's volume, written by otelbridge's user.
        state = only(play.inspect("otelbridge")["Mounts"], Destination="/var/lib/otelbridge")
        assert Path(state["Source"], "inbox.db").stat().st_uid == UID
        assert Path(state["Source"], "state.db").exists()

        # JSON logs as the manifest asks; SIGTERM drains and exits 0 inside the grace period.
        bridge = play.container("otelbridge")
        started = time.monotonic()
        podman.podman("stop", "--time", "30", bridge, timeout=60)
        assert time.monotonic() - started < 20, play.logs("otelbridge")
        assert podman.inspect(bridge)["State"]["ExitCode"] == 0, play.logs("otelbridge")
        lines = [line for line in play.logs("otelbridge").splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]
        assert any("SIGTERM received" in str(record.get("message")) for record in records), lines
