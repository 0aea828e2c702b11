"""The container image, built from the Dockerfile on the local Debian base and run as
Kubernetes runs it: read-only root filesystem, a numeric non-root user, state on a volume,
SIGTERM to stop. Webhooks go in over HTTP, spans come out to a real OTLP/HTTP receiver on the
host (``--network host``, loopback ports chosen free and set through the environment)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from otelbridge import __version__
from tests.deploy import podman
from tests.deploy.podman import container_logs, running_container, wait_for_exit
from tests.support.otlp_receiver import HttpOtlpReceiver
from tests.support.serve_process import WEBHOOK_PATH, Poster, expected_span_ids, free_port, sample_deliveries

pytestmark = pytest.mark.container

UID = 10001
STATE = "/var/lib/otelbridge"
SECRET = "image-test-secret"
GRACE_PERIOD_S = 30.0  # Kubernetes' default terminationGracePeriodSeconds
# What the final stage may add to its base (the venv): it is ~65 MB; this catches a compiler,
# a pip cache or the build context slipping into the image.
MAX_ADDED_BYTES = 120 * 1024 * 1024
# Files podman itself creates in a container's root to mount its own over them.
PODMAN_MOUNT_POINTS = {
    "/etc",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/run",
    "/run/.containerenv",
}


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A host directory for the state volume, owned by the image's user as a volume's
    fsGroup/initContainer would make it; removed afterwards (its files belong to 10001)."""
    path = tmp_path / "state"
    path.mkdir()
    shutil.chown(path, UID, UID)
    yield path
    shutil.rmtree(path)


