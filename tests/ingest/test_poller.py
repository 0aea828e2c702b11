"""The poller against the stand-in API (real HTTP on loopback) and real SQLite files."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from otelbridge.cartesia.client import CartesiaClient
from otelbridge.cartesia.models import parse_call, parse_evaluation
from otelbridge.delivery.spool import Spool
from otelbridge.ingest.poller import Poller, Stored, take_calls
from otelbridge.ingest.processor import BatchResult, Processor, load_unexported_points
from otelbridge.mapping import conventions as c
from otelbridge.mapping import ids, map_call
from otelbridge.mapping.policy import MappingOptions
from otelbridge.mapping.records import SpanRecord
from otelbridge.store import PollWatermark, open_inbox, open_state
from otelbridge.store.sqlite import SqliteInboxStore, SqliteState
from tests.support.cartesia_api import CartesiaStandIn, make_call
from tests.support.inbox_events import store_events
from tests.support.samples import sample_calls, webhook_events
from tests.support.sdk_reference import build_resource, encode_trace_request, to_readable_spans

LIST = "/agents/calls"
RESOURCE = build_resource("test", "i-1")
#: more than any test stores: a read of it takes every inbox row, a take every spooled request
EVERYTHING = 1 << 62


@pytest.fixture(scope="module")
def api() -> Iterator[CartesiaStandIn]:
    with CartesiaStandIn() as stand_in:
        yield stand_in


@pytest.fixture(autouse=True)
def _reset(api: CartesiaStandIn) -> None:
    api.reset()


class World:
    def __init__(
        self, api: CartesiaStandIn, state_dir: Path, agent_ids: list[str], *, direct: bool = False
    ) -> None:
        """``direct``: pages go straight through the processor (as the lease holder's poller
        stores them), not into the inbox."""
        self.api = api
        self.direct = direct
        self.taken: list[BatchResult] = []
        self.state: SqliteState = open_state(state_dir)
        self.inbox: SqliteInboxStore = open_inbox(state_dir)
        self.agent_ids = agent_ids
        self.processor = Processor(
            self.state,
            self.inbox,
            Spool(max_bytes=1 << 30, max_age_ns=1 << 62),
            MappingOptions(),
            lambda spans: bytes(encode_trace_request(to_readable_spans(spans, RESOURCE)).SerializeToString()),
            call_timeout_ns=3600 * 10**9,
            retention_ns=86400 * 10**9,
        )

    def poll(self, *, evaluations: bool = False, give_up_s: float = 3600) -> Poller:
        async def main() -> Poller:
            async with CartesiaClient(
                api_key=self.api.api_key, base_url=self.api.url, initial_backoff_s=0.01
            ) as c:
                poller = Poller(
                    c, self.state, self.inbox, agent_ids=self.agent_ids, interval_s=60, concurrency=4,
                    refresh_s=600, give_up_ns=int(give_up_s * 1e9), evaluations=evaluations,
                    store=self._take if self.direct else None,
                )  # fmt: skip
                await poller.poll_once()
                return poller

        return anyio.run(main)

    async def _take(
        self, raws: Sequence[dict[str, Any]], source: str, remember_running: bool, now_ns: int
    ) -> Stored:
        stored, result = take_calls(self.processor, raws, source, remember_running, now_ns)
        self.taken.append(result)
        return stored

    def inbox_events(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.inbox.read_after(0, EVERYTHING, EVERYTHING)]

    def process(self) -> None:
        while self.processor.process_batch().events:
            pass

    def put(self, *events: dict[str, Any]) -> None:
        store_events(self.inbox, events)

    def exported(self) -> Counter[int]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        with self.state.reading() as tx:
            bodies = [e.body for e in tx.spool_take("traces", EVERYTHING)]
        counts: Counter[int] = Counter()
        for body in bodies:
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        counts[int.from_bytes(span.span_id, "big")] += 1
        return counts

    def latencies(self) -> dict[int, float]:
        """Span id -> ``cartesia.turn.response_latency`` of every exported span that has one."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        with self.state.reading() as tx:
            bodies = [e.body for e in tx.spool_take("traces", EVERYTHING)]
        out: dict[int, float] = {}
        for body in bodies:
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        for kv in span.attributes:
                            if kv.key == c.TURN_RESPONSE_LATENCY:
                                out[int.from_bytes(span.span_id, "big")] = kv.value.double_value
        return out

    def close(self) -> None:
        self.state.close()
        self.inbox.close()


