"""CartesiaClient against the stand-in API over real HTTP on loopback."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import random
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from otelbridge import __version__
from otelbridge.cartesia.client import (
    DEFAULT_BASE_URL,
    DEFAULT_VERSION,
    CallsPage,
    CartesiaAuthError,
    CartesiaClient,
    CartesiaError,
    CartesiaUnavailable,
    parse_retry_after,
)
from otelbridge.cartesia.models import parse_call
from tests.support.cartesia_api import (
    CartesiaStandIn,
    make_call,
    make_metric_result,
)
from tests.support.samples import sample_calls

AGENT = "agent_client_A"
KEY = "sk_car_client_test_key_0123456789"


@pytest.fixture(scope="module")
def server() -> Iterator[CartesiaStandIn]:
    with CartesiaStandIn(api_key=KEY) as api:
        yield api


@pytest.fixture
def api(server: CartesiaStandIn) -> Iterator[CartesiaStandIn]:
    server.reset()
    yield server
    server.reset()


class Sleeps:
    """The ``sleep`` seam: records each delay instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def run(api: CartesiaStandIn, body: Callable[[CartesiaClient], Awaitable[None]], **options: Any) -> None:
    """Run ``body`` with a client of the stand-in (recorded sleeps, seeded jitter)."""
    options.setdefault("sleep", Sleeps())
    options.setdefault("rng", random.Random(7))
    options.setdefault("api_key", KEY)

    async def main() -> None:
        async with CartesiaClient(base_url=api.url, **options) as client:
            await body(client)

    anyio.run(main)


def expect_error(
    api: CartesiaStandIn, call: Callable[[CartesiaClient], Awaitable[object]], **options: Any
) -> CartesiaError:
    caught: list[CartesiaError] = []

    async def body(client: CartesiaClient) -> None:
        with pytest.raises(CartesiaError) as info:
            await call(client)
        caught.append(info.value)

    run(api, body, **options)
    return caught[0]


# --- requests -------------------------------------------------------------------------------
def test_headers_and_query(api: CartesiaStandIn) -> None:
    api.add_call(make_call(AGENT, 0, turns=2))

    async def body(client: CartesiaClient) -> None:
        page = await client.list_calls(AGENT)
        assert len(page.calls) == 1
        assert len(page.calls[0]["transcript"]) == 3

    run(api, body)
    (request,) = api.requests
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["cartesia-version"] == DEFAULT_VERSION == "2026-03-01"
    assert request.headers["user-agent"] == f"otelbridge/{__version__}"
    assert request.query == {"agent_id": AGENT, "limit": "100", "expand": "transcript"}
    assert DEFAULT_BASE_URL == "https://api.cartesia.ai"


def test_without_transcript(api: CartesiaStandIn) -> None:
    api.add_synthetic_calls(AGENT, 3, turns=2)

    async def body(client: CartesiaClient) -> None:
        page = await client.list_calls(AGENT, limit=2, expand_transcript=False)
        assert all("transcript" not in call for call in page.calls)
        assert page.next_page == page.calls[-1]["id"]

    run(api, body)
    assert api.requests[0].query == {"agent_id": AGENT, "limit": "2"}


@pytest.mark.parametrize(("count", "sizes"), [(100, [100]), (101, [100, 1]), (250, [100, 100, 50])])
def test_paging_through_every_call(api: CartesiaStandIn, count: int, sizes: list[int]) -> None:
    ids = api.add_synthetic_calls(AGENT, count, turns=1)
    pages: list[CallsPage] = []

    async def body(client: CartesiaClient) -> None:
        cursor: str | None = None
        while True:
            page = await client.list_calls(AGENT, starting_after=cursor)
            pages.append(page)
            cursor = page.next_page
            if cursor is None:
                return

    run(api, body)
    assert [len(p.calls) for p in pages] == sizes
    assert [c["id"] for p in pages for c in p.calls] == ids[::-1]  # newest first, each once
    assert [r.query.get("starting_after") for r in api.requests] == [None, *(p.next_page for p in pages[:-1])]


def test_empty_agent(api: CartesiaStandIn) -> None:
    async def body(client: CartesiaClient) -> None:
        assert await client.list_calls("agent_without_calls") == CallsPage(calls=[], next_page=None)

    run(api, body)


