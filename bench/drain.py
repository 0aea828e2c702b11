"""Benchmark: draining a spool of N spans, queued while the backend was down, to a local receiver.

    python bench/drain.py [--spans 100000] [--baseline REV] [--repeats 2] [--json]

Setup (not timed): a state directory whose spool holds the OTLP trace requests of enough synthetic
20-turn calls (``tests/support/cartesia_api.py``) to make ``--spans`` spans, built by the real
processor from ``call_completed`` webhooks. Timed: the real ``Sender`` of the code under test, in
this process, sending that spool over OTLP/HTTP to a receiver in its own process (answering 200
and counting spans), from start until the spool is empty; its transport has sent one (empty,
uncounted) metrics request first, as a daemon's has while its backend was down. Reported:
seconds, spans/s, requests, the largest request (the export cap is 2 MiB), and that every span
arrived exactly once. Two times: until the spool is empty (its acknowledged rows deleted, the
sender idle), and until the last span reached the receiver (``delivered``: what a user waiting
for traces sees).

``--baseline REV`` also runs the same measurement, on the same spool, with the code of git
revision REV (checked out into a temporary worktree), interleaved with the current code, and
prints the ratio current / baseline.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from common import ROOT, InternalProcess, answer_commands, clean_env, code_roots, log

CALL_SPANS = 22  # a synthetic call of 20 turns: root + 20 turns + the tool span


def build_spool(state_dir: Path, spans: int) -> int:
    """Fill ``state_dir``'s spool with the trace requests of ``spans`` spans (about); returns the
    spans spooled."""
    sys.path.insert(0, str(ROOT))
    from tests.support.cartesia_api import CartesiaStandIn
    from tests.support.inbox_events import store_events
    from tests.support.processing import open_processor

    api = CartesiaStandIn()
    calls = -(-spans // CALL_SPANS)
    ids = api.add_synthetic_calls("agent_bench_drain", calls, turns=20)
    state, inbox, processor = open_processor(state_dir)
    events = (
        {
            "type": "call_completed",
            "call_id": call_id,
            "agent_id": "agent_bench_drain",
            "call": api.get(call_id),
        }
        for call_id in ids
    )
    batch: list[dict[str, Any]] = []
    for event in events:
        batch.append(event)
        if len(batch) == 500:
            store_events(inbox, batch)
            batch = []
    if batch:
        store_events(inbox, batch)
    spooled = 0
    while True:
        result = processor.process_batch()
        spooled += result.spans
        if not result.events:
            break
    state.close()
    inbox.close()
    return spooled


def drain(state_dir: Path, url: str) -> dict[str, Any]:
    """Run the Sender of the code on ``sys.path`` until the traces spool is empty."""
    import anyio
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from otelbridge.delivery.meter import MetricRecorder
    from otelbridge.delivery.sender import Sender
    from otelbridge.delivery.telemetry import Gauges, SelfMetrics
    from otelbridge.delivery.transport import make_transport
    from otelbridge.store import open_engine

    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = url
    # as the pipeline builds it: the state, a reader of its own, the ack log
    engine = open_engine(state_dir, None, role="pipeline")
    state, reader, acks = engine.state(), engine.state_reader(), engine.acks()
    transport = make_transport({"traces": "otlp", "metrics": "otlp"})
    # two readers, as the pipeline's meter has (OTLP and Prometheus): a self-metric recorded
    # per acknowledgement costs what it costs in a daemon
    provider = MeterProvider(metric_readers=[InMemoryMetricReader(), InMemoryMetricReader()])
    # a baseline from before issue 20 builds its own recorder (two arguments)
    extra = (MetricRecorder(provider),) if "recorder" in inspect.signature(SelfMetrics).parameters else ()
    metrics = SelfMetrics(provider, Gauges(), *extra)
    sender = Sender(
        state, transport, metrics, initial_backoff_s=0.05, max_backoff_s=0.5, reader=reader, acks=acks
    )

    # As in a daemon whose backend was down: its transport has been trying all along, so its
    # client is made and its imports done (a fresh process's first export imports httpcore's
    # backends: 67 ms here, where trio is installed). A metrics request, which the receiver
    # does not count.
    transport.send("metrics", b"")

    def depth() -> int:
        with state.reading() as tx:
            return int(tx.spool_stats().depth["traces"])

    async def main() -> float:
        started = time.perf_counter()
        result["started_at"] = time.time()  # the receiver notes its last span on the same clock
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender.run, "traces")
            await anyio.sleep(0.05)
            # the spool is read only once the sender says it is idle: a count of a spool of
            # large rows would compete with the sender for the store's lock
            while not sender.idle() or (await anyio.to_thread.run_sync(depth)) > 0:
                await anyio.sleep(0.005)
            elapsed = time.perf_counter() - started
            tg.cancel_scope.cancel()
        return elapsed

    result: dict[str, Any] = {}
    result["seconds"] = anyio.run(main)
    transport.close()
    return result


def run_receiver(stdin: TextIO, stdout: TextIO) -> None:
    """An OTLP/HTTP receiver counting spans and request sizes; commands: ``stats``, ``reset``."""
    sys.path.insert(0, str(ROOT))
    import threading

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tests.support.otlp_receiver import HttpOtlpReceiver, ReceivedRequest

    class Counting(HttpOtlpReceiver):
        def __init__(self) -> None:
            super().__init__()
            self.guard = threading.Lock()
            self.reset()

        def reset(self) -> None:
            self.ids: set[bytes] = set()
            self.span_count = self.count = self.max_bytes = 0
            self.last_at = 0.0

        def _record(self, request: ReceivedRequest, accepted: bool) -> None:
            message = request.message
            if not (accepted and isinstance(message, ExportTraceServiceRequest)):
                return
            with self.guard:
                self.count += 1
                self.max_bytes = max(self.max_bytes, len(request.body))
                for rs in message.resource_spans:
                    for ss in rs.scope_spans:
                        self.span_count += len(ss.spans)
                        self.ids.update(span.span_id for span in ss.spans)
                self.last_at = time.time()

    receiver = Counting().start()

    def stats() -> dict[str, float]:
        return {"spans": receiver.span_count, "distinct": len(receiver.ids),
                "requests": receiver.count, "max_bytes": receiver.max_bytes,
                "last_at": receiver.last_at}  # fmt: skip

    def reset() -> dict[str, int]:
        receiver.reset()
        return {}

    answer_commands(receiver, receiver.guard, {"stats": stats, "reset": reset}, stdin, stdout)


def measure(code_root: Path, spool: Path, url: str) -> dict[str, Any]:
    """One drain of a copy of ``spool`` by the code in ``code_root``, in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="otelbridge-drain-") as work:
        state_dir = Path(work) / "state"
        shutil.copytree(spool, state_dir)
        out = subprocess.run(
            [sys.executable, __file__, "--internal", "drain", str(state_dir), url],
            env=clean_env(code_root=code_root), cwd=code_root, capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--baseline", help="a git revision to compare against, in the same run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with (
        code_roots(args.baseline, "otelbridge-drain-code-") as codes,
        tempfile.TemporaryDirectory(prefix="otelbridge-drain-bench-") as work,
    ):
        spool = Path(work) / "spool"
        log(f"building a spool of about {args.spans:,} spans")
        started = time.perf_counter()
        spooled = build_spool(spool, args.spans)
        log(f"spooled {spooled:,} spans in {time.perf_counter() - started:.1f} s")
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in codes}
        with InternalProcess(__file__, "receiver") as receiver:
            for _ in range(args.repeats):
                for name, root in codes.items():
                    receiver.ask("reset")
                    run = measure(root, spool, receiver.url)
                    run.update(receiver.ask("stats"))
                    run["spans_per_s"] = spooled / run["seconds"]
                    # delivered: the last span at the receiver (the spool's rows are then
                    # still being deleted, which "seconds" includes)
                    run["delivered_s"] = run.pop("last_at") - run.pop("started_at")
                    run["exactly_once"] = run["spans"] == run["distinct"] == spooled
                    log(f"{name}: {run['seconds']:.2f} s, delivered in {run['delivered_s']:.2f} s, "
                        f"{run['spans_per_s']:,.0f} spans/s, "
                        f"{run['requests']} requests, largest {run['max_bytes']:,} B, "
                        f"exactly once: {run['exactly_once']}")  # fmt: skip
                    results[name].append(run)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    medians = {name: statistics.median(r["seconds"] for r in runs) for name, runs in results.items()}
    delivered = {name: statistics.median(r["delivered_s"] for r in runs) for name, runs in results.items()}
    report: dict[str, Any] = {
        "spans": spooled,
        "machine": f"{machine}, Python {platform.python_version()}",
        "results": {
            name: {"median_s": medians[name], "median_delivered_s": delivered[name], "runs": runs}
            for name, runs in results.items()
        },
    }
    if args.baseline:
        report["speedup"] = medians["baseline"] / medians["current"]
        report["delivered_speedup"] = delivered["baseline"] / delivered["current"]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"\n{report['machine']}; {spooled:,} spans spooled")
    for name, result in report["results"].items():
        print(f"  {name:<9} median {result['median_s']:.2f} s ({spooled / result['median_s']:,.0f} spans/s), "
              f"delivered in {result['median_delivered_s']:.2f} s")  # fmt: skip
    if "speedup" in report:
        print(f"  current is {report['speedup']:.2f}x the baseline to an empty spool, "
              f"{report['delivered_speedup']:.2f}x to the last span at the receiver "
              "(goal >= 3.0)")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--internal":
        if sys.argv[2] == "receiver":
            run_receiver(sys.stdin, sys.stdout)
        else:
            sys.path.insert(0, os.getcwd())
            print(json.dumps(drain(Path(sys.argv[3]), sys.argv[4])))
    else:
        main()
