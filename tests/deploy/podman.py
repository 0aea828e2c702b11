"""Podman helpers for the container tests (``pytest -m container``): build the image, run it,
play Kubernetes YAML, read logs. Machine setup is ``.ci/podman-setup`` (Debian's podman 4.3,
runc, mmdebstrap and /etc/containers/containers.conf); nothing here needs a registry.

Stable API (the image, sidecar and chart tests use it)::

    IMAGE, BASE_IMAGE                      # "localhost/otelbridge:test", "localhost/debian-py:bookworm"
    check_podman() -> None                 # raises PodmanError saying what is missing
    ensure_base_image() -> str             # BASE_IMAGE, built with mmdebstrap + podman import once
    build_image(tag=IMAGE) -> str          # podman build of the repository's Dockerfile on BASE_IMAGE
    podman(*args, check=True, timeout=…)   # subprocess.CompletedProcess[str] of `podman ARGS`
    container_logs(name) -> str            # `podman logs` (stdout and stderr, interleaved)
    inspect(name) -> dict                  # `podman container inspect`, the one object
    running_container(*run_args) -> ctx    # `podman run -d ARGS`, yields the name; `rm -f` on exit
    wait_for_exit(name, timeout) -> int    # the exit code once stopped (PodmanError if still up)
    unique_name(prefix) -> str             # a container/pod/secret name unique on this machine
    kube_play(yaml_path) -> ctx            # `podman kube play`, yields a KubePlay; always
                                           # `podman kube down` + removal of its pods and volumes
    KubePlay.container(name) / .logs(name) / .inspect(name) / .all_logs() / .pods

Fixture (tests/deploy/conftest.py): ``image`` (session scope) checks podman, builds the base
image if missing and the otelbridge image once per session, and returns the tag.

A test playing a pod::

    def test_pod(image: str, tmp_path: Path) -> None:
        (tmp_path / "pod.yaml").write_text(yaml_text_using(image))
        with kube_play(tmp_path / "pod.yaml") as play:
            name = play.container("otelbridge")      # the podman name of a Kubernetes container
            ...                                       # HTTP calls to its loopback ports
            assert "listening" in play.logs("otelbridge")

Podman 4.3 quirks the YAML must respect (see the test modules): no ``secret:`` volumes (use a
``hostPath`` directory with the same files), no CNI (``hostNetwork: true``, distinct loopback
ports, and no containers' ``ports`` lists: on the host network podman 4.3 refuses them as port
mappings), a PVC or ConfigMap volume left from an earlier play makes the next one fail
(``kube_play`` removes them), probes are not run (call ``/healthz`` and ``/readyz`` from the
test), images must be local (``imagePullPolicy: Never`` or ``IfNotPresent``). The image's
entrypoint is ``otelbridge`` and its command ``serve``, so a pod spec may set ``args``
(e.g. ``["serve"]``).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from otelbridge import __version__

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/debian-py:bookworm"
IMAGE = "localhost/otelbridge:test"
CONTAINERS_CONF = Path("/etc/containers/containers.conf")
# The host's pip configuration and CA bundle, mounted read-only into `podman build` only (the
# Dockerfile stays plain); whichever of them exist.
BUILD_MOUNTS = ("/etc/ssl/certs", "/etc/pip.conf", "/etc/xdg/pip")
SETUP_HINT = "run .ci/podman-setup (as root) first"

_names = itertools.count(1)


class PodmanError(RuntimeError):
    """Podman is missing or misconfigured, or a podman command failed (with its output)."""


def podman(
    *args: str, check: bool = True, timeout: float = 120.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``podman ARGS``, output captured as text; ``check`` raises :class:`PodmanError` with the
    command and its output on a non-zero exit."""
    result = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input,
    )
    if check and result.returncode != 0:
        raise PodmanError(
            f"podman {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def check_podman() -> None:
    """Raise :class:`PodmanError` unless podman, runc and mmdebstrap are installed and podman is
    configured as this kind of machine needs (runc, ulimits within the hard limits)."""
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        raise PodmanError(f"not installed: {', '.join(missing)}; {SETUP_HINT}")
    conf = CONTAINERS_CONF.read_text() if CONTAINERS_CONF.exists() else ""
    if 'runtime = "runc"' not in conf or "default_ulimits" not in conf:
        raise PodmanError(f"{CONTAINERS_CONF} does not set runc and default_ulimits; {SETUP_HINT}")
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    if info.returncode != 0 or info.stdout.strip() != "runc":
        raise PodmanError(f"podman info: {info.stdout.strip()} {info.stderr.strip()}; {SETUP_HINT}")


@contextlib.contextmanager
def _machine_lock(name: str) -> Iterator[None]:
    """Serialize image builds between pytest processes on one machine (two sessions building
    the same tag at once would race on it)."""
    path = Path(tempfile.gettempdir()) / f"otelbridge-{name}.lock"
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


def ensure_base_image(tag: str = BASE_IMAGE) -> str:
    """A Debian bookworm root with python3 and python3-venv, as a local image (no registry):
    ``mmdebstrap`` + ``podman import``, ~30 s, skipped when the image exists already."""
    with _machine_lock("base-image"):
        if image_exists(tag):
            return tag
        with tempfile.TemporaryDirectory(prefix="otelbridge-rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            result = subprocess.run(
                [
                    "mmdebstrap",
                    "--variant=apt",
                    "--include=python3,python3-venv,ca-certificates",
                    "bookworm",
                    str(rootfs),
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if result.returncode != 0:
                raise PodmanError(f"mmdebstrap exited {result.returncode}:\n{result.stderr[-4000:]}")
            podman("import", str(rootfs), tag, timeout=300)
    return tag


def build_image(
    tag: str = IMAGE, *, base: str = BASE_IMAGE, version: str = __version__, context: Path = REPO
) -> str:
    """``podman build`` of ``context``'s Dockerfile on ``base``, with the host's network and pip
    configuration (read-only, for the build only). Layers are cached by podman, so a rebuild
    after a code change reinstalls otelbridge alone, not its dependencies."""
    mounts = [arg for path in BUILD_MOUNTS if Path(path).exists() for arg in ("-v", f"{path}:{path}:ro")]
    with _machine_lock("image-build"):
        previous = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
        podman(
            "build",
            "--network",
            "host",
            *mounts,
            "--build-arg",
            f"BASE={base}",
            "--build-arg",
            f"VERSION={version}",
            "-t",
            tag,
            str(context),
            timeout=900,
        )
        current = podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
        if previous and previous != current:
            # The image this tag named before is dangling now: one per code change otherwise.
            # (Refused, and left, while a container still uses it.)
            podman("rmi", previous, check=False)
    return tag


def inspect(name: str) -> dict[str, Any]:
    """``podman container inspect NAME``: the one container's object."""
    data = json.loads(podman("container", "inspect", name).stdout)
    assert isinstance(data, list) and len(data) == 1, data
    result: dict[str, Any] = data[0]
    return result


def container_logs(name: str) -> str:
    """What the container wrote to stdout and stderr so far (``podman logs``), as one text."""
    result = subprocess.run(
        ["podman", "logs", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
    )
    return result.stdout


def unique_name(prefix: str) -> str:
    """A container or pod name no other test (or test session) on this machine uses now."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


@contextlib.contextmanager
def running_container(*run_args: str, name: str | None = None) -> Iterator[str]:
    """``podman run -d --name NAME RUN_ARGS`` (options, image, command); yields the name and
    removes the container (and its anonymous volumes) on exit, whatever happened."""
    name = name or unique_name("otelbridge-test")
    try:
        podman("run", "-d", "--name", name, *run_args, timeout=120)
        yield name
    finally:
        podman("rm", "--force", "--volumes", "--time", "0", name, check=False, timeout=120)


def wait_for_exit(name: str, timeout: float) -> int:
    """The container's exit code once it stopped; :class:`PodmanError` if it is still running
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        state = inspect(name)["State"]
        if not state["Running"]:
            return int(state["ExitCode"])
        if time.monotonic() > deadline:
            raise PodmanError(f"{name} still running after {timeout:g}s:\n{container_logs(name)}")
        time.sleep(0.1)


@dataclass(frozen=True, slots=True)
class PlayedPod:
    """One pod ``podman kube play`` started: its name and its containers, keyed by the
    Kubernetes container name (podman calls them ``<pod>-<container>``)."""

    id: str
    name: str
    containers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KubePlay:
    """What :func:`kube_play` started."""

    yaml_path: Path
    pods: list[PlayedPod]

    def container(self, name: str) -> str:
        """The podman name of the Kubernetes container ``name`` (in whichever pod holds it)."""
        found = [pod.containers[name] for pod in self.pods if name in pod.containers]
        if len(found) != 1:
            known = sorted(c for pod in self.pods for c in pod.containers)
            raise KeyError(f"container {name!r}: {len(found)} matches among {known}")
        return found[0]

    def logs(self, name: str) -> str:
        """stdout + stderr of the Kubernetes container ``name``."""
        return container_logs(self.container(name))

    def inspect(self, name: str) -> dict[str, Any]:
        return inspect(self.container(name))

    def all_logs(self) -> str:
        """Every container's logs, headed by its name: for assertion messages."""
        return "\n".join(
            f"--- {kube_name} ({podman_name}) ---\n{container_logs(podman_name)}"
            for pod in self.pods
            for kube_name, podman_name in pod.containers.items()
        )


def _played_pods(output: str) -> list[PlayedPod]:
    """Pods named in ``podman kube play``'s output (``Pod:`` then ids), with their containers."""
    ids: list[str] = []
    section = ""
    for raw in output.splitlines():
        line = raw.strip()
        if line.endswith(":"):
            section = line[:-1]
        elif section == "Pod" and line:
            ids.append(line)
    pods = []
    for pod_id in ids:
        data = json.loads(podman("pod", "inspect", pod_id).stdout)
        pod = data[0] if isinstance(data, list) else data  # podman 4.3 returns an object
        infra = pod.get("InfraContainerID")
        containers = {}
        for entry in pod.get("Containers", []):
            if entry["Id"] == infra:
                continue
            podman_name = entry["Name"]
            prefix = f"{pod['Name']}-"
            kube_name = podman_name[len(prefix) :] if podman_name.startswith(prefix) else podman_name
            containers[kube_name] = podman_name
        pods.append(PlayedPod(pod["Id"], pod["Name"], containers))
    return pods


def _volume_names() -> set[str]:
    result = podman("volume", "ls", "--format", "{{.Name}}", check=False)
    return set(result.stdout.split())


def _volumes_of(pods: list[PlayedPod]) -> set[str]:
    names: set[str] = set()
    for pod in pods:
        for podman_name in pod.containers.values():
            result = podman("container", "inspect", podman_name, check=False)
            if result.returncode != 0:
                continue
            for mount in json.loads(result.stdout)[0].get("Mounts", []):
                if mount.get("Type") == "volume" and mount.get("Name"):
                    names.add(mount["Name"])
    return names


@contextlib.contextmanager
def kube_play(yaml_path: Path, *, timeout: float = 180.0) -> Iterator[KubePlay]:
    """``podman kube play --replace YAML`` (Pods, Deployments, ConfigMaps, PVCs, Services in the
    file); yields a :class:`KubePlay`. On exit, whatever happened: ``podman kube down YAML``,
    then any pod of the play still present is removed by id, and the volumes the play made
    are removed too (podman 4.3's ``kube down`` leaves them, and a PVC's volume left behind
    makes the next play fail): those its containers mount, and the new ones named in the YAML
    (a ConfigMap's or claim's volume, also when the play failed half-way)."""
    pods: list[PlayedPod] = []
    volumes: set[str] = set()
    text = yaml_path.read_text(encoding="utf-8")
    before = _volume_names()
    try:
        result = podman("kube", "play", "--replace", str(yaml_path), check=False, timeout=timeout)
        pods = _played_pods(result.stdout)
        volumes = _volumes_of(pods)
        if result.returncode != 0:
            raise PodmanError(
                f"podman kube play {yaml_path} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        yield KubePlay(yaml_path, pods)
    finally:
        podman("kube", "down", str(yaml_path), check=False, timeout=timeout)
        for pod in pods:
            if podman("pod", "exists", pod.id, check=False).returncode == 0:
                podman("pod", "rm", "--force", pod.id, check=False, timeout=timeout)
        named = {name for name in _volume_names() - before if re.search(rf"\b{re.escape(name)}\b", text)}
        for volume in sorted(volumes | named):
            podman("volume", "rm", "--force", volume, check=False)


def wait_ready(
    admin_url: str,
    logs: Callable[[], str],
    *,
    running: Callable[[], bool] = lambda: True,
    timeout: float = 60.0,
) -> None:
    """Poll ``/readyz`` until 200, as a readiness probe would (podman does not run probes);
    fail with ``logs()`` when it does not come, or as soon as ``running()`` says it stopped."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(f"{admin_url}/readyz")
            except httpx.TransportError as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text}"
            if not running():
                break
            time.sleep(0.1)
    pytest.fail(f"not ready ({last}); logs:\n{logs()}")
