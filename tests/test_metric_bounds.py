"""A real ``otelbridge serve`` against webhooks built to blow up its metrics (issue 19).

20,000 authenticated webhooks whose agent, deployment, tool, LogMetric name and value, role and
end reason are all distinct must leave at most the series docs/cardinality.md states, a
``/metrics`` page under 5 MB and a pipeline process under 150 MB of RSS. Thirty webhooks of
about 300 KB of names and labels each (9 MB) must leave ``/metrics`` under 1 MB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from otelbridge.delivery.cardinality import SeriesLimits, worst_case
from tests.support.otlp_receiver import HttpOtlpReceiver
from tests.support.serve_process import SECRET_HEADER, ServeProcess, free_port, serve_env

SECRET = "metric-bounds-test-secret-0123456789"


def _call_failed(n: int, pad: str = "") -> dict[str, Any]:
    """A whole call in one webhook, every label of it unique to ``n`` (and ``pad`` long)."""
    call_id = f"ac_bound_{n}"
    agent = f"agent_{n}{pad}"
    return {
        "type": "call_failed",
        "call_id": call_id,
        "agent_id": agent,
        "timestamp": "2026-11-20T09:01:28Z",
        "call": {
            "id": call_id,
            "agent_id": agent,
            "agent_name": f"bot {n}{pad}",
            "deployment_id": f"dep_{n}{pad}",
            "start_time": "2026-11-20T09:00:48Z",
            "end_time": "2026-11-20T09:01:28Z",
            "status": "failed",
            "end_reason": f"reason_{n}{pad}",
            "metadata": {f"key_{n}{pad}": "v"},
            "transcript": [
                {
                    "role": "assistant",
                    "text": "hello",
                    "start_timestamp": 0.5,
                    "end_timestamp": 2.0,
                    "tts_ttfb": 0.2,
                    "tool_calls": [{"id": f"t{n}", "name": f"tool_{n}{pad}", "arguments": {}}],
                },
                {"role": f"role_{n}{pad}", "text": "hm", "start_timestamp": 2.5, "end_timestamp": 3.0},
                {
                    "role": "system",
                    "start_timestamp": 3.0,
                    "end_timestamp": 3.0,
                    "log_metric": {"name": f"metric_{n}{pad}", "value": f"value_{n}{pad}", "timestamp": 3.0},
                },
                {
                    "role": "system",
                    "start_timestamp": 3.1,
                    "end_timestamp": 3.1,
                    "log_metric": {"name": f"latency_{n}_ms{pad}", "value": 12.5, "timestamp": 3.1},
                },
            ],
        },
    }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _pipeline_pid(pid: int) -> int:
    children = [
        int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()
    ]
    assert len(children) == 1, children
    return children[0]


def _events_processed(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("otelbridge_events_total{")
    )


def _call_series(metrics: str) -> dict[str, int]:
    """Series per call-metric family (histograms: one series per _count line)."""
    out: dict[str, int] = {}
    for line in metrics.splitlines():
        if not line.startswith("cartesia_") or line.startswith("#"):
            continue
        name = line.split("{", 1)[0]
        if "_bucket" in name or name.endswith("_sum"):
            continue
        family = name.removesuffix("_count").removesuffix("_total")
        out[family] = out.get(family, 0) + 1
    return out


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    with HttpOtlpReceiver() as receiver:
        listen, admin = free_port(), free_port()
        env = serve_env(tmp_path / "state", listen, admin, SECRET, receiver.env())
        process = ServeProcess(tmp_path, env, listen_port=listen, admin_port=admin)
        try:
            yield process.start().wait_ready(30.0)
        finally:
            process.close()


def _post_all(serve: ServeProcess, bodies: list[bytes], workers: int = 4) -> None:
    def post(chunk: list[bytes]) -> None:
        with httpx.Client(timeout=30.0) as client:
            for body in chunk:
                response = client.post(
                    serve.webhook_url,
                    content=body,
                    headers={SECRET_HEADER: SECRET, "Content-Type": "application/json"},
                )
                assert response.status_code == 200, response.text

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(post, [bodies[i::workers] for i in range(workers)]))


def _metrics_when_processed(serve: ServeProcess, events: int, timeout: float = 240.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30.0) as client:
        while True:
            text = client.get(f"{serve.admin_url}/metrics").text
            if _events_processed(text) >= events:
                return client.get(f"{serve.admin_url}/metrics").text
            assert time.monotonic() < deadline, f"only {_events_processed(text)} of {events} processed"
            time.sleep(0.5)


def test_twenty_thousand_unique_webhooks_stay_within_the_stated_bounds(serve: ServeProcess) -> None:
    count = 20_000
    _post_all(serve, [json.dumps(_call_failed(n)).encode() for n in range(count)])
    metrics = _metrics_when_processed(serve, count)
    size = len(metrics.encode())
    rss = _rss_mb(_pipeline_pid(serve.pid))
    series = _call_series(metrics)
    print(f"\n/metrics {size / 1e6:.2f} MB, {sum(series.values())} call series, pipeline RSS {rss:.0f} MB")
    assert size < 5_000_000
    assert rss < 150
    bound = {w.instrument.replace(".", "_"): w.series for w in worst_case(SeriesLimits())}
    log_metric_series = sum(n for family, n in series.items() if family.startswith("cartesia_log_metric_"))
    for family, n in series.items():
        if not family.startswith("cartesia_log_metric_"):
            assert n <= bound[family.removesuffix("_seconds")], family
    assert log_metric_series <= bound["cartesia_log_metric_{name}"] + bound["cartesia_log_metric_other"]
    # the agents past the bound read other, and each bound's folds are counted
    assert 'cartesia_agent_id="other"' in metrics
    assert metrics.count('cartesia_agent_id="agent_') <= 101 * 200  # 100 agents, a few series each


def test_nine_megabytes_of_names_and_labels_keep_metrics_small(serve: ServeProcess) -> None:
    pad = "x" * 50_000  # each label of each webhook: about 50 KB; six of them: 300 KB a webhook
    bodies = [json.dumps(_call_failed(n, pad)).encode() for n in range(30)]
    assert sum(map(len, bodies)) > 9_000_000
    _post_all(serve, bodies, workers=2)
    metrics = _metrics_when_processed(serve, 30)
    print(f"\n/metrics {len(metrics.encode()) / 1e3:.0f} KB")
    assert len(metrics.encode()) < 1_000_000
    assert max(len(line) for line in metrics.splitlines()) < 2_000