@pytest.fixture
def world(api: CartesiaStandIn, tmp_path: Path) -> Iterator[World]:
    w = World(api, tmp_path / "state", ["agent_a"])
    yield w
    w.close()


def _expected(calls: list[dict[str, Any]]) -> set[int]:
    spans: list[SpanRecord] = []
    for raw in calls:
        spans += map_call(parse_call(raw)).spans
    return {s.span_id for s in spans}


def test_first_poll_pages_to_the_end_then_one_request_per_interval(
    world: World, api: CartesiaStandIn
) -> None:
    api.add_synthetic_calls("agent_a", 250, turns=3)
    world.poll()
    assert api.count(LIST) == math.ceil(250 / 100)
    events = world.inbox_events()
    assert len(events) == 250 and {e["type"] for e in events} == {"call_completed"}
    assert {e["source"] for e in events} == {"poll"}
    world.poll()
    assert api.count(LIST) == 3 + 1  # steady state: one request
    assert len(world.inbox_events()) == 250


def test_exactly_one_page_and_an_empty_agent(world: World, api: CartesiaStandIn) -> None:
    api.add_synthetic_calls("agent_a", 100, turns=2)
    world.agent_ids.append("agent_empty")
    world.poll()
    assert len(world.inbox_events()) == 100
    assert api.count(LIST) == 2  # one page each


def test_new_calls_are_found_and_old_ones_not_reread(world: World, api: CartesiaStandIn) -> None:
    api.add_synthetic_calls("agent_a", 120, turns=2)
    world.poll()
    api.add_synthetic_calls("agent_a", 5, first_index=120, turns=2)
    before = api.count(LIST)
    world.poll()
    assert api.count(LIST) - before == 1
    assert len(world.inbox_events()) == 125


def test_a_watermark_call_that_vanished_does_not_make_the_poller_page_to_the_end(
    world: World, api: CartesiaStandIn
) -> None:
    call_ids = api.add_synthetic_calls("agent_a", 300, turns=2)
    world.poll()
    api.remove_call(call_ids[-1])  # the newest call, the watermark, is gone
    api.add_synthetic_calls("agent_a", 3, first_index=300, turns=2)
    before = api.count(LIST)
    world.poll()
    assert api.count(LIST) - before == 1  # stopped at the first older call, not after 3 pages
    assert len(world.inbox_events()) == 303


def test_calls_added_while_paging_are_caught_next_time(world: World, api: CartesiaStandIn) -> None:
    api.add_synthetic_calls("agent_a", 250, turns=2)
    added: list[str] = []

    def add_once(_: object) -> None:
        if not added:
            added.extend(api.add_synthetic_calls("agent_a", 2, first_index=1000, turns=2))

    api.on_page(add_once)
    world.poll()
    assert len(world.inbox_events()) == 250  # the two new ones are newer than the first page
    world.poll()
    got = {e["call_id"] for e in world.inbox_events()}
    assert set(added) <= got and len(got) == 252


def test_running_calls_are_reread_until_final(world: World, api: CartesiaStandIn) -> None:
    running = make_call("agent_a", 1, turns=2, status="started")
    api.add_call(running)
    world.poll()
    assert [e["type"] for e in world.inbox_events()] == ["call_started"]
    world.poll()  # still running: re-read, nothing new stored
    assert api.count(f"{LIST}/{running['id']}") == 2
    assert len(world.inbox_events()) == 1
    api.update_call(
        running["id"], status="completed", end_time="2026-03-02T09:30:00Z", end_reason="agent_hangup"
    )
    world.poll()
    assert [e["type"] for e in world.inbox_events()] == ["call_started", "call_completed"]
    world.poll()
    assert api.count(f"{LIST}/{running['id']}") == 3  # final: no longer re-read


def test_pages_taken_directly_export_each_call_once_with_no_inbox_row(
    api: CartesiaStandIn, tmp_path: Path
) -> None:
    call_ids = api.add_synthetic_calls("agent_a", 250, turns=3)
    w = World(api, tmp_path / "state", ["agent_a"], direct=True)
    w.poll()
    assert w.inbox.depth(0) == 0  # validated once, processed at once: nothing went through the inbox
    assert [r.events for r in w.taken] == [100, 100, 50]
    assert sum(r.events_by_type["call_completed"] for r in w.taken) == 250
    counts = w.exported()
    assert set(counts.values()) == {1}
    assert set(counts) == _expected([api.get(i) for i in call_ids])
    # the metric points were stored with the spans, in order, a row per transaction
    stored = load_unexported_points(w.state)
    assert [p for _, p in stored] == [p for r in w.taken for _, p in r.points]
    ids = [i for i, _ in stored]
    assert ids == sorted(ids) and len(set(ids)) == len(w.taken) == 3
    w.poll()  # nothing new: nothing more exported
    assert w.exported() == counts
    w.close()


