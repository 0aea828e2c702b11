"""The webhook receiver over real HTTP: uvicorn on loopback, httpx (and a raw socket where
httpx cannot send what the test needs), an in-memory Inbox double."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import anyio
import httpx
import pytest

from otelbridge.ingest.receiver import Outcome, StoreUnavailable, build_webhook_app
from tests.support.asgi_server import UvicornThread

PATH = "/webhooks/cartesia"
SECRET = "s3cr3t-current-9f8e7d6c5b4a"
ROTATED = "s3cr3t-previous-0a1b2c3d4e5f"
MAX_BODY = 4096
STORE_TIMEOUT = 0.3
JSON_HEADERS = {"Content-Type": "application/json", "X-Webhook-Secret": SECRET}

# Realistic deliveries (from the documented shapes), with the odd spacing and non-ASCII
# text a real sender produces, so that "stored byte for byte" means something.
CALL_TURN = (
    b'{"type": "call_turn", "call_id": "ac_sid_TrCnxQBnCBunNbA3tNXfDV", '
    b'"agent_id": "agent_CPVNPkNa1Hedcm4pMbXDuC", "webhook_id": "agent_webhook_4pMbXDuC",  '
    b'"timestamp": "2026-11-20T09:02:29.113498115Z", "turn": {"role": "assistant", '
    b'"text": "I can book Thursday at 3pm \xe2\x80\x94 does that work?", '
    b'"start_timestamp": 0.868261, "end_timestamp": 4.378106955814569, '
    b'"text_chunks": [{"text": "I ", "start_timestamp": 0.868261}], '
    b'"tts_ttfb": 0.142096, "end_reason": "call_ended"}}\n'
)
CALL_STARTED = json.dumps(
    {
        "type": "call_started",
        "call_id": "ac_sid_hHWWwd2fnqLrZY8BP3xzfs",
        "agent_id": "agent_CPVNPkNa1Hedcm4pMbXDuC",
        "webhook_id": "agent_webhook_4pMbXDuC",
        "timestamp": "2026-11-20T09:01:23.975778878Z",
        "call": {
            "id": "ac_sid_hHWWwd2fnqLrZY8BP3xzfs",
            "agent_id": "agent_CPVNPkNa1Hedcm4pMbXDuC",
            "start_time": "2026-11-20T09:01:23.975778878Z",
            "status": "started",
            "telephony_params": {"to": "+14155552809", "from": "+16285555082", "direction": "outbound"},
            "transcript": [],
        },
    }
).encode()
LEGACY_COMPLETED = (
    b'{"type": "call_completed", "request_id": "ac_sid_1I2EkxetCZ31PsozUNAWjK", '
    b'"agent_id": "agent_C3J27XDCG2LmlZGEONYlgC", "webhook_id": "agent_webhook_GEONYlgC", '
    b'"body": [{"role": "user", "text": "hi", "start_timestamp": 0.5}], '
    b'"timestamp": "2026-11-20T09:03:17.146043289Z"}'
)
UNKNOWN_TYPE = (
    b'{"type": "call_transferred", "call_id": "ac_sid_E5e32A8Yb3FKaNQyyLaMef", '
    b'"agent_id": "agent_C3J27XDCG2LmlZGEONYlgC", "timestamp": "2026-11-20T09:00:48Z"}'
)
TRANSCRIPT_SECRET = "my card number is 4111"  # transcript text that must never be echoed


def _turn_event(**turn: Any) -> bytes:
    event: dict[str, Any] = {
        "type": "call_turn",
        "call_id": "ac_sid_1",
        "agent_id": "agent_1",
        "webhook_id": "wh_1",
        "timestamp": "2026-11-20T09:02:29Z",
    }
    if turn:
        event["turn"] = turn
    return json.dumps(event).encode()


# --- test doubles --------------------------------------------------------------------------
class FakeInbox:
    """Records appends; can be told to fail, to hang, or to blow up."""

    def __init__(self) -> None:
        self.appended: list[tuple[bytes, str, str]] = []
        self.mode: Literal["ok", "unavailable", "hang", "boom"] = "ok"
        self.cancelled = 0

    def reset(self) -> None:
        self.appended.clear()
        self.mode = "ok"
        self.cancelled = 0

    async def append(self, body: bytes, event_type: str, call_id: str) -> None:
        if self.mode == "unavailable":
            raise StoreUnavailable("disk I/O error on /var/lib/otelbridge/inbox.db")
        if self.mode == "boom":
            raise RuntimeError(f"boom: cannot store {body[:20]!r}")
        if self.mode == "hang":
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                self.cancelled += 1
                raise
        self.appended.append((body, event_type, call_id))


class Outcomes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, Outcome]] = []

    def __call__(self, event_type: str, outcome: Outcome) -> None:
        with self._lock:
            self.calls.append((event_type, outcome))


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inbox() -> FakeInbox:
    return FakeInbox()


@pytest.fixture(scope="module")
def outcomes() -> Outcomes:
    return Outcomes()


@pytest.fixture(scope="module")
def server(inbox: FakeInbox, outcomes: Outcomes) -> Iterator[UvicornThread]:
    app = build_webhook_app(
        inbox=inbox,
        secrets=[SECRET.encode(), ROTATED.encode()],
        max_body_bytes=MAX_BODY,
        on_outcome=outcomes,
        store_timeout=STORE_TIMEOUT,
        log_every=0,  # a line per request, whatever the tests before did (the flood test: below)
    )
    with UvicornThread(app) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_doubles(inbox: FakeInbox, outcomes: Outcomes) -> None:
    inbox.reset()
    outcomes.calls.clear()


@pytest.fixture
def client(server: UvicornThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5.0) as http:
        yield http


def post(client: httpx.Client, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post(PATH, content=body, headers=JSON_HEADERS if headers is None else headers)


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """Check the JSON error shape; return the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert set(payload) == {"error", "message"}
    assert payload["error"] == code
    message = payload["message"]
    assert isinstance(message, str)
    assert message
    assert "\n" not in message
    return message