def test_sample_calls_round_trip(api: CartesiaStandIn) -> None:
    calls = sample_calls()
    api.add_calls(calls)

    async def body(client: CartesiaClient) -> None:
        for agent_id in sorted({c["agent_id"] for c in calls}):
            page = await client.list_calls(agent_id)
            assert page.calls == [c for c in calls if c["agent_id"] == agent_id]
            for raw in page.calls:
                assert parse_call(raw).id == raw["id"]

    run(api, body)


def test_get_call(api: CartesiaStandIn) -> None:
    call = make_call(AGENT, 3, turns=4, status="started")
    api.add_call(call)

    async def body(client: CartesiaClient) -> None:
        assert await client.get_call(call["id"]) == call

    run(api, body)
    error = expect_error(api, lambda c: c.get_call("ac_sid_missing"))
    assert type(error) is CartesiaError
    assert (error.status, error.path, error.error_code) == (404, "/agents/calls/ac_sid_missing", "not_found")
    assert api.count("/agents/calls/ac_sid_missing") == 1  # a 404 is not retried


def test_get_call_quotes_the_id(api: CartesiaStandIn) -> None:
    error = expect_error(api, lambda c: c.get_call("a/b?c"))
    assert error.status == 404
    assert "call 'a/b?c' not found" in error.message  # one path segment, no query
    assert api.requests[-1].query == {}


# --- retries --------------------------------------------------------------------------------
def test_429_retry_after_is_honoured(api: CartesiaStandIn) -> None:
    api.add_synthetic_calls(AGENT, 2, turns=0)
    api.fail_next(1, status=429, retry_after=7)
    sleeps = Sleeps()
    stats: list[Any] = []

    async def body(client: CartesiaClient) -> None:
        page = await client.list_calls(AGENT)
        assert len(page.calls) == 2
        stats.append(client.stats)

    run(api, body, sleep=sleeps)
    assert sleeps.delays == [7.0]
    assert stats[0].requests == 2
    assert stats[0].retries == 1
    assert dict(stats[0].statuses) == {429: 1, 200: 1}


def test_a_retry_after_of_zero_still_backs_off(api: CartesiaStandIn) -> None:
    api.fail_next(2, status=503, retry_after=0)
    sleeps = Sleeps()

    async def body(client: CartesiaClient) -> None:
        await client.list_agents()

    run(api, body, sleep=sleeps, initial_backoff_s=1.0, max_backoff_s=3.0)
    assert 0.5 <= sleeps.delays[0] <= 1.0 and 1.0 <= sleeps.delays[1] <= 2.0  # not at once


def test_retry_after_http_date_and_cap(api: CartesiaStandIn) -> None:
    soon = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30), usegmt=True)
    api.fail_next(1, status=429, retry_after=soon)
    api.fail_next(1, status=503, retry_after=86400)
    sleeps = Sleeps()

    async def body(client: CartesiaClient) -> None:
        await client.list_agents()

    run(api, body, sleep=sleeps)
    assert 25 <= sleeps.delays[0] <= 30
    assert sleeps.delays[1] == 300.0


