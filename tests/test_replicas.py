"""Three ``otelbridge serve`` replicas on one real PostgreSQL, a sender that retries across them
as a load balancer's clients would, and a fault in the middle of the stream: ``kill -9`` of the
leader, the database stopped hard and started again, the leader's connections cut, the leader
paused past its lease. After each: no acknowledged webhook lost, every span exported, and
duplicates only from the exports in flight at the fault."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.otlp_receiver import HttpOtlpReceiver
from tests.support.postgres import PostgresServer, require_postgres_bin
from tests.support.serve_process import (
    Delivery,
    ServeProcess,
    expected_span_ids,
    free_port,
    post_webhook,
    sample_deliveries,
    serve_env,
)

SECRET = "replicas-test-secret-0123456789"
REPLICAS = 3
#: the sample stream three times over, each copy with its own call ids (36 calls, ~500 spans)
COPIES = 3
#: the lease's TTL (10 s) plus a follower's retry (2 s) plus slack: takeover must fit in 15 s
TAKEOVER_S = 15.0


def _stream() -> list[Delivery]:
    base = sample_deliveries()
    out: list[Delivery] = []
    for copy in range(COPIES):
        for d in base:
            text = d.body.decode().replace(d.call_id, f"{d.call_id}_r{copy}")
            event = json.loads(text)
            out.append(Delivery(len(out), text.encode(), event, f"{d.call_id}_r{copy}"))
    return out


class Cluster:
    def __init__(self, tmp_path: Path, url: str, receiver: HttpOtlpReceiver) -> None:
        self.tmp_path, self.url, self.receiver = tmp_path, url, receiver
        self.replicas: list[ServeProcess] = []

    def start(self) -> None:
        for n in range(REPLICAS):
            listen, admin = free_port(), free_port()
            env = serve_env(
                self.tmp_path / f"replica-{n}",
                listen,
                admin,
                SECRET,
                self.receiver.env(),
                {"OTELBRIDGE_DATABASE_URL": self.url, "OTELBRIDGE_POLL_INTERVAL": "0"},
            )
            self.replicas.append(
                ServeProcess(self.tmp_path, env, listen_port=listen, admin_port=admin).start()
            )
        for replica in self.replicas:
            replica.wait_ready(30)

    def leader(self, timeout: float = TAKEOVER_S + 5) -> ServeProcess:
        """The replica whose /metrics says it leads (exactly one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leading = [r for r in self.replicas if r.running and _leads(r)]
            if len(leading) == 1:
                return leading[0]
            time.sleep(0.2)
        raise AssertionError("no single leader: " + "; ".join(r.stderr[-2000:] for r in self.replicas))

    def close(self) -> None:
        for replica in self.replicas:
            if replica.running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(replica.pid, signal.SIGKILL)
            replica.close()


def _leads(replica: ServeProcess) -> bool:
    try:
        text = httpx.get(f"{replica.admin_url}/metrics", timeout=1.0).text
    except httpx.HTTPError:
        return False
    return re.search(r"^otelbridge_leader\w*(\{[^}]*\})? 1(\.0)?$", text, re.MULTILINE) is not None


class RetryingSender:
    """Each call's events in order on one of four lanes; a delivery is posted to one replica,
    then the next, until one answers 2xx (a client behind a Service retrying on 503 or a reset)."""

    def __init__(self, cluster: Cluster, deliveries: list[Delivery], pace_s: float) -> None:
        self.cluster, self.deliveries, self.pace_s = cluster, deliveries, pace_s
        self.acked: set[int] = set()
        self.refusals: Counter[int | None] = Counter()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        lanes: list[list[Delivery]] = [[] for _ in range(4)]
        calls: dict[str, int] = {}
        for d in self.deliveries:
            lanes[calls.setdefault(d.call_id, len(calls) % 4)].append(d)
        self._threads = [threading.Thread(target=self._lane, args=(lane,), daemon=True) for lane in lanes]
        for t in self._threads:
            t.start()

    def wait_acked(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.acked) >= count, (
            f"{len(self.acked)} of {count} acknowledged; refusals {self.refusals}"
        )

    def join(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)
        assert len(self.acked) == len(self.deliveries), f"refusals {self.refusals}"

    def _lane(self, lane: list[Delivery]) -> None:
        replicas = self.cluster.replicas
        with httpx.Client(timeout=2.0) as client:
            for d in lane:
                deadline = time.monotonic() + 120
                attempt = d.index
                while time.monotonic() < deadline:
                    url = replicas[attempt % len(replicas)].webhook_url
                    status = post_webhook(client, url, d.body, SECRET)
                    if status is not None and 200 <= status < 300:
                        with self._lock:
                            self.acked.add(d.index)
                        break
                    with self._lock:
                        self.refusals[status] += 1
                    attempt += 1
                    if attempt % len(replicas) == d.index % len(replicas):
                        time.sleep(0.1)  # every replica refused: back off a little
                time.sleep(self.pace_s)


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A server of this test's own: the faults stop it, so it cannot be the session's."""
    server = PostgresServer(require_postgres_bin())
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def cluster(tmp_path: Path, own_postgres: PostgresServer, receiver: HttpOtlpReceiver) -> Iterator[Cluster]:
    c = Cluster(tmp_path, own_postgres.url, receiver)
    try:
        yield c
    finally:
        c.close()


def _pipeline_pid(replica: ServeProcess) -> int:
    out = subprocess.run(
        ["pgrep", "-P", str(replica.pid)], capture_output=True, text=True, check=False
    ).stdout
    pids = [int(p) for p in out.split()]
    assert len(pids) == 1, f"pipeline of {replica.pid}: {pids}"
    return pids[0]


def kill_the_leader(cluster: Cluster, server: PostgresServer) -> None:
    leader = cluster.leader()
    os.killpg(leader.pid, signal.SIGKILL)
    leader.wait(10)


def restart_the_database(cluster: Cluster, server: PostgresServer) -> None:
    leader = cluster.leader()
    server.stop_immediate()
    # meanwhile: a replica answers 503 with Retry-After and says why on /readyz, and none
    # crashes (the sender keeps trying; the leader's pipeline steps down and restarts)
    replica = next(r for r in cluster.replicas if r is not leader)
    deadline = time.monotonic() + 10
    ready = webhook = None
    with httpx.Client(timeout=5.0) as client:  # /readyz gives its probe 2 s
        while time.monotonic() < deadline and (ready is None or webhook is None):
            answer = client.get(f"{replica.admin_url}/readyz")
            if answer.status_code == 503 and "database" in answer.text:
                ready = answer
            posted = client.post(
                replica.webhook_url,
                content=_stream()[0].body,
                headers={"Content-Type": "application/json", "X-Webhook-Secret": SECRET},
            )
            if posted.status_code == 503:
                webhook = posted
            time.sleep(0.2)
    assert ready is not None, "/readyz did not name the database while it was down"
    assert webhook is not None and webhook.headers.get("Retry-After"), "no 503 with Retry-After"
    assert all(r.running for r in cluster.replicas)
    server.start()


def cut_the_leaders_connections(cluster: Cluster, server: PostgresServer) -> None:
    pid = _pipeline_pid(cluster.leader())
    assert server.terminate_backends(f"otelbridge-pipeline-{pid}-%") >= 1


def pause_the_leader_past_its_lease(cluster: Cluster, server: PostgresServer) -> None:
    leader = cluster.leader()
    os.killpg(leader.pid, signal.SIGSTOP)
    try:
        # another replica takes over while it sleeps
        deadline = time.monotonic() + TAKEOVER_S + 5
        while time.monotonic() < deadline and not any(
            r is not leader and r.running and _leads(r) for r in cluster.replicas
        ):
            time.sleep(0.2)
    finally:
        os.killpg(leader.pid, signal.SIGCONT)
    assert any(r is not leader and _leads(r) for r in cluster.replicas), "no takeover while the leader slept"


FAULTS: dict[str, Callable[[Cluster, PostgresServer], None]] = {
    "kill -9 of the leader": kill_the_leader,
    "pg_ctl stop -m immediate, then start": restart_the_database,
    "pg_terminate_backend on the leader's connections": cut_the_leaders_connections,
    "SIGSTOP of the leader past its lease, then SIGCONT": pause_the_leader_past_its_lease,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_mid_stream_loses_nothing_acknowledged(
    fault: str, cluster: Cluster, own_postgres: PostgresServer, receiver: HttpOtlpReceiver
) -> None:
    cluster.start()
    deliveries = _stream()
    expected = expected_span_ids([d.event for d in deliveries])
    sender = RetryingSender(cluster, deliveries, pace_s=0.02)
    sender.start()
    sender.wait_acked(len(deliveries) // 3, timeout=60)
    started = time.monotonic()
    FAULTS[fault](cluster, own_postgres)
    sender.join(timeout=180)
    assert receiver.wait_until(lambda: expected <= receiver.span_ids(), timeout=TAKEOVER_S + 60), (
        f"{len(expected - receiver.span_ids())} of {len(expected)} spans missing "
        f"{time.monotonic() - started:.0f}s after the fault; "
        + " | ".join(r.stderr[-3000:] for r in cluster.replicas)
    )
    received = Counter(s.span_id.hex() for s in receiver.spans())
    assert set(received) == expected  # nothing that no call maps to
    twice = {span_id for span_id, n in received.items() if n > 1}
    # duplicates only from exports in flight at the fault: the requests holding them are few
    requests_with_duplicates = [
        r
        for r in receiver.trace_requests
        if any(s.span_id.hex() in twice for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans)
    ]
    assert len(requests_with_duplicates) <= 2 * 2, (fault, len(twice))  # each copy of at most 2 exports
