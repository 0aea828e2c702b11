"""The crash window under load: ``kill -9`` of ``otelbridge serve`` (both processes at once, as a
container dies) while webhooks pour in, three times, then a last start that sends the rest.
Counts the spans the backend received twice and, for each, how long before the kill the
backend had acknowledged them (docs/architecture.md, "Nothing lost, nothing doubled").

    python bench/crash_window.py [--copies 30] [--kills 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otelbridge.cartesia.webhooks import parse_webhook_event
from tests.support.otlp_receiver import HttpOtlpReceiver, ReceivedRequest
from tests.support.serve_process import (
    Delivery,
    Poster,
    ServeProcess,
    expected_span_ids,
    free_port,
    sample_deliveries,
    serve_env,
)

SECRET = "whsec_bench_crash_window"


def copies(count: int) -> list[Delivery]:
    """The sample stream ``count`` times over under new call ids."""
    out: list[Delivery] = []
    for k in range(count):
        for d in sample_deliveries():
            text = d.body.decode()
            for call_id in {d.event[key] for key in ("call_id", "request_id") if key in d.event}:
                text = text.replace(f'"{call_id}"', f'"{call_id}-{k}"')
            event = json.loads(text)
            resolved = parse_webhook_event(event).resolved_call_id
            assert resolved is not None
            out.append(Delivery(len(out), text.encode(), event, resolved))
    return out


def span_ids(request: ReceivedRequest) -> set[str]:
    message = request.message
    if message is None or request.signal != "traces" or not 200 <= int(request.answer) < 300:
        return set()
    return {s.span_id.hex() for rs in message.resource_spans for ss in rs.scope_spans for s in ss.spans}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    deliveries = copies(args.copies)
    expected = expected_span_ids(d.event for d in deliveries)
    work = Path(tempfile.mkdtemp(prefix="crash-window-"))
    listen, admin = free_port(), free_port()
    acked: set[int] = set()
    kills: list[float] = []
    with HttpOtlpReceiver() as receiver:
        env = serve_env(work / "state", listen, admin, SECRET, receiver.env(), fast_retries=False)
        for round_ in range(args.kills + 1):
            daemon = ServeProcess(work, env, listen_port=listen, admin_port=admin).start().wait_ready(30)
            poster = Poster(daemon.webhook_url, SECRET, threads=8)
            posting = poster.start([d for d in deliveries if d.index not in acked])
            if round_ == args.kills:  # the last start: everything goes out, then SIGTERM
                posting.join(300)
                receiver.wait_until(lambda: expected <= receiver.span_ids(), 120)
                daemon.terminate()
                daemon.wait(60)
            else:
                time.sleep(1.5 + rng.random())  # under load: the processor's batches are long
                os.killpg(daemon.pid, signal.SIGKILL)
                kills.append(time.monotonic())
                daemon.wait(10)
                posting.join(120)
            acked |= poster.acked
            daemon.close()
        requests = [r for r in receiver.requests if r.signal == "traces"]
        counts = Counter(s.span_id.hex() for s in receiver.spans())
    print(f"{len(deliveries)} deliveries, {len(expected)} spans, {len(requests)} trace requests")
    print(f"missing spans: {len(expected - set(counts))}")
    print(f"spans received twice or more: {sum(1 for n in counts.values() if n > 1)}")
    bounds = [*kills, float("inf")]
    attributed = 0
    for i, kill in enumerate(kills):
        before = [r for r in requests if r.received_at < kill]
        after = [r for r in requests if kill < r.received_at < bounds[i + 1]]
        again = set().union(*(span_ids(r) for r in after)) if after else set()
        resent = [(kill - r.received_at, len(span_ids(r) & again)) for r in before if span_ids(r) & again]
        shown = ", ".join(f"{n} spans acked {age:.2f}s before the kill" for age, n in resent) or "none"
        print(f"kill {i + 1}: re-sent after the restart: {shown}")
        attributed += sum(n for _, n in resent)
    twice = sum(n - 1 for n in counts.values() if n > 1)
    print(f"received twice within one process's life (no kill in between): {twice - attributed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