def test_5xx_retried_with_exponential_equal_jitter(api: CartesiaStandIn) -> None:
    api.fail_next(1, status=500)
    api.fail_next(1, status=502)
    api.fail_next(1, status=503)
    sleeps = Sleeps()

    async def body(client: CartesiaClient) -> None:
        assert await client.list_agents() == []

    run(api, body, sleep=sleeps, initial_backoff_s=1.0, max_backoff_s=3.0)
    assert len(sleeps.delays) == 3
    for delay, ceiling in zip(sleeps.delays, [1.0, 2.0, 3.0], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert api.count("/agents") == 4


def test_retries_exhausted(api: CartesiaStandIn) -> None:
    api.fail_next(10, status=503)
    error = expect_error(api, lambda c: c.list_calls(AGENT), max_retries=3)
    assert isinstance(error, CartesiaUnavailable)
    assert error.status == 503
    assert error.path == "/agents/calls"
    assert error.request_id is not None
    assert str(error).startswith("GET /agents/calls: gave up after 4 attempts: HTTP 503 service_unavailable")
    assert api.count("/agents/calls") == 4


def test_timeout_then_success(api: CartesiaStandIn) -> None:
    api.add_synthetic_calls(AGENT, 1, turns=0)
    api.hang_next(1, 2.0)
    sleeps = Sleeps()

    async def body(client: CartesiaClient) -> None:
        assert len((await client.list_calls(AGENT)).calls) == 1

    run(api, body, sleep=sleeps, timeout_s=0.2)
    assert len(sleeps.delays) == 1
    assert api.count("/agents/calls") == 2


def test_timeout_exhausted(api: CartesiaStandIn) -> None:
    api.hang_next(2, 2.0)
    error = expect_error(api, lambda c: c.list_calls(AGENT), timeout_s=0.2, max_retries=1)
    assert isinstance(error, CartesiaUnavailable)
    assert error.status is None
    assert "gave up after 2 attempts: timed out after 0.2 s" in str(error)


def test_connection_refused() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = Sleeps()
    errors: list[CartesiaError] = []

    async def main() -> None:
        client = CartesiaClient(api_key=KEY, base_url=f"http://127.0.0.1:{port}", max_retries=2, sleep=sleeps)
        async with client:
            with pytest.raises(CartesiaUnavailable) as info:
                await client.list_agents()
            errors.append(info.value)
            assert client.stats.requests == 3
            assert not client.stats.statuses

    anyio.run(main)
    assert "connection error" in str(errors[0])
    assert errors[0].status is None
    assert len(sleeps.delays) == 2


# --- errors that are not retried ------------------------------------------------------------
def test_401_is_an_auth_error_without_retry(api: CartesiaStandIn) -> None:
    sleeps = Sleeps()
    error = expect_error(api, lambda c: c.list_calls(AGENT), api_key="sk_wrong_key_abcdef", sleep=sleeps)
    assert isinstance(error, CartesiaAuthError)
    assert error.status == 401
    assert error.error_code == "unauthorized"
    assert "invalid API key" in error.message
    assert api.count("/agents/calls") == 1
    assert sleeps.delays == []


def test_403_is_an_auth_error(api: CartesiaStandIn) -> None:
    api.forbidden_agents.add(AGENT)
    error = expect_error(api, lambda c: c.list_calls(AGENT))
    assert isinstance(error, CartesiaAuthError)
    assert error.status == 403


def test_400_message_from_json(api: CartesiaStandIn) -> None:
    error = expect_error(api, lambda c: c.list_calls(AGENT, limit=0))
    assert type(error) is CartesiaError
    assert error.status == 400
    assert error.error_code == "invalid_request"
    assert error.request_id is not None and error.request_id.startswith("req_")
    assert error.message == (
        f"GET /agents/calls: HTTP 400 invalid_request: limit must be between 1 and 100, got 0 "
        f"(request_id {error.request_id})"
    )
    assert api.count("/agents/calls") == 1


@pytest.mark.parametrize("how", ["old version", "plain text mode"])
def test_400_message_from_plain_text(api: CartesiaStandIn, how: str) -> None:
    options: dict[str, Any] = {}
    if how == "old version":
        options["version"] = "2025-11-04"
    else:
        api.plain_text_errors = True
    error = expect_error(api, lambda c: c.list_calls(AGENT, limit=101), **options)
    assert type(error) is CartesiaError
    assert error.message == "GET /agents/calls: HTTP 400: limit must be between 1 and 100, got 101"
    assert (error.status, error.error_code, error.request_id) == (400, None, None)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        ('{"error": "quota exceeded for this month"}', "application/json", "HTTP 400: quota exceeded"),
        (
            '{"message": "bad agent", "request_id": "r-9"}',
            "application/json",
            "HTTP 400: bad agent (request_id r-9)",
        ),
        ('{"error": {"message": "nested", "code": "E42"}}', "application/json", "HTTP 400 E42: nested"),
        ('{"detail": "Not allowed"}', "application/json", "HTTP 400: Not allowed"),
        ("<html><title>Bad</title><body>line\nbreak</body></html>", "text/html", "HTTP 400: Bad line break"),
        ("x" * 500, "text/plain", "HTTP 400: " + "x" * 199 + "…"),
        ("", "text/plain", "HTTP 400 Bad Request"),
    ],
)
def test_error_bodies_of_every_shape(
    api: CartesiaStandIn, body: str, content_type: str, expected: str
) -> None:
    api.answer_next(1, status=400, body=body, content_type=content_type)
    error = expect_error(api, lambda c: c.list_agents())
    assert error.message.startswith(f"GET /agents: {expected}")
    assert "\n" not in error.message