def test_a_running_call_taken_directly_is_kept_then_completed_once(
    api: CartesiaStandIn, tmp_path: Path
) -> None:
    running = make_call("agent_a", 1, turns=2, status="started")
    api.add_call(running)
    w = World(api, tmp_path / "state", ["agent_a"], direct=True)
    w.poll()
    with w.state.reading() as tx:
        assert [r.call_id for r in tx.running_calls()] == [running["id"]]
        assert tx.open_calls() == 1  # kept, waiting for its end
    before = w.exported()
    root = ids.span_id(running["id"], ids.root_key())
    assert before and set(before.values()) == {1} and root not in before  # its turns, at once
    api.update_call(
        running["id"], status="completed", end_time="2026-03-02T09:30:00Z", end_reason="agent_hangup"
    )
    w.poll()
    counts = w.exported()
    assert set(counts.values()) == {1}
    assert set(counts) == _expected([api.get(running["id"])])
    with w.state.reading() as tx:
        assert tx.running_calls() == []
        assert tx.open_calls() == 0
    assert w.inbox.depth(0) == 0
    w.close()


def test_running_calls_are_given_up(world: World, api: CartesiaStandIn) -> None:
    api.add_call(make_call("agent_a", 1, turns=2, status="started"))
    world.poll(give_up_s=0)
    with world.state.reading() as tx:
        assert tx.running_calls() == []


def test_401_stops_that_agent_with_a_reason(world: World, api: CartesiaStandIn) -> None:
    api.add_synthetic_calls("agent_a", 3, turns=2)
    api.fail_next(1, status=401, path=LIST)
    poller = world.poll()
    status = poller.statuses["agent_a"]
    assert status.stopped and "401" in status.stopped
    assert world.inbox_events() == []


def test_agents_are_discovered_when_none_is_configured(api: CartesiaStandIn, tmp_path: Path) -> None:
    api.add_synthetic_calls("agent_x", 2, turns=2)
    api.add_synthetic_calls("agent_y", 3, turns=2)
    w = World(api, tmp_path / "state", [])
    w.poll()
    assert Counter(e["agent_id"] for e in w.inbox_events()) == {"agent_x": 2, "agent_y": 3}
    w.close()


def test_server_errors_are_retried_and_the_watermark_waits_for_success(
    world: World, api: CartesiaStandIn
) -> None:
    api.add_synthetic_calls("agent_a", 150, turns=2)
    api.fail_next(10, status=503, path=LIST)  # more than one poll's retries (7 attempts)
    poller = world.poll()
    assert poller.statuses["agent_a"].last_error and "503" in poller.statuses["agent_a"].last_error
    with world.state.reading() as tx:
        assert tx.poll_watermark("agent_a") == PollWatermark(None, None)  # no watermark yet
    world.poll()
    assert len({e["call_id"] for e in world.inbox_events()}) == 150


# --- convergence with webhooks -------------------------------------------------------------------
def _sample() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    calls = sample_calls()
    events = webhook_events()
    return calls, events