def raw_http(server: UvicornThread, request: bytes) -> bytes:
    """Send ``request`` as is and read until the server closes the connection."""
    with socket.create_connection((server.host, server.port), timeout=5.0) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


# --- accepted ------------------------------------------------------------------------------
def test_accepted_event_is_stored_byte_for_byte(
    client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes
) -> None:
    response = post(client, CALL_TURN)
    assert response.status_code == 200
    assert response.json() == {"status": "accepted"}
    assert inbox.appended == [(CALL_TURN, "call_turn", "ac_sid_TrCnxQBnCBunNbA3tNXfDV")]
    assert outcomes.calls == [("call_turn", "accepted")]


def test_accepted_call_event_uses_the_call_id(client: httpx.Client, inbox: FakeInbox) -> None:
    assert post(client, CALL_STARTED).json() == {"status": "accepted"}
    assert inbox.appended == [(CALL_STARTED, "call_started", "ac_sid_hHWWwd2fnqLrZY8BP3xzfs")]


def test_legacy_2025_shape_uses_request_id_as_call_id(
    client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes
) -> None:
    response = post(client, LEGACY_COMPLETED)
    assert response.json() == {"status": "accepted"}
    assert inbox.appended == [(LEGACY_COMPLETED, "call_completed", "ac_sid_1I2EkxetCZ31PsozUNAWjK")]
    assert outcomes.calls == [("call_completed", "accepted")]


def test_unknown_event_type_is_acknowledged_and_not_stored(
    client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes
) -> None:
    response = post(client, UNKNOWN_TYPE)
    assert response.status_code == 200
    assert response.json() == {"status": "ignored", "message": "unknown event type 'call_transferred'"}
    assert inbox.appended == []
    # the label stays bounded: unknown types are not metric label values
    assert outcomes.calls == [("unknown", "ignored")]


# --- authentication ------------------------------------------------------------------------
def test_missing_secret_is_401(client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes) -> None:
    response = post(client, CALL_TURN, headers={"Content-Type": "application/json"})
    message = assert_error(response, 401, "unauthorized")
    assert "X-Webhook-Secret" in message
    assert inbox.appended == []
    assert outcomes.calls == [("unknown", "unauthorized")]


def test_wrong_secret_is_401(client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes) -> None:
    headers = {"Content-Type": "application/json", "X-Webhook-Secret": SECRET + "x"}
    assert_error(post(client, CALL_TURN, headers), 401, "unauthorized")
    assert inbox.appended == []
    assert outcomes.calls == [("unknown", "unauthorized")]


