"""The contract of the Cartesia stand-in (tests/support/cartesia_api.py), over real HTTP."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from otelbridge.cartesia.models import parse_call
from otelbridge.cartesia.timestamps import parse_rfc3339_ns
from tests.support.cartesia_api import (
    DEFAULT_API_KEY,
    CartesiaStandIn,
    PageServed,
    make_call,
    make_metric_result,
)
from tests.support.samples import sample_calls

AGENT = "agent_standin_A"
V2026 = "2026-03-01"


@pytest.fixture(scope="module")
def server() -> Iterator[CartesiaStandIn]:
    with CartesiaStandIn() as api:
        yield api


@pytest.fixture
def api(server: CartesiaStandIn) -> Iterator[CartesiaStandIn]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def http(server: CartesiaStandIn) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}", "Cartesia-Version": V2026}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
        yield client


def _page(http: httpx.Client, **params: Any) -> dict[str, Any]:
    response = http.get("/agents/calls", params={"agent_id": AGENT, **params})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _ids(body: dict[str, Any]) -> list[str]:
    return [call["id"] for call in body["data"]]


def _walk(http: httpx.Client, **params: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        extra = {"starting_after": cursor} if cursor else {}
        body = _page(http, **params, **extra)
        pages.append(_ids(body))
        cursor = body["next_page"]
        if cursor is None:
            return pages


# --- auth and version -------------------------------------------------------------------
def test_missing_or_wrong_key_is_401_json(api: CartesiaStandIn, http: httpx.Client) -> None:
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer wrong-key-123"},
        {"Authorization": "Basic x"},
    ):
        response = http.get("/agents/calls", params={"agent_id": AGENT}, headers=headers)
        assert response.status_code == 401
        body = response.json()
        assert set(body) == {"error_code", "title", "message", "request_id"}
        assert body["error_code"] == "unauthorized"
        assert body["request_id"].startswith("req_")
        assert "wrong-key-123" not in response.text


def test_forbidden_agent_is_403(api: CartesiaStandIn, http: httpx.Client) -> None:
    api.add_call(make_call("agent_secret", 0))
    api.forbidden_agents.add("agent_secret")
    response = http.get("/agents/calls", params={"agent_id": "agent_secret"})
    assert response.status_code == 403
    assert response.json()["error_code"] == "forbidden"
    call_id = api.call_ids("agent_secret")[0]
    assert http.get(f"/agents/calls/{call_id}").status_code == 403


def test_version_is_required_and_must_be_known(api: CartesiaStandIn, http: httpx.Client) -> None:
    empty = http.get("/agents/calls", params={"agent_id": AGENT}, headers={"Cartesia-Version": ""})
    assert empty.status_code == 400
    client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"})
    with client:
        response = client.get("/agents/calls", params={"agent_id": AGENT})
        assert response.status_code == 400
        assert "Cartesia-Version" in response.json()["message"]
        unknown = client.get(
            "/agents/calls", params={"agent_id": AGENT}, headers={"Cartesia-Version": "2099-01-01"}
        )
        assert unknown.status_code == 400
        assert "2099-01-01" in unknown.json()["message"]


def test_older_versions_answer_plain_text_errors(api: CartesiaStandIn, http: httpx.Client) -> None:
    response = http.get(
        "/agents/calls", params={"agent_id": AGENT, "limit": 0}, headers={"Cartesia-Version": "2025-11-04"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "limit must be between 1 and 100, got 0"


def test_plain_text_mode_forces_text(api: CartesiaStandIn, http: httpx.Client) -> None:
    api.plain_text_errors = True
    response = http.get("/agents/calls", params={"agent_id": AGENT, "limit": 101})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert "between 1 and 100" in response.text


# --- List Calls parameters ----------------------------------------------------------------
@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten", "1.5"])
def test_limit_outside_1_to_100_is_400(api: CartesiaStandIn, http: httpx.Client, limit: str) -> None:
    response = http.get("/agents/calls", params={"agent_id": AGENT, "limit": limit})
    assert response.status_code == 400
    body = response.json()
    assert body["error_code"] == "invalid_request"
    assert "limit" in body["message"]


def test_default_limit_is_10(api: CartesiaStandIn, http: httpx.Client) -> None:
    api.add_synthetic_calls(AGENT, 15, turns=1)
    body = _page(http)
    assert len(body["data"]) == 10
    assert body["next_page"] == body["data"][-1]["id"]


def test_agent_id_is_required(api: CartesiaStandIn, http: httpx.Client) -> None:
    response = http.get("/agents/calls")
    assert response.status_code == 400
    assert "agent_id" in response.json()["message"]


def test_unknown_agent_is_an_empty_page(api: CartesiaStandIn, http: httpx.Client) -> None:
    assert http.get("/agents/calls", params={"agent_id": "agent_nobody"}).json() == {
        "data": [],
        "next_page": None,
    }


def test_expand_transcript(api: CartesiaStandIn, http: httpx.Client) -> None:
    api.add_call(make_call(AGENT, 0, turns=3))
    bare = _page(http)["data"][0]
    assert "transcript" not in bare
    full = _page(http, expand="transcript")["data"][0]
    assert len(full["transcript"]) == 3 + 2  # 3 turns, a log_metric and a log_event
    assert {k: v for k, v in full.items() if k != "transcript"} == bare
    assert http.get("/agents/calls", params={"agent_id": AGENT, "expand": "audio"}).status_code == 400


# --- paging -------------------------------------------------------------------------------
def test_pages_newest_first_with_starting_after(api: CartesiaStandIn, http: httpx.Client) -> None:
    ids = api.add_synthetic_calls(AGENT, 25, turns=0)
    newest_first = ids[::-1]  # make_call: a higher index is a newer call
    assert api.call_ids(AGENT) == newest_first
    pages = _walk(http, limit=10)
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [i for p in pages for i in p] == newest_first


@pytest.mark.parametrize(
    ("count", "sizes"), [(0, [0]), (1, [1]), (100, [100]), (101, [100, 1]), (250, [100, 100, 50])]
)
def test_next_page_is_null_exactly_when_nothing_remains(
    api: CartesiaStandIn, http: httpx.Client, count: int, sizes: list[int]
) -> None:
    api.add_synthetic_calls(AGENT, count, turns=0)
    assert [len(p) for p in _walk(http, limit=100)] == sizes


def test_ties_in_start_time_break_by_id(api: CartesiaStandIn, http: httpx.Client) -> None:
    start = dt.datetime(2026, 3, 5, 12, 0, tzinfo=dt.UTC)
    ids = api.add_calls(make_call(AGENT, i, turns=0, start=start) for i in range(5))
    api.add_call(make_call(AGENT, 9, turns=0, start=start - dt.timedelta(seconds=1)))
    served = _ids(_page(http, limit=100))
    assert served[:5] == sorted(ids, reverse=True)
    assert served[5] == make_call(AGENT, 9, turns=0)["id"]


def test_ending_before_gives_the_newer_calls(api: CartesiaStandIn, http: httpx.Client) -> None:
    newest_first = api.add_synthetic_calls(AGENT, 25, turns=0)[::-1]
    anchor = newest_first[20]
    body = _page(http, limit=10, ending_before=anchor)
    assert _ids(body) == newest_first[10:20]
    assert body["next_page"] == newest_first[10]  # pass back as ending_before
    body = _page(http, limit=10, ending_before=body["next_page"])
    assert _ids(body) == newest_first[0:10]
    assert body["next_page"] is None
    assert _ids(_page(http, limit=10, ending_before=newest_first[0])) == []


def test_both_cursors_at_once_is_400(api: CartesiaStandIn, http: httpx.Client) -> None:
    ids = api.add_synthetic_calls(AGENT, 3, turns=0)
    params = {"agent_id": AGENT, "starting_after": ids[0], "ending_before": ids[2]}
    assert http.get("/agents/calls", params=params).status_code == 400


def test_unknown_cursor_error_or_empty(api: CartesiaStandIn, http: httpx.Client) -> None:
    api.add_synthetic_calls(AGENT, 3, turns=0)
    other = api.add_call(make_call("agent_other", 0, turns=0))
    for cursor in ("ac_sid_doesnotexist", other):
        response = http.get("/agents/calls", params={"agent_id": AGENT, "starting_after": cursor})
        assert response.status_code == 400
        assert "starting_after" in response.json()["message"]
    api.unknown_cursor = "empty"
    assert _page(http, starting_after="ac_sid_doesnotexist") == {"data": [], "next_page": None}
    assert _page(http, ending_before="ac_sid_doesnotexist") == {"data": [], "next_page": None}


# --- single call, agents, metric results ------------------------------------------------
def test_get_call(api: CartesiaStandIn, http: httpx.Client) -> None:
    call = make_call(AGENT, 4, turns=4)
    api.add_call(call)
    assert http.get(f"/agents/calls/{call['id']}").json() == call
    missing = http.get("/agents/calls/ac_sid_missing")
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "not_found"
    old = http.get("/agents/calls/ac_sid_missing", headers={"Cartesia-Version": "2025-04-16"})
    assert old.status_code == 404
    assert old.headers["content-type"].startswith("text/plain")


def test_unknown_route_is_404(api: CartesiaStandIn, http: httpx.Client) -> None:
    assert http.get("/agents/nothing/here").status_code == 404


def test_agents_summaries(api: CartesiaStandIn, http: httpx.Client) -> None:
    api.add_call(make_call(AGENT, 0, turns=0, agent_name="Savannah"))
    api.add_agent("agent_idle", "Idle agent")
    summaries = http.get("/agents").json()["summaries"]
    assert {(s["id"], s["name"]) for s in summaries} == {(AGENT, "Savannah"), ("agent_idle", "Idle agent")}
    assert all({"created_at", "updated_at", "tts_language", "deployment_count"} <= set(s) for s in summaries)


def test_metric_results_filter_and_page(api: CartesiaStandIn, http: httpx.Client) -> None:
    calls = [make_call(AGENT, i, turns=0) for i in range(30)]
    api.add_metric_results(make_metric_result(c) for c in calls)
    api.add_metric_results([make_metric_result(make_call("agent_other", 0, turns=0))])
    body = http.get("/agents/metrics/results", params={"agent_id": AGENT}).json()
    assert set(body) == {"data", "has_more", "next_page"}
    assert len(body["data"]) == 10
    assert body["has_more"] is True
    assert body["next_page"] == body["data"][-1]["id"]
    first = body["data"][0]
    assert {"callId", "metricName", "value", "result", "status", "createdAt", "agentId", "metricId"} <= set(
        first
    )
    assert first["callId"] == calls[-1]["id"]  # newest first

    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"agent_id": AGENT, "limit": 100 if cursor else 12}
        if cursor:
            params["starting_after"] = cursor
        page = http.get("/agents/metrics/results", params=params).json()
        seen += page["data"]
        cursor = page["next_page"]
        if not page["has_more"]:
            assert cursor is None
            break
    assert len(seen) == 30
    assert len({r["id"] for r in seen}) == 30

    start, end = seen[19]["createdAt"], seen[10]["createdAt"]  # inclusive bounds
    window = http.get(
        "/agents/metrics/results", params={"start_date": start, "end_date": end, "limit": 100}
    ).json()
    assert [r["id"] for r in window["data"]] == [r["id"] for r in seen[10:20]]
    assert parse_rfc3339_ns(start) < parse_rfc3339_ns(end)
    bad = http.get("/agents/metrics/results", params={"start_date": "yesterday"})
    assert bad.status_code == 400


# --- mutations ----------------------------------------------------------------------------
def test_update_call_running_to_completed(api: CartesiaStandIn, http: httpx.Client) -> None:
    call_id = api.add_call(make_call(AGENT, 0, turns=2, status="started"))
    assert _page(http)["data"][0]["end_time"] is None
    api.update_call(call_id, status="completed", end_time="2026-03-02T09:05:00Z")
    served = _page(http, expand="transcript")["data"][0]
    assert (served["status"], served["end_time"]) == ("completed", "2026-03-02T09:05:00Z")
    assert len(served["transcript"]) == 3  # 2 turns and a log_metric
    with pytest.raises(KeyError):
        api.update_call("ac_sid_missing", status="failed")


def test_update_start_time_moves_the_call(api: CartesiaStandIn, http: httpx.Client) -> None:
    ids = api.add_synthetic_calls(AGENT, 3, turns=0)
    api.update_call(ids[0], start_time="2027-01-01T00:00:00Z")
    assert _ids(_page(http)) == [ids[0], ids[2], ids[1]]


def test_remove_call_makes_its_cursor_unknown(api: CartesiaStandIn, http: httpx.Client) -> None:
    newest_first = api.add_synthetic_calls(AGENT, 5, turns=0)[::-1]
    api.remove_call(newest_first[1])
    assert _ids(_page(http)) == [newest_first[0], *newest_first[2:]]
    response = http.get("/agents/calls", params={"agent_id": AGENT, "starting_after": newest_first[1]})
    assert response.status_code == 400
    with pytest.raises(KeyError):
        api.remove_call(newest_first[1])


def test_duplicate_add_is_refused(api: CartesiaStandIn) -> None:
    api.add_call(make_call(AGENT, 0, turns=0))
    with pytest.raises(ValueError, match="already exists"):
        api.add_call(make_call(AGENT, 0, turns=0))


def test_on_page_can_add_calls_while_a_client_pages(api: CartesiaStandIn, http: httpx.Client) -> None:
    old = api.add_synthetic_calls(AGENT, 25, turns=0)
    served: list[PageServed] = []

    def arrive(page: PageServed) -> None:
        served.append(page)
        if page.number == 1:
            api.add_call(make_call(AGENT, 1000, turns=0))  # newer than everything

    api.on_page(arrive)
    pages = _walk(http, limit=10)
    # older pages are unaffected; the new call shows on the next walk from the top
    assert [i for p in pages for i in p] == old[::-1]
    assert [p.number for p in served] == [1, 2, 3]
    assert served[0].ids == pages[0]
    assert served[0].next_page == pages[0][-1]
    assert _ids(_page(http, limit=1)) == [make_call(AGENT, 1000, turns=0)["id"]]


def test_on_page_errors_are_kept(api: CartesiaStandIn, http: httpx.Client) -> None:
    def boom(page: PageServed) -> None:
        raise RuntimeError("boom")

    api.on_page(boom)
    assert _page(http)["data"] == []
    assert [str(e) for e in api.callback_errors] == ["boom"]


# --- faults and records ------------------------------------------------------------------
def test_fail_next_with_retry_after_and_path(api: CartesiaStandIn, http: httpx.Client) -> None:
    api.fail_next(2, status=429, retry_after=3, path="/agents/calls")
    assert http.get("/agents").status_code == 200  # other paths unaffected
    for _ in range(2):
        response = http.get("/agents/calls", params={"agent_id": AGENT})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"
        assert response.json()["error_code"] == "rate_limited"
    assert http.get("/agents/calls", params={"agent_id": AGENT}).status_code == 200


def test_faults_apply_in_order_and_before_auth(api: CartesiaStandIn, http: httpx.Client) -> None:
    api.fail_next(1, status=500)
    api.fail_next(1, status=503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    statuses = [http.get("/agents", headers={"Authorization": "Bearer nope"}).status_code for _ in range(3)]
    assert statuses == [500, 503, 401]


def test_hang_next_answers_late(api: CartesiaStandIn, http: httpx.Client) -> None:
    api.hang_next(2, 0.6)
    for _ in range(2):  # each of the two requests waits
        started = time.monotonic()
        assert http.get("/agents").status_code == 200
        assert time.monotonic() - started >= 0.6
    started = time.monotonic()
    assert http.get("/agents").status_code == 200
    assert time.monotonic() - started < 0.6


def test_answer_next_serves_raw_bodies(api: CartesiaStandIn, http: httpx.Client) -> None:
    api.answer_next(1, body=b'{"data": [', path="/agents/calls")
    response = http.get("/agents/calls", params={"agent_id": AGENT})
    assert (response.status_code, response.content) == (200, b'{"data": [')


def test_requests_are_recorded(api: CartesiaStandIn, http: httpx.Client) -> None:
    _page(http, limit=5, expand="transcript")
    http.get("/agents")
    assert [r.path for r in api.requests] == ["/agents/calls", "/agents"]
    first = api.requests[0]
    assert first.method == "GET"
    assert first.query == {"agent_id": AGENT, "limit": "5", "expand": "transcript"}
    assert first.headers["authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert first.headers["cartesia-version"] == V2026
    assert api.count("/agents/calls") == 1
    assert api.counts["/agents"] == 1


# --- synthetic data -----------------------------------------------------------------------
def test_make_call_is_deterministic_and_valid() -> None:
    call = make_call(AGENT, 7)
    assert call == make_call(AGENT, 7)
    assert call["id"] != make_call(AGENT, 8)["id"] != make_call("agent_B", 7)["id"]
    assert call["id"].startswith("ac_sid_")
    parsed = parse_call(json.loads(json.dumps(call)))
    spoken = [t for t in parsed.transcript if not t.is_system]
    assert len(spoken) == 20
    assert [t.role for t in spoken[:4]] == ["assistant", "user", "assistant", "user"]
    assert all(t.text and t.text_chunks for t in spoken)
    assert all(t.tts_ttfb for t in spoken if t.role == "assistant")
    assert all(t.stt_ttfb and t.vad_buffer_ms for t in spoken if t.role == "user")
    assert any(t.tool_calls for t in spoken)
    assert any(t.log_metric for t in parsed.transcript)
    assert parsed.is_final
    assert parsed.end_time is not None and parsed.start_time is not None
    assert parsed.end_time > parsed.start_time


def test_make_call_running_and_failed() -> None:
    running = parse_call(make_call(AGENT, 1, status="started"))
    assert (running.end_time, running.end_reason, running.is_final) == (None, None, False)
    failed = parse_call(make_call(AGENT, 1, status="failed"))
    assert (failed.end_reason, failed.is_final) == ("error", True)
    assert failed.error_message
    start = dt.datetime(2026, 5, 1, 8, 30, 15, 123456, tzinfo=dt.UTC)
    assert make_call(AGENT, 1, start=start, turns=0)["start_time"] == "2026-05-01T08:30:15.123456000Z"


def test_sample_pages_serve_in_their_own_order(api: CartesiaStandIn, http: httpx.Client) -> None:
    calls = sample_calls()
    assert len(calls) == 12
    api.add_calls(calls)
    for agent_id in {c["agent_id"] for c in calls}:
        body = http.get("/agents/calls", params={"agent_id": agent_id, "expand": "transcript"}).json()
        assert body["data"] == [c for c in calls if c["agent_id"] == agent_id]
        assert body["next_page"] is None


def test_many_calls_page_correctly(api: CartesiaStandIn, http: httpx.Client) -> None:
    ids = api.add_synthetic_calls(AGENT, 1000, turns=20)
    pages = _walk(http, limit=100, expand="transcript")
    assert len(pages) == 10
    assert [i for p in pages for i in p] == ids[::-1]