# --- answers of the wrong shape -------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"data": [', "the answer is not valid JSON (Expecting value at byte 10; application/json)"),
        ("", "HTTP 200 with an empty body, expected JSON"),
        ('{"data": "calls"}', "'data' is not an array (got a string)"),
        ('{"calls": []}', "the answer has no 'data'"),
        ("[]", "the answer is an array, not an object"),
        ('{"data": [{"id": "a"}, 3]}', "'data[1]' is a number, not an object"),
        ('{"data": [], "next_page": 5}', "'next_page' is a number, not a string or null"),
        ("[" * 100_000 + "]" * 100_000, "the answer is JSON nested too deeply"),
    ],
)
def test_malformed_list_answers(api: CartesiaStandIn, body: str, expected: str) -> None:
    api.answer_next(1, body=body)
    error = expect_error(api, lambda c: c.list_calls(AGENT))
    assert type(error) is CartesiaError
    assert error.message == f"GET /agents/calls: {expected}"
    assert api.count("/agents/calls") == 1


def test_malformed_call_and_agents(api: CartesiaStandIn) -> None:
    api.answer_next(1, body="[1]", path="/agents/calls/ac_1")
    assert expect_error(api, lambda c: c.get_call("ac_1")).message == (
        "GET /agents/calls/ac_1: the answer is an array, not a call object"
    )
    api.answer_next(1, body='{"summaries": {}}')
    assert (
        expect_error(api, lambda c: c.list_agents()).message
        == "GET /agents: 'summaries' is an object, not an array"
    )
    api.answer_next(1, body='{"agents": []}')
    assert "neither 'summaries' nor 'data'" in expect_error(api, lambda c: c.list_agents()).message


# --- the API key stays secret ---------------------------------------------------------------
def test_api_key_never_in_messages_or_reprs(api: CartesiaStandIn) -> None:
    api.answer_next(
        1, status=400, body=f'{{"message": "key {KEY} is not valid here", "request_id": "{KEY}"}}'
    )
    error = expect_error(api, lambda c: c.list_agents())
    api.answer_next(1, status=500, body=f"upstream said: Bearer {KEY}", content_type="text/plain")
    unavailable = expect_error(api, lambda c: c.list_agents(), max_retries=0)
    for text in (
        str(error),
        repr(error),
        error.message,
        str(unavailable),
        repr(unavailable),
        str(error.request_id),
    ):
        assert KEY not in text
    assert "[redacted]" in str(error)
    assert "[redacted]" in str(unavailable)

    async def body(client: CartesiaClient) -> None:
        assert KEY not in repr(client)
        assert KEY not in str(vars(client).get("stats"))
        assert repr(client) == f"CartesiaClient(base_url={api.url!r}, version='2026-03-01')"

    run(api, body)


def test_bad_key_is_refused_without_echo() -> None:
    for key in ("", "   ", "sk_secret\nvalue"):
        with pytest.raises(ValueError, match="API key") as info:
            CartesiaClient(api_key=key)
        assert "secret" not in str(info.value)


# --- agents and metric results --------------------------------------------------------------
def test_list_agents(api: CartesiaStandIn) -> None:
    api.add_call(make_call(AGENT, 0, turns=0, agent_name="Savannah"))

    async def body(client: CartesiaClient) -> None:
        agents = await client.list_agents()
        assert [(a["id"], a["name"]) for a in agents] == [(AGENT, "Savannah")]

    run(api, body)


def test_list_agents_other_shapes_and_paging(api: CartesiaStandIn) -> None:
    api.answer_next(1, body='[{"id": "a1", "name": "one"}]')
    api.answer_next(1, body='{"data": [{"id": "a2"}], "has_more": true, "next_page": "a2"}')
    api.answer_next(1, body='{"data": [{"id": "a3"}], "has_more": false, "next_page": null}')

    async def body(client: CartesiaClient) -> None:
        assert await client.list_agents() == [{"id": "a1", "name": "one"}]
        assert await client.list_agents() == [{"id": "a2"}, {"id": "a3"}]

    run(api, body)
    assert [r.query for r in api.requests] == [{}, {}, {"starting_after": "a2"}]


def test_paging_that_does_not_advance_is_an_error(api: CartesiaStandIn) -> None:
    api.answer_next(3, body='{"data": [{"id": "m1"}], "has_more": true, "next_page": "m1"}')
    error = expect_error(api, lambda c: c.metric_results())
    assert (
        error.message == "GET /agents/metrics/results: paging does not advance ('next_page' 'm1' came twice)"
    )