def test_second_rotated_secret_is_accepted(client: httpx.Client, inbox: FakeInbox) -> None:
    headers = {"Content-Type": "application/json", "X-Webhook-Secret": ROTATED}
    assert post(client, CALL_TURN, headers).json() == {"status": "accepted"}
    assert len(inbox.appended) == 1


@pytest.mark.parametrize("name", ["x-webhook-secret", "X-WEBHOOK-SECRET", "X-Webhook-Secret"])
def test_secret_header_name_is_case_insensitive(client: httpx.Client, inbox: FakeInbox, name: str) -> None:
    response = post(client, CALL_TURN, {"content-type": "application/json", name: SECRET})
    assert response.json() == {"status": "accepted"}
    assert len(inbox.appended) == 1


def test_secret_never_appears_in_responses_or_logs(
    client: httpx.Client, inbox: FakeInbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    near_miss = SECRET[:-1] + "?"
    answers = [
        post(client, CALL_TURN, {"Content-Type": "application/json", "X-Webhook-Secret": near_miss}),
        post(client, CALL_TURN),
        post(client, b"not json", JSON_HEADERS),
        post(client, CALL_TURN, {"Content-Type": "text/plain", "X-Webhook-Secret": SECRET}),
        post(client, _turn_event(role="user"), JSON_HEADERS),
    ]
    inbox.mode = "boom"
    answers.append(post(client, CALL_TURN))
    assert [a.status_code for a in answers] == [401, 200, 400, 415, 422, 500]
    seen = "\n".join(a.text + repr(dict(a.headers)) for a in answers)
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "otelbridge.receiver" in {r.name for r in caplog.records}
    for secret in (SECRET, ROTATED, near_miss, SECRET[:12]):
        assert secret not in seen
        assert secret not in logged


# --- content type --------------------------------------------------------------------------
def test_text_plain_is_415(client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes) -> None:
    response = post(client, CALL_TURN, {"Content-Type": "text/plain", "X-Webhook-Secret": SECRET})
    message = assert_error(response, 415, "unsupported_media_type")
    assert "text/plain" in message
    assert inbox.appended == []
    assert outcomes.calls == [("unknown", "unsupported_media_type")]


def test_missing_content_type_is_415(client: httpx.Client, inbox: FakeInbox) -> None:
    response = post(client, CALL_TURN, {"X-Webhook-Secret": SECRET})
    assert "content-type" not in response.request.headers
    assert "Content-Type" in assert_error(response, 415, "unsupported_media_type")
    assert inbox.appended == []


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON;charset=UTF-8", "application/cloudevents+json"],
)
def test_json_content_types_with_parameters_are_accepted(
    client: httpx.Client, inbox: FakeInbox, content_type: str
) -> None:
    response = post(client, CALL_TURN, {"Content-Type": content_type, "X-Webhook-Secret": SECRET})
    assert response.json() == {"status": "accepted"}
    assert len(inbox.appended) == 1


def test_non_utf8_charset_is_415(client: httpx.Client) -> None:
    headers = {"Content-Type": "application/json; charset=latin-1", "X-Webhook-Secret": SECRET}
    assert "UTF-8" in assert_error(post(client, CALL_TURN, headers), 415, "unsupported_media_type")


# --- size ----------------------------------------------------------------------------------
def test_body_over_the_limit_by_content_length_is_413(
    client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes
) -> None:
    body = _turn_event(role="user", text="x" * MAX_BODY, start_timestamp=1.0)
    response = post(client, body)
    assert response.request.headers["content-length"] == str(len(body))
    message = assert_error(response, 413, "too_large")
    assert str(MAX_BODY) in message
    assert response.headers["connection"] == "close"
    assert inbox.appended == []
    assert outcomes.calls == [("unknown", "too_large")]


def test_body_over_the_limit_chunked_without_content_length_is_413(
    client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"type": "call_turn", "turn": {"text": "'
        for _ in range(6):
            yield b"y" * 1000

    response = client.post(PATH, content=chunks(), headers=JSON_HEADERS)
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "too_large")
    assert inbox.appended == []
    assert outcomes.calls == [("unknown", "too_large")]


def test_413_by_content_length_is_answered_without_reading_the_body(server: UvicornThread) -> None:
    # Declares a gigabyte and sends none of it: the answer must come anyway.
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"X-Webhook-Secret: {SECRET}\r\nContent-Length: {10**9}\r\n\r\n"
    ).encode()
    answer = raw_http(server, head)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"error":"too_large"' in answer