@pytest.mark.parametrize("direct", [False, True], ids=["inbox", "direct"])
@pytest.mark.parametrize("order", ["webhooks_first", "poll_first", "interleaved"])
def test_webhooks_and_polling_give_each_span_once(
    api: CartesiaStandIn, tmp_path: Path, order: str, direct: bool
) -> None:
    calls, events = _sample()
    api.add_calls(calls)
    agents = sorted({c["agent_id"] for c in calls})
    w = World(api, tmp_path / "state", agents, direct=direct)
    if order == "webhooks_first":
        w.put(*events)
        w.process()
        w.poll()
    elif order == "poll_first":
        w.poll()
        w.process()
        w.put(*events)
    else:
        w.put(*events[: len(events) // 2])
        w.poll()
        w.put(*events[len(events) // 2 :])
    w.process()
    counts = w.exported()
    assert {hex(k): n for k, n in counts.items() if n > 1} == {}
    expected = _expected(calls)
    assert expected <= set(counts)
    w.close()


@pytest.mark.parametrize("direct", [False, True], ids=["inbox", "direct"])
def test_polled_calls_carry_the_response_latencies_and_deployments_of_their_mapping(
    api: CartesiaStandIn, tmp_path: Path, direct: bool
) -> None:
    calls = sample_calls()
    api.add_calls(calls)
    w = World(api, tmp_path / "state", sorted({c["agent_id"] for c in calls}), direct=direct)
    w.poll()
    w.process()
    expected: dict[int, float] = {}
    expected_points: set[tuple[int, float, str]] = set()
    for raw in calls:
        mapped = map_call(parse_call(raw))
        expected |= {
            s.span_id: float(s.attributes[c.TURN_RESPONSE_LATENCY])  # type: ignore[arg-type]
            for s in mapped.spans
            if c.TURN_RESPONSE_LATENCY in s.attributes
        }
        expected_points |= {
            (p.span_id, float(p.value), str(p.attributes[c.DEPLOYMENT_ID]))
            for p in mapped.points
            if p.instrument == c.METRIC_RESPONSE_LATENCY
        }
    assert len(expected) >= 5
    assert w.latencies() == expected
    stored = {
        (p.span_id, float(p.value), str(p.attributes[c.DEPLOYMENT_ID]))
        for _, p in load_unexported_points(w.state)
        if p.instrument == c.METRIC_RESPONSE_LATENCY
    }
    assert stored == expected_points
    assert {d for _, _, d in stored} == {call["deployment_id"] for call in calls if call.get("deployment_id")}
    w.close()


def test_evaluations_become_spans_once(world: World, api: CartesiaStandIn) -> None:
    from tests.support.cartesia_api import make_metric_result

    call = make_call("agent_a", 1, turns=2)
    api.add_call(call)
    api.add_metric_results(
        [make_metric_result(call, "resolved", value=1), make_metric_result(call, "polite", value=0.5)]
    )
    world.poll(evaluations=True)
    world.poll(evaluations=True)  # the same results again (start_date is inclusive)
    names = Counter(e["type"] for e in world.inbox_events())
    assert names["otelbridge.evaluation"] >= 2
    world.process()
    counts = world.exported()
    assert all(n == 1 for n in counts.values())
    assert len(counts) == len(_expected([call])) + 2


def _completed(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Final calls as the poller stores them in the inbox."""
    return [{"type": "call_completed", "call_id": call["id"], "agent_id": call["agent_id"], "call": call,
             "source": "poll"} for call in calls]  # fmt: skip


def _evaluation_event(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation as the poller stores it in the inbox."""
    return {"type": "otelbridge.evaluation", "call_id": result["callId"], "agent_id": result["agentId"],
            "evaluation": result}  # fmt: skip


def test_an_evaluation_beyond_a_float_is_skipped_alone(world: World) -> None:
    """An integer value no float holds (JSON allows it) made every batch fail, for good: it is
    invalid now, and a row stored before is skipped while the events after it go on."""
    from tests.support.cartesia_api import make_metric_result

    first, second = make_call("agent_a", 1, turns=2), make_call("agent_a", 2, turns=2)
    huge = make_metric_result(first, "resolved", value=10**400)
    with pytest.raises(ValidationError, match="an evaluation value must be a number a 64-bit float can hold"):
        parse_evaluation(huge)
    world.put(_evaluation_event(huge), *_completed([second]))
    world.process()
    assert world.inbox.processed_through() == 2  # both rows processed, not stuck on the first
    assert len(world.exported()) == len(_expected([second]))


def test_an_evaluation_whose_processing_fails_is_skipped_alone(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in an evaluation's mapping skips that event, as one in a webhook's does: the
    evaluations ran outside the isolation every other event has, and failed every batch."""
    from otelbridge.ingest import processor as processor_module
    from tests.support.cartesia_api import make_metric_result

    first, second = make_call("agent_a", 1, turns=2), make_call("agent_a", 2, turns=2)

    def broken(*_: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(processor_module, "map_evaluation", broken)
    world.put(_evaluation_event(make_metric_result(first, "resolved", value=1)), *_completed([second]))
    results = []
    while (result := world.processor.process_batch()).events:
        results.append(result)
    assert sum(r.failed_events for r in results) == 1
    assert len(world.exported()) == len(_expected([second]))