def test_metric_results_every_page_with_filters(api: CartesiaStandIn) -> None:
    calls = [make_call(AGENT, i, turns=0) for i in range(250)]
    api.add_metric_results(make_metric_result(c) for c in calls)
    api.add_metric_results([make_metric_result(make_call("agent_other", 0, turns=0))])

    async def body(client: CartesiaClient) -> None:
        results = await client.metric_results(agent_id=AGENT)
        assert [r["callId"] for r in results] == [c["id"] for c in calls[::-1]]
        window = await client.metric_results(
            start_date=results[20]["createdAt"], end_date=results[10]["createdAt"]
        )
        assert window == results[10:21]
        assert await client.metric_results(start_date="2030-01-01T00:00:00Z") == []

    run(api, body)
    queries = [r.query for r in api.requests]
    assert queries[0] == {"limit": "100", "agent_id": AGENT}
    assert queries[1]["starting_after"] != queries[2]["starting_after"]
    assert len(queries) == 5  # three pages, the window, the empty range
    assert "start_date" in queries[3] and "end_date" in queries[3]


def test_metric_results_follow_last_id_when_next_page_is_missing(api: CartesiaStandIn) -> None:
    api.answer_next(1, body=json.dumps({"data": [{"id": "r1"}, {"id": "r2"}], "has_more": True}))
    api.answer_next(1, body=json.dumps({"data": [{"id": "r3"}], "has_more": False}))

    async def body(client: CartesiaClient) -> None:
        assert [r["id"] for r in await client.metric_results()] == ["r1", "r2", "r3"]

    run(api, body)
    assert api.requests[1].query["starting_after"] == "r2"


# --- small parts ----------------------------------------------------------------------------
def test_parse_retry_after() -> None:
    now = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("Sun, 01 Mar 2026 12:00:09 GMT", now=now) == 9.0
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now=now) == 0.0
    for bad in (None, "", "-3", "inf", "nan", "soon"):
        assert parse_retry_after(bad) is None


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        CartesiaClient(api_key=KEY, timeout_s=0)
    with pytest.raises(ValueError, match="max_retries"):
        CartesiaClient(api_key=KEY, max_retries=-1)
    with pytest.raises(ValueError, match="Cartesia-Version"):
        CartesiaClient(api_key=KEY, version="2026 03 01")


def test_stats_count_every_attempt(api: CartesiaStandIn) -> None:
    api.fail_next(2, status=502, path="/agents")
    seen: list[Any] = []

    async def body(client: CartesiaClient) -> None:
        await client.list_agents()
        await client.list_calls(AGENT)
        seen.append(client.stats)

    run(api, body)
    assert (seen[0].requests, seen[0].retries, dict(seen[0].statuses)) == (4, 2, {502: 2, 200: 2})


def test_mock_transport_seam() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v/agents/calls/ac_9"
        return httpx.Response(200, json={"id": "ac_9", "agent_id": "a", "status": "completed"})

    async def main() -> None:
        async with CartesiaClient(
            api_key=KEY, base_url="https://example.test/v/", transport=httpx.MockTransport(handler)
        ) as client:
            assert (await client.get_call("ac_9"))["id"] == "ac_9"

    anyio.run(main)


# --- response size cap (issue 19) -------------------------------------------------------------
def _mock_client(handler: Callable[[httpx.Request], httpx.Response], cap: int) -> CartesiaClient:
    return CartesiaClient(
        api_key=KEY, transport=httpx.MockTransport(handler), max_response_bytes=cap, sleep=Sleeps()
    )


def test_a_body_declared_over_the_cap_is_not_read() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"[" + b" " * 5000 + b"]")

    async def main() -> None:
        async with _mock_client(handler, 1000) as client:
            with pytest.raises(CartesiaError) as info:
                await client.get_call("call_big")
        assert str(info.value) == (
            "GET /agents/calls/call_big: HTTP 200 answer larger than 1000 bytes "
            "(the client's cap on a response body); not read"
        )

    anyio.run(main)


def test_a_streamed_body_stops_at_the_cap() -> None:
    pulled: list[int] = []

    async def endless() -> Any:
        yield b'{"data": ['
        while True:
            pulled.append(1)
            yield b'{"id": "c"},' * 10

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())  # chunked: no Content-Length

    async def main() -> None:
        async with _mock_client(handler, 10_000) as client:
            with pytest.raises(CartesiaError, match="larger than 10000 bytes") as info:
                await client.list_calls(AGENT)
        assert not isinstance(info.value, CartesiaUnavailable)  # not retried

    anyio.run(main)
    assert len(pulled) <= 10_000 // 120 + 2  # stopped reading right past the cap


def test_a_body_under_the_cap_is_read() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "call_small"})

    async def main() -> None:
        async with _mock_client(handler, 1000) as client:
            assert await client.get_call("call_small") == {"id": "call_small"}

    anyio.run(main)