def test_chunked_body_stops_being_read_at_the_limit(server: UvicornThread) -> None:
    # A chunked body that never ends: the answer must come once the limit is passed.
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"X-Webhook-Secret: {SECRET}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"800\r\n" + b"z" * 0x800 + b"\r\n"
    answer = raw_http(server, head + chunk * 3)  # 6 KiB, no terminating 0-chunk
    assert answer.startswith(b"HTTP/1.1 413 ")


# --- malformed bodies ----------------------------------------------------------------------
def test_body_that_is_not_json_is_400(client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes) -> None:
    response = post(client, f'{{"type": "call_turn", "text": "{TRANSCRIPT_SECRET}"'.encode())
    message = assert_error(response, 400, "bad_request")
    assert "not valid JSON" in message
    assert TRANSCRIPT_SECRET not in response.text
    assert inbox.appended == []
    assert outcomes.calls == [("unknown", "bad_request")]


def test_json_array_is_400_naming_what_it_is(client: httpx.Client, inbox: FakeInbox) -> None:
    response = post(client, b"[" + CALL_TURN + b"]")
    message = assert_error(response, 400, "bad_request")
    assert "array" in message
    assert "object" in message
    assert inbox.appended == []


def test_json_string_is_400_naming_what_it_is(client: httpx.Client) -> None:
    message = assert_error(post(client, b'"call_turn"'), 400, "bad_request")
    assert "string" in message


def test_body_that_is_not_utf8_is_400(client: httpx.Client, inbox: FakeInbox) -> None:
    body = CALL_TURN.replace(b"\xe2\x80\x94", b"\x97")  # the dash in Windows-1252
    response = post(client, body)
    assert "UTF-8" in assert_error(response, 400, "bad_request")
    assert inbox.appended == []


def test_empty_body_is_400(client: httpx.Client) -> None:
    assert "empty" in assert_error(post(client, b""), 400, "bad_request")


# --- schema --------------------------------------------------------------------------------
def test_call_turn_without_turn_is_422_naming_turn(
    client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes
) -> None:
    message = assert_error(post(client, _turn_event()), 422, "invalid")
    assert message.startswith("turn")
    assert inbox.appended == []
    assert outcomes.calls == [("call_turn", "invalid")]


def test_wrong_field_type_is_422_naming_the_field(client: httpx.Client, inbox: FakeInbox) -> None:
    body = _turn_event(role="user", text=TRANSCRIPT_SECRET, start_timestamp=TRANSCRIPT_SECRET)
    response = post(client, body)
    message = assert_error(response, 422, "invalid")
    assert "turn.start_timestamp" in message
    assert TRANSCRIPT_SECRET not in response.text
    assert inbox.appended == []


def test_missing_type_is_422(client: httpx.Client) -> None:
    message = assert_error(post(client, b'{"call_id": "ac_1"}'), 422, "invalid")
    assert message.startswith("type")


# --- routing -------------------------------------------------------------------------------
def test_get_is_405_with_allow_header(client: httpx.Client, outcomes: Outcomes) -> None:
    response = client.get(PATH, headers={"X-Webhook-Secret": SECRET})
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    assert outcomes.calls == [("unknown", "method_not_allowed")]


def test_put_is_405(client: httpx.Client) -> None:
    response = client.put(PATH, content=CALL_TURN, headers=JSON_HEADERS)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize("path", ["/", "/webhooks", "/webhooks/cartesia/", "/webhooks/cartesiaX"])
def test_other_paths_are_404_json(
    client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes, path: str
) -> None:
    response = client.post(path, content=CALL_TURN, headers=JSON_HEADERS)
    assert PATH in assert_error(response, 404, "not_found")
    assert inbox.appended == []
    assert outcomes.calls == [("unknown", "not_found")]


# --- the store -----------------------------------------------------------------------------
def test_store_unavailable_is_503_with_retry_after(
    client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="otelbridge.receiver")
    inbox.mode = "unavailable"
    response = post(client, CALL_TURN)
    assert_error(response, 503, "unavailable")
    assert response.headers["retry-after"] == "5"
    assert "disk I/O error" not in response.text  # internals stay in the log
    assert "disk I/O error" in caplog.text
    assert outcomes.calls == [("call_turn", "unavailable")]