def read_one(db_path: Path, sql: str) -> object:
    """The single value ``sql`` selects from the SQLite file (read-only, from the host)."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        row = db.execute(sql).fetchone()
    assert row is not None, sql
    return row[0]


def test_runs_read_only_as_kubernetes_would_stores_exports_and_stops_cleanly(
    image: str, state_dir: Path
) -> None:
    deliveries = sample_deliveries()
    expected = expected_span_ids(d.event for d in deliveries)
    listen_port, admin_port = free_port(), free_port()
    admin_url = f"http://127.0.0.1:{admin_port}"
    with (
        HttpOtlpReceiver() as receiver,
        running_container(
            "--read-only",  # no --tmpfs: nothing may be written outside the state volume
            "--user",
            f"{UID}:{UID}",
            # The restricted Pod Security Standard: no capabilities, no privilege escalation.
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--network",
            "host",
            "-v",
            f"{state_dir}:{STATE}",
            "-e",
            f"OTELBRIDGE_LISTEN_PORT={listen_port}",
            "-e",
            f"OTELBRIDGE_ADMIN_PORT={admin_port}",
            "-e",
            f"OTELBRIDGE_WEBHOOK_SECRET={SECRET}",
            "-e",
            f"OTEL_EXPORTER_OTLP_ENDPOINT={receiver.url}",
            image,
        ) as name,
    ):
        podman.wait_ready(
            admin_url,
            lambda: container_logs(name),
            running=lambda: podman.inspect(name)["State"]["Running"],
            timeout=30,
        )
        with httpx.Client(timeout=5.0) as client:
            assert client.get(f"{admin_url}/healthz").status_code == 200
            assert client.get(f"{admin_url}/readyz").status_code == 200
            # The image's ENV binds both listeners on every interface, not loopback only.
            logs = container_logs(name)
            assert f"0.0.0.0:{listen_port}" in logs, logs
            assert f"0.0.0.0:{admin_port}" in logs, logs
            assert f"state in {STATE}" in logs, logs
            wrong = client.post(
                f"http://127.0.0.1:{listen_port}{WEBHOOK_PATH}",
                content=deliveries[0].body,
                headers={"Content-Type": "application/json", "X-Webhook-Secret": "wrong"},
            )
            assert wrong.status_code == 401

        poster = Poster(f"http://127.0.0.1:{listen_port}{WEBHOOK_PATH}", SECRET, threads=4)
        poster.post_all(deliveries)
        assert poster.acked == {d.index for d in deliveries}, poster.answers

        # Stored durably on the volume, by the image's user: every acknowledged delivery got an
        # inbox row (the AUTOINCREMENT counter: processed rows are deleted as the pipeline goes).
        inbox = state_dir / "inbox.db"
        assert inbox.exists() and (state_dir / "state.db").exists()
        assert inbox.stat().st_uid == UID
        assert read_one(inbox, "SELECT seq FROM sqlite_sequence WHERE name = 'inbox'") == len(deliveries)

        # Stop at once, as a pod deletion does (SIGTERM, then SIGKILL after the grace period):
        # the drain must export everything and exit 0 well inside the 30 s.
        started = time.monotonic()
        podman.podman("stop", "--time", str(int(GRACE_PERIOD_S)), name, timeout=GRACE_PERIOD_S + 30)
        stop_s = time.monotonic() - started
        code = wait_for_exit(name, timeout=5)
        logs = container_logs(name)
        assert code == 0, logs
        assert stop_s < GRACE_PERIOD_S - 10, f"stop took {stop_s:.1f}s:\n{logs}"
        assert "SIGTERM received" in logs, logs
        assert "Traceback" not in logs and "ERROR" not in logs, logs

        # Everything out, nothing twice; the ledger on the volume knows every span, the spool is
        # empty (nothing left for the next start).
        spans = receiver.spans()
        assert {span.span_id.hex() for span in spans} == expected
        assert len(spans) == len(expected)
        state = state_dir / "state.db"
        with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT span_id FROM ledger").fetchall()
        ledgered = {(sid % 2**64).to_bytes(8, "big").hex() for (sid,) in rows}  # stored as signed 64-bit
        assert expected <= ledgered  # (with them, the log items that went out with each root)
        assert read_one(state, "SELECT count(*) FROM spool WHERE signal = 'traces'") == 0


def test_runs_as_a_non_root_numeric_user_and_writes_only_its_volume_by_default(image: str) -> None:
    """No ``--user``, no ``--read-only``, no ``-v``: the image's own defaults. PID 1 is
    ``otelbridge serve`` as 10001:10001, state goes to the image's VOLUME, and the container's
    root filesystem is left unchanged (so a read-only root costs nothing)."""
    listen_port, admin_port = free_port(), free_port()
    admin_url = f"http://127.0.0.1:{admin_port}"
    with running_container(
        "--network",
        "host",
        "-e",
        f"OTELBRIDGE_LISTEN_PORT={listen_port}",
        "-e",
        f"OTELBRIDGE_ADMIN_PORT={admin_port}",
        "-e",
        f"OTELBRIDGE_WEBHOOK_SECRET={SECRET}",
        "-e",
        "OTELBRIDGE_EXPORTER=none",
        image,
    ) as name:
        podman.wait_ready(
            admin_url,
            lambda: container_logs(name),
            running=lambda: podman.inspect(name)["State"]["Running"],
            timeout=30,
        )
        status = podman.podman("exec", name, "cat", "/proc/1/status").stdout
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        gids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Gid:"))
        assert set(uids) == {str(UID)} and set(gids) == {str(UID)}, status
        cmdline = podman.podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
        assert cmdline[-3:] == ["/opt/otelbridge/bin/otelbridge", "serve", ""], cmdline

        delivery = sample_deliveries()[0]
        with httpx.Client(timeout=5.0) as client:
            answer = client.post(
                f"http://127.0.0.1:{listen_port}{WEBHOOK_PATH}",
                content=delivery.body,
                headers={"Content-Type": "application/json", "X-Webhook-Secret": SECRET},
            )
        assert answer.status_code == 200, answer.text
        mounts = podman.inspect(name)["Mounts"]
        assert [(m["Type"], m["Destination"]) for m in mounts] == [("volume", STATE)], mounts
        listing = podman.podman("exec", name, "ls", "-n", STATE).stdout
        assert "inbox.db" in listing and "state.db" in listing, listing
        # Changes to the root filesystem outside mounts: only podman's own mount points may appear
        # (a .pyc, a /tmp file or a write under /opt would be listed here).
        changed = {line.split(maxsplit=1)[1] for line in podman.podman("diff", name).stdout.splitlines()}
        assert changed <= PODMAN_MOUNT_POINTS, changed


def test_image_metadata(image: str) -> None:
    data = podman.podman("image", "inspect", image).stdout
    inspected = json.loads(data)[0]
    config = inspected["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.title"] == "otelbridge"
    assert labels["org.opencontainers.image.description"]
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert config["User"] == f"{UID}:{UID}"
    assert config["StopSignal"] == "SIGTERM"
    assert set(config["ExposedPorts"]) == {"8080/tcp", "9464/tcp"}
    assert list(config["Volumes"]) == [STATE]
    assert config["Entrypoint"] == ["otelbridge"] and config["Cmd"] == ["serve"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["OTELBRIDGE_LISTEN_HOST"] == env["OTELBRIDGE_ADMIN_HOST"] == "0.0.0.0"
    assert env["OTELBRIDGE_STATE_DIR"] == STATE
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    # The drain fits the grace period with room for the pipeline's last steps.
    assert float(env["OTELBRIDGE_SHUTDOWN_TIMEOUT"]) <= GRACE_PERIOD_S / 2


def test_final_stage_is_small_and_has_no_build_tools(image: str) -> None:
    base = json.loads(podman.podman("image", "inspect", podman.BASE_IMAGE).stdout)[0]
    built = json.loads(podman.podman("image", "inspect", image).stdout)[0]
    added = built["Size"] - base["Size"]
    assert 0 < added < MAX_ADDED_BYTES, f"the image adds {added / 1e6:.0f} MB to its base"
    probe = podman.podman(
        "run",
        "--rm",
        "--read-only",
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        "ls /opt/otelbridge/bin; ls -d /src /root/.cache 2>/dev/null; command -v gcc cc pip pip3 || true",
    ).stdout.split()
    assert "otelbridge" in probe and "python3" in probe, probe
    assert not {"pip", "pip3", "/src", "/root/.cache"} & set(probe), probe
    assert not [p for p in probe if p.endswith(("gcc", "/cc"))], probe


def test_stops_inside_the_grace_period_with_the_backend_down_and_resends_after_a_restart(
    image: str, state_dir: Path
) -> None:
    """The slowest ordinary stop: the backend answers 503 to everything, so the drain runs its
    whole OTELBRIDGE_SHUTDOWN_TIMEOUT (the image's 10 s) and must still exit 0 before a 30 s
    grace period ends, leaving the spool on the volume; the next container on the same volume
    sends it, each span once."""
    deliveries = sample_deliveries()
    expected = expected_span_ids(d.event for d in deliveries)
    listen_port, admin_port = free_port(), free_port()
    admin_url = f"http://127.0.0.1:{admin_port}"

    def run_args(receiver: HttpOtlpReceiver) -> list[str]:
        return [
            "--read-only",
            "--user",
            f"{UID}:{UID}",
            "--network",
            "host",
            "-v",
            f"{state_dir}:{STATE}",
            "-e",
            f"OTELBRIDGE_LISTEN_PORT={listen_port}",
            "-e",
            f"OTELBRIDGE_ADMIN_PORT={admin_port}",
            "-e",
            f"OTELBRIDGE_WEBHOOK_SECRET={SECRET}",
            "-e",
            f"OTEL_EXPORTER_OTLP_ENDPOINT={receiver.url}",
            "-e",
            "OTELBRIDGE_RETRY_INITIAL_BACKOFF=0.2",
            "-e",
            "OTELBRIDGE_RETRY_MAX_BACKOFF=1",
            image,
        ]

    with HttpOtlpReceiver() as receiver:
        receiver.fail_next(100_000, status=503)
        with running_container(*run_args(receiver)) as name:
            podman.wait_ready(
                admin_url,
                lambda: container_logs(name),
                running=lambda: podman.inspect(name)["State"]["Running"],
                timeout=30,
            )
            poster = Poster(f"http://127.0.0.1:{listen_port}{WEBHOOK_PATH}", SECRET, threads=4)
            poster.post_all(deliveries)
            assert poster.acked == {d.index for d in deliveries}, poster.answers
            assert receiver.wait_until(lambda: len(receiver.requests) > 0, timeout=15)
            started = time.monotonic()
            podman.podman("stop", "--time", str(int(GRACE_PERIOD_S)), name, timeout=GRACE_PERIOD_S + 30)
            stop_s = time.monotonic() - started
            logs = container_logs(name)
            assert wait_for_exit(name, timeout=5) == 0, logs
            assert stop_s < GRACE_PERIOD_S - 5, f"stop took {stop_s:.1f}s:\n{logs}"
        assert receiver.spans() == []
        queued = read_one(state_dir / "state.db", "SELECT count(*) FROM spool WHERE signal = 'traces'")
        assert isinstance(queued, int) and queued > 0

        receiver.clear_answers()
        with running_container(*run_args(receiver)) as name:
            podman.wait_ready(
                admin_url,
                lambda: container_logs(name),
                running=lambda: podman.inspect(name)["State"]["Running"],
                timeout=30,
            )
            assert receiver.wait_until(lambda: receiver.span_ids() >= expected, timeout=30), container_logs(
                name
            )
            podman.podman("stop", "--time", str(int(GRACE_PERIOD_S)), name, timeout=GRACE_PERIOD_S + 30)
            assert wait_for_exit(name, timeout=5) == 0, container_logs(name)
        spans = receiver.spans()
        assert {span.span_id.hex() for span in spans} == expected
        assert len(spans) == len(expected)
