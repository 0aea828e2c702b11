"""Benchmark: what a backfill split across two processes would move to a helper, and what the
hand-off would cost, to judge that design before building it.

    python bench/handoff.py [--pages 5] [--repeats 5] [--json]

Pages of 100 calls of 20 turns (the stand-in's ``make_call``, as ``bench/backfill.py`` serves
them) are timed in this process, best of ``--repeats``, per page:

* ``whole``: what the backfill process does with a page today, from its JSON to the spooled
  OTLP bytes: ``json.loads`` of the page, ``validate_calls``, then ``Processor.take_calls`` on a
  fresh state directory (the store's work, mapping, ledger, encoding, the points row). Not in
  it: the HTTP request, the sender, recording the points, start-up; all of them would stay in
  the main process, so leaving them out favours the split;
* ``movable``: the part a helper process could take without the store: ``json.loads``,
  ``parse_call``, the mapping of each final call (``call_increment``, as for a call not seen
  before) and ``encode_traces`` of its spans;
* the hand-off: ``pickle.dumps`` (in the helper) and ``pickle.loads`` (in the main process) of
  what the main process would need back per call: its encoded spans, span ids, root times,
  metric points and call fields.

Then the model: the helper does ``movable`` + ``dumps``, the main process ``whole - movable`` +
``loads``; pipelined, a page costs the larger of the two, so the split is at best
``whole / max(helper, main)`` times as fast on two free cores (before the cost of the two
processes sharing a physical core, which ``bench/backfill.py --two-at-once`` measures).
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import ROOT

sys.path.insert(0, str(ROOT))  # the checkout's otelbridge and tests.support, from any directory

from otelbridge.cartesia.models import parse_call
from otelbridge.delivery.otlp import encode_traces
from otelbridge.delivery.resource import build_resource
from otelbridge.delivery.spool import Spool
from otelbridge.ingest.poller import validate_calls
from otelbridge.ingest.processor import Processor
from otelbridge.mapping.increments import Increment, call_increment
from otelbridge.mapping.policy import MappingOptions
from otelbridge.store import open_inbox, open_state
from tests.support.cartesia_api import make_call

CALLS_PER_PAGE = 100
TURNS = 20
AGENT = "agent_handoff"


def _page(index: int) -> bytes:
    calls = [
        make_call(AGENT, index * CALLS_PER_PAGE + k, turns=TURNS, deployment_id=f"dep_{k % 3}")
        for k in range(CALLS_PER_PAGE)
    ]
    return json.dumps({"data": calls, "has_more": True, "next_page": calls[-1]["id"]}).encode()


def _best(operation: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        operation()
        best = min(best, time.perf_counter() - started)
    return best


def _whole(pages: list[bytes]) -> None:
    """Today's path for ``pages``, on a fresh state directory."""
    resource = build_resource("bench", "handoff")
    with tempfile.TemporaryDirectory(prefix="otelbridge-bench-handoff-") as tmp:
        state, inbox = open_state(Path(tmp)), open_inbox(Path(tmp))
        processor = Processor(
            state, inbox, Spool(max_bytes=1 << 34, max_age_ns=1 << 62), MappingOptions(),
            lambda spans: encode_traces(spans, resource),
            call_timeout_ns=10**15, retention_ns=10**15,
        )  # fmt: skip
        try:
            for page in pages:
                valid, _ = validate_calls(json.loads(page)["data"], "backfill")
                processor.take_calls(valid, "backfill", [], time.time_ns())
        finally:
            state.close()
            inbox.close()


def _movable(pages: list[bytes]) -> list[list[tuple[Any, ...]]]:
    """What a helper could do for ``pages``, and what it would send back per call."""
    options, resource = MappingOptions(), build_resource("bench", "handoff")
    results = []
    for page in pages:
        back = []
        for raw in json.loads(page)["data"]:
            call = parse_call(raw)
            increment: Increment = call_increment(call, options, (), with_root=True)
            root = increment.root
            assert root is not None
            back.append((
                (call.id, call.agent_id, call.agent_name, call.deployment_id, call.start_time, call.is_final),
                encode_traces(increment.spans, resource),
                [s.span_id for s in increment.spans],
                (root.span_id, root.start_ns, root.end_ns),
                increment.points,
            ))  # fmt: skip
        results.append(back)
    return results


def measure(pages: int, repeats: int) -> dict[str, Any]:
    data = [_page(i) for i in range(pages)]
    _whole(data[:1])  # warm-up: imports, the schema, first calls
    whole = _best(lambda: _whole(data), repeats) / pages
    movable = _best(lambda: _movable(data), repeats) / pages
    back = _movable(data)
    dumps = _best(lambda: [pickle.dumps(b, protocol=pickle.HIGHEST_PROTOCOL) for b in back], repeats) / pages
    pickled = [pickle.dumps(b, protocol=pickle.HIGHEST_PROTOCOL) for b in back]
    loads = _best(lambda: [pickle.loads(p) for p in pickled], repeats) / pages
    helper, main = movable + dumps, whole - movable + loads
    return {
        "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "calls_per_page": CALLS_PER_PAGE,
        "turns": TURNS,
        "page_bytes": len(data[0]),
        "handoff_bytes_per_page": len(pickled[0]),
        "ms_per_page": {
            "whole": round(whole * 1e3, 2),
            "movable": round(movable * 1e3, 2),
            "pickle_dumps": round(dumps * 1e3, 2),
            "pickle_loads": round(loads * 1e3, 2),
            "helper": round(helper * 1e3, 2),
            "main": round(main * 1e3, 2),
        },
        "movable_share": round(movable / whole, 3),
        "split_speedup_at_best": round(whole / max(helper, main), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.pages, args.repeats)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    ms = result["ms_per_page"]
    print(
        f"machine: {result['machine']}; pages of {result['calls_per_page']} calls x {result['turns']} "
        f"turns, {result['page_bytes']:,} B of JSON; hand-off {result['handoff_bytes_per_page']:,} B a page"
    )
    for name in ("whole", "movable", "pickle_dumps", "pickle_loads", "helper", "main"):
        print(f"  {name:13s} {ms[name]:8.2f} ms a page")
    print(f"movable share of the whole: {result['movable_share']:.0%}")
    print(f"split across two processes, at best: {result['split_speedup_at_best']:.2f}x the whole")


if __name__ == "__main__":
    main()
