"""The processor alone: stored webhook events -> calls, ledger, spool, points in real SQLite
files, no HTTP and no export. The part of ``otelbridge serve`` and ``backfill`` that drains
the inbox, measured against another checkout of otelbridge in the same run.

Usage::

    python bench/processor.py [--against CHECKOUT] [--repeats 3] [--calls 200] [--json]

Two workloads, each on a fresh state directory per repeat, best of ``--repeats``:

* ``streamed``: ``--calls`` calls announced by ``call_started``, then 50 ``call_turn`` events
  each (made from the sample turns in examples/webhooks.jsonl, user and assistant in turn,
  interleaved across calls): every event exports one turn at once;
* ``whole``: ``--calls`` x 5 polled calls (``call_completed`` with ``source``, 20 turns each, from
  tests/support/cartesia_api.py's ``make_call``), as backfill and polling store them.

``--against`` runs the same workloads with another checkout's ``otelbridge`` (e.g. a
``git worktree`` of the previous release), alternating with this one inside each repeat so
machine load hits both alike; the ratio is this / that.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TURNS_PER_CALL = 50


def _rows(workload: str, calls: int) -> list[tuple[int, str, str, bytes]]:
    rows: list[tuple[int, str, str, bytes]] = []
    if workload == "whole":
        sys.path.insert(0, str(ROOT))
        from tests.support.cartesia_api import make_call

        for k in range(calls * 5):
            call = make_call("agent_bench", k, turns=20, deployment_id=f"dep_{k % 3}")
            event = {"type": "call_completed", "call_id": call["id"], "agent_id": "agent_bench",
                     "call": call, "source": "backfill"}  # fmt: skip
            rows.append((time.time_ns(), "call_completed", call["id"], json.dumps(event).encode()))
        return rows
    events = [json.loads(line) for line in (ROOT / "examples" / "webhooks.jsonl").read_text().splitlines()]
    turns = [e for e in events if e["type"] == "call_turn"]
    started = next(e for e in events if e["type"] == "call_started" and e.get("call"))
    for k in range(calls):
        call_id = f"ac_bench_{k}"
        event = copy.deepcopy(started)
        event["call_id"] = event["call"]["id"] = call_id
        rows.append((time.time_ns(), "call_started", call_id, json.dumps(event).encode()))
    for n in range(TURNS_PER_CALL):
        for k in range(calls):
            event = copy.deepcopy(turns[(n * calls + k) % len(turns)])
            event["call_id"] = f"ac_bench_{k}"
            turn = event["turn"]
            turn["role"] = "user" if n % 2 else "assistant"
            turn["start_timestamp"], turn["end_timestamp"] = 0.5 + 3 * n, 2.5 + 3 * n
            rows.append((time.time_ns(), "call_turn", event["call_id"], json.dumps(event).encode()))
    return rows


def _encoder() -> Any:
    """The span encoder of the checkout this process imports, as its pipeline builds it: OTLP
    written directly (delivery/otlp.py), or in a checkout from before it, the SDK's."""
    try:
        from otelbridge.delivery.otlp import encode_traces
        from otelbridge.delivery.resource import build_resource
    except ImportError:
        sdk = importlib.import_module("otelbridge.delivery.sdk")
        old = sdk.build_resource("bench", "processor")
        return lambda spans: bytes(
            sdk.encode_trace_request(sdk.to_readable_spans(spans, old)).SerializeToString()
        )
    resource = build_resource("bench", "processor")
    return lambda spans: encode_traces(spans, resource)


def _once(workload: str, calls: int) -> dict[str, float]:
    """One timed drain, with whatever ``otelbridge`` this process imports."""
    from otelbridge.delivery.spool import Spool
    from otelbridge.ingest.processor import Processor
    from otelbridge.mapping.policy import MappingOptions
    from otelbridge.store import open_inbox, open_state

    # a checkout from before the storage seam: open_inbox gave a Database, filled by
    # otelbridge.ingest.inbox.append_rows (looked up by name: this tree no longer has it)
    append_rows = getattr(importlib.import_module("otelbridge.ingest.inbox"), "append_rows", None)
    encode = _encoder()
    rows = _rows(workload, calls)
    with tempfile.TemporaryDirectory() as tmp:
        state, inbox = open_state(Path(tmp)), open_inbox(Path(tmp))
        if append_rows is not None:
            append_rows(inbox, rows)
        else:
            inbox.append(rows)  # one commit, untimed as before
        processor = Processor(
            state, inbox, Spool(max_bytes=1 << 34, max_age_ns=1 << 62), MappingOptions(),
            encode,
            call_timeout_ns=10**15, retention_ns=10**15,
        )  # fmt: skip
        started = time.perf_counter()
        while processor.process_batch(500).events:
            pass
        seconds = time.perf_counter() - started
        state.close()
        inbox.close()
    return {"events": len(rows), "seconds": seconds, "events_per_s": len(rows) / seconds}


def _run(checkout: Path, workload: str, calls: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--internal", workload, str(calls)],
        env={"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    if sys.argv[1:2] == ["--internal"]:
        print(json.dumps(_once(sys.argv[2], int(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--against", type=Path, help="another checkout of otelbridge to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sides = {"this": ROOT, **({"against": args.against.resolve()} if args.against else {})}
    best: dict[tuple[str, str], dict[str, float]] = {}
    for _ in range(args.repeats):
        for workload in ("streamed", "whole"):
            for side, checkout in sides.items():
                got = _run(checkout, workload, args.calls)
                seen = best.get((side, workload))
                if seen is None or got["seconds"] < seen["seconds"]:
                    best[(side, workload)] = got
    if args.json:
        print(json.dumps({f"{s}/{w}": r for (s, w), r in best.items()}, indent=2))
        return
    print(f"{'workload':10s} {'checkout':8s} {'events':>7s} {'best s':>7s} {'events/s':>9s}")
    for (side, workload), r in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0] != "this")):
        print(f"{workload:10s} {side:8s} {r['events']:7.0f} {r['seconds']:7.2f} {r['events_per_s']:9,.0f}")
    if args.against:
        for workload in ("streamed", "whole"):
            ratio = best[("this", workload)]["events_per_s"] / best[("against", workload)]["events_per_s"]
            print(f"ratio this/against, {workload}: {ratio:.2f}")


if __name__ == "__main__":
    main()