def test_store_that_hangs_is_503_after_store_timeout(
    client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes
) -> None:
    inbox.mode = "hang"
    response = post(client, CALL_TURN)
    assert_error(response, 503, "unavailable")
    assert response.headers["retry-after"] == "5"
    assert STORE_TIMEOUT <= response.elapsed.total_seconds() < STORE_TIMEOUT + 3
    assert inbox.cancelled == 1
    assert outcomes.calls == [("call_turn", "unavailable")]


def test_unexpected_error_is_500_json_without_traceback(
    client: httpx.Client, inbox: FakeInbox, outcomes: Outcomes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="otelbridge.receiver")
    inbox.mode = "boom"
    response = post(client, CALL_TURN)
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "message": "internal error; see otelbridge's log"}
    for leak in ("Traceback", "boom", "RuntimeError", "call_turn"):
        assert leak not in response.text
    (record,) = [r for r in caplog.records if r.name == "otelbridge.receiver"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert "Traceback" in caplog.text
    assert outcomes.calls == [("call_turn", "error")]


# --- observability -------------------------------------------------------------------------
def test_on_outcome_is_called_once_per_request_with_the_right_labels(
    client: httpx.Client, outcomes: Outcomes
) -> None:
    statuses = [
        post(client, CALL_TURN).status_code,
        post(client, LEGACY_COMPLETED).status_code,
        post(client, UNKNOWN_TYPE).status_code,
        post(client, CALL_TURN, {"Content-Type": "application/json"}).status_code,
        post(client, CALL_TURN, {"X-Webhook-Secret": SECRET}).status_code,
        post(client, b"[]").status_code,
        post(client, _turn_event()).status_code,
        client.get(PATH).status_code,
        client.post("/nope", content=CALL_TURN, headers=JSON_HEADERS).status_code,
    ]
    assert statuses == [200, 200, 200, 401, 415, 400, 422, 405, 404]
    assert outcomes.calls == [
        ("call_turn", "accepted"),
        ("call_completed", "accepted"),
        ("unknown", "ignored"),
        ("unknown", "unauthorized"),
        ("unknown", "unsupported_media_type"),
        ("unknown", "bad_request"),
        ("call_turn", "invalid"),
        ("unknown", "method_not_allowed"),
        ("unknown", "not_found"),
    ]


def test_one_log_line_per_rejected_request_debug_for_accepted(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="otelbridge.receiver")
    post(client, CALL_TURN)
    post(client, CALL_TURN, {"Content-Type": "application/json"})
    post(client, _turn_event(role="user", text=TRANSCRIPT_SECRET, start_timestamp="x"))
    records = [r for r in caplog.records if r.name == "otelbridge.receiver"]
    assert [(r.levelno, r.getMessage().split(" (")[0]) for r in records] == [
        (logging.DEBUG, "webhook accepted"),
        (logging.WARNING, "webhook unauthorized"),
        (logging.WARNING, "webhook invalid"),
    ]
    assert "ac_sid_TrCnxQBnCBunNbA3tNXfDV" in records[0].getMessage()
    assert "turn.start_timestamp" in records[2].getMessage()
    assert TRANSCRIPT_SECRET not in caplog.text
    assert "book Thursday" not in caplog.text


# --- unauthenticated mode and construction -------------------------------------------------
def test_unauthenticated_mode_accepts_without_the_header() -> None:
    inbox = FakeInbox()
    app = build_webhook_app(inbox=inbox, secrets=[], max_body_bytes=MAX_BODY)
    with UvicornThread(app) as server:
        response = httpx.post(
            server.url + PATH, content=CALL_TURN, headers={"Content-Type": "application/json"}
        )
    assert response.json() == {"status": "accepted"}
    assert inbox.appended == [(CALL_TURN, "call_turn", "ac_sid_TrCnxQBnCBunNbA3tNXfDV")]


def test_empty_secret_is_refused_at_build_time() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        build_webhook_app(inbox=FakeInbox(), secrets=[b"ok", b""], max_body_bytes=MAX_BODY)


# --- log flooding (issue 19) ---------------------------------------------------------------
# The counted line's period (a minute in production). The 31 requests below must fit in half
# of it: they took 0.26 s on a loaded CI machine, so 2.5 s leaves a wide margin.
FLOOD_EVERY = 2.5
FLOOD_N = 5  # bad requests of each kind


def _sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def test_repeated_refusals_are_one_line_each_then_one_counted_line_per_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="otelbridge.receiver")
    outcomes = Outcomes()
    app = build_webhook_app(
        inbox=FakeInbox(),
        secrets=[SECRET.encode()],
        max_body_bytes=MAX_BODY,
        on_outcome=outcomes,
        log_every=FLOOD_EVERY,
    )
    near_miss = SECRET[:-1] + "?"
    kinds: dict[str, tuple[str, bytes, dict[str, str]]] = {
        "unauthorized (401)": (
            PATH,
            CALL_TURN,
            {"Content-Type": "application/json", "X-Webhook-Secret": near_miss},
        ),
        "bad_request (400)": (
            PATH,
            b'{"type": "call_turn", "note": "' + TRANSCRIPT_SECRET.encode(),
            JSON_HEADERS,
        ),
        "not_found (404)": ("/admin", CALL_TURN, JSON_HEADERS),
        "unsupported_media_type (415)": (PATH, CALL_TURN, {**JSON_HEADERS, "Content-Type": "text/plain"}),
        "invalid (422)": (
            PATH,
            _turn_event(role="user", text=TRANSCRIPT_SECRET, start_timestamp="x"),
            JSON_HEADERS,
        ),
        "too_large (413)": (PATH, b"{" + b" " * MAX_BODY + b"}", JSON_HEADERS),
    }
    with UvicornThread(app) as server, httpx.Client(base_url=server.url, timeout=5.0) as http:
        started = time.monotonic()
        for kind, (path, body, headers) in kinds.items():
            status = int(kind[-4:-1])
            for _ in range(FLOOD_N):
                assert http.post(path, content=body, headers=headers).status_code == status
        http.get(PATH)  # 405, once
        sent_in = time.monotonic() - started
        assert sent_in < FLOOD_EVERY / 2, f"too slow to test one period: {sent_in:.2f} s"
        immediate = [r.getMessage() for r in caplog.records if r.name == "otelbridge.receiver"]
        # Every kind began within half a period of `started`, so all counted lines are out by
        # 1.5 periods; the 401s' next period (nothing in it) has ended by 2.2.
        _sleep_until(started + FLOOD_EVERY * 1.5)
        after_period = [r.getMessage() for r in caplog.records if r.name == "otelbridge.receiver"]
        _sleep_until(started + FLOOD_EVERY * 2.2)  # a quiet period: logged at once again
        assert (
            http.post(PATH, content=CALL_TURN, headers={"Content-Type": "application/json"}).status_code
            == 401
        )
        final = [r.getMessage() for r in caplog.records if r.name == "otelbridge.receiver"]

    # the metric still counts every request
    expected = [
        ("call_turn" if kind == "invalid (422)" else "unknown", kind.split()[0])
        for kind in kinds
        for _ in range(FLOOD_N)
    ]
    assert outcomes.calls == [*expected, ("unknown", "method_not_allowed"), ("unknown", "unauthorized")]

    # at once: one line per kind (the first), the 405 too, naming the client
    assert len(immediate) == len(kinds) + 1, immediate
    for kind in kinds:
        (line,) = [m for m in immediate if m.startswith(f"webhook {kind} ")]
        assert "from 127.0.0.1: " in line
    assert any(m.startswith("webhook method_not_allowed (405) ") for m in immediate)
    # after the period: one counted line per kind that repeated, naming the first client
    counted = after_period[len(immediate) :]
    assert sorted(counted) == sorted(
        f"webhook {kind}: {FLOOD_N - 1} more in the last {FLOOD_EVERY:g} s, the first from 127.0.0.1"
        for kind in kinds
    )
    # a quiet period resets: the next 401 is a line of its own, at once
    (again,) = final[len(after_period) :]
    assert again.startswith(
        "webhook unauthorized (401) type=unknown from 127.0.0.1: missing X-Webhook-Secret"
    )
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    for leak in (SECRET, near_miss, SECRET[:12], TRANSCRIPT_SECRET, "book Thursday"):
        assert leak not in logged
