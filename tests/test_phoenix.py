"""End to end with Arize Phoenix: the real ``otelbridge replay`` exports the sample calls over
OTLP/HTTP to a real Phoenix server, and every assertion is on what Phoenix's own API returns.

Phoenix (``pip install arize-phoenix``; .ci/run installs it) runs as a subprocess on free ports
of 127.0.0.1 with a working directory (its SQLite database) of its own, and nothing of it
listens beyond loopback: ``PHOENIX_HOST`` binds its web port (the UI, the REST and GraphQL APIs
and the OTLP/HTTP receiver at ``/v1/traces``), but its OTLP/gRPC receiver binds ``[::]`` whatever
``PHOENIX_HOST`` says, and no variable turns it off; so the launcher below moves that one bind
to 127.0.0.1, and the first test checks every socket the server listens on. Phoenix's reaching
out to the internet (telemetry, the assistant's docs server, the sandbox download) is turned off.

What is checked, through the REST API (``/v1/projects/{project}/spans``, ``…/sessions``) and
GraphQL (``getProjectSessionById``: a session's first input and last output, which REST does
not return): every span the mapping makes is there, in its trace, under its parent, with the
span kind, input and output of docs/conventions.md section 10; each call is a session with the
call's first words and summary; re-exporting the same calls changes nothing.

Marked ``phoenix`` (deselected by default; ``pytest -m phoenix``). Skipped without Phoenix,
except when ``TEST_REQUIRE_PHOENIX=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from otelbridge.cartesia.models import AgentCall, parse_call
from otelbridge.cartesia.webhooks import parse_webhook_event
from otelbridge.ingest.assembly import CallAssembler
from otelbridge.ingest.files import RecordKind, read_records
from otelbridge.mapping import MappedCall, map_call
from otelbridge.mapping.records import SpanRecord
from tests.support.samples import WEBHOOKS
from tests.support.serve_process import clean_env, free_port, run_cli

pytestmark = pytest.mark.phoenix

# arize-phoenix brings arize-phoenix-client, whose pytest plugin (entry point "phoenix") takes
# the tests marked ``phoenix`` for its own: it would record them as an experiment in whatever
# Phoenix listens on localhost:6006. Its tracking is off for this session (it reads this
# variable after collection); .ci/run also runs these tests with ``-p no:phoenix``.
os.environ["PHOENIX_TEST_TRACKING"] = "false"

REQUIRE_ENV = "TEST_REQUIRE_PHOENIX"
NOT_INSTALLED = "Arize Phoenix is not installed (pip install arize-phoenix); .ci/run installs it"

TESTDATA = Path(__file__).resolve().parent / "testdata"
#: the sample calls: the saved calls of tests/testdata (not their *.otlp.json goldens) and the
#: webhook stream of examples/
SAMPLES = [*sorted(p for p in TESTDATA.glob("*.json") if not p.name.endswith(".otlp.json")), WEBHOOKS]
#: the Phoenix project the calls go to, named by the resource attribute Phoenix routes by
PROJECT = "otelbridge-e2e"

STARTUP_TIMEOUT_S = 90.0  # its first start creates the database (migrations): ~10 s here
STOP_TIMEOUT_S = 20.0
INGEST_TIMEOUT_S = 30.0  # Phoenix answers an export first and stores its spans in the background
REPLAY_TIMEOUT_S = 60.0

#: run as ``python -c``: Phoenix's ``phoenix serve``, with its OTLP/gRPC receiver bound to
#: 127.0.0.1 instead of ``[::]`` (Phoenix 20 binds it with ``grpc.aio.server().add_insecure_port``
#: on ``[::]:PHOENIX_GRPC_PORT`` and has no setting for that address)
LAUNCHER = """
import sys

import grpc.aio

_server = grpc.aio.server


def _loopback_server(*args, **kwargs):
    server = _server(*args, **kwargs)
    add_insecure_port = server.add_insecure_port
    server.add_insecure_port = lambda address: add_insecure_port(address.replace("[::]:", "127.0.0.1:", 1))
    return server


grpc.aio.server = _loopback_server
from phoenix.server.main import main

sys.argv = ["phoenix", "serve"]
main()
"""

SESSION_QUERY = """
query ($sessionId: String!) {
  getProjectSessionById(sessionId: $sessionId) {
    sessionId
    numTraces
    userId
    project { name }
    firstInput { value }
    lastOutput { value }
  }
}
"""


# --- what the mapping makes of the samples ------------------------------------------------------
def map_samples(paths: list[Path]) -> dict[str, MappedCall]:
    """call id -> the call mapped as ``replay`` maps it (docs/commands.md, "otelbridge replay"): webhook
    events assembled per call; a saved call as it is, or merged with the streamed one when the
    call is in both (as ``empty_transcript.json`` and the webhook stream are)."""
    saved: dict[str, AgentCall] = {}
    assembler = CallAssembler()
    for path in paths:
        _, records = read_records(path)
        for record in records:
            assert record.error is None, (path, record.label, record.error)
            if record.kind is RecordKind.CALL:
                call = parse_call(record.payload)
                assert call.id not in saved, f"{call.id} is saved twice in the samples"
                saved[call.id] = call
            else:
                assembler.add(parse_webhook_event(record.payload))
    streamed = {a.call.id: a for a in assembler.calls()}
    mapped = {i: map_call(a.call, fallback_end_ns=a.fallback_end_ns) for i, a in streamed.items()}
    for call_id, call in saved.items():
        if call_id in streamed:
            both = streamed[call_id]
            mapped[call_id] = map_call(call.merged_with(both.call), fallback_end_ns=both.fallback_end_ns)
        else:
            mapped[call_id] = map_call(call)
    return mapped


def hex_id(span_id: int) -> str:
    return f"{span_id:016x}"


def trace_hex(call: MappedCall) -> str:
    return f"{call.trace_id:032x}"


def root_of(call: MappedCall) -> SpanRecord:
    root = call.root
    assert root is not None, call.call_id
    return root


def is_turn(name: str) -> bool:
    return name in ("user_turn", "assistant_turn") or name.startswith("turn ")


def documented_kind(span: SpanRecord) -> str:
    """``openinference.span.kind`` as docs/conventions.md section 10 gives it, by span."""
    if span.is_root:
        return "AGENT"
    if is_turn(span.name) or span.name == "call_analysis":
        return "CHAIN"
    assert span.name.startswith("execute_tool "), span.name
    return "TOOL"


def flatten(value: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A JSON object as dotted keys, as Phoenix shows the ``metadata`` attribute it parsed."""
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, Mapping):
            flat |= flatten(item, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = item
    return flat


# --- the Phoenix server -------------------------------------------------------------------------
def require_phoenix() -> str:
    """The installed Phoenix's version; skips (fails in CI) when it is not installed."""
    if importlib.util.find_spec("phoenix") is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(NOT_INSTALLED)
        pytest.skip(NOT_INSTALLED)
    return importlib.metadata.version("arize-phoenix")


def _pids_of_group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _address(hex_address: str) -> str:
    """An address of /proc/net/{tcp,tcp6,udp,udp6} (32-bit words in host order) as text."""
    raw = b"".join(bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8))
    return str(ipaddress.ip_address(raw))


def listening_sockets(pid: int) -> set[tuple[str, str, int]]:
    """(protocol, address, port) of every TCP socket listening and every UDP socket bound in
    the process group ``pid`` leads (Linux /proc)."""
    inodes: set[str] = set()
    net_dirs: set[Path] = set()
    for member in _pids_of_group(pid):
        fd_dir = Path(f"/proc/{member}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        net_dirs.add(Path(f"/proc/{member}/net"))
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found: set[tuple[str, str, int]] = set()
    for net in net_dirs:
        for table in ("tcp", "tcp6", "udp", "udp6"):
            for line in (net / table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                # TCP 0A is LISTEN; UDP 07 is an unconnected (receiving) socket
                if inode in inodes and state == ("0A" if table.startswith("tcp") else "07"):
                    address, port = local.split(":")
                    found.add((table.rstrip("6"), _address(address), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


class PhoenixServer:
    """``phoenix serve`` (through :data:`LAUNCHER`) in its own process group, its output in
    files of ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.grpc_port = free_port()
        while self.grpc_port == self.port:
            self.grpc_port = free_port()
        env = {k: v for k, v in clean_env().items() if not k.startswith("PHOENIX_")}
        self.env = env | {
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_WORKING_DIR": str(workdir / "phoenix"),  # its SQLite database
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
            "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
            "PHOENIX_ENABLE_MCP_SERVER": "false",
            "PHOENIX_LOG_MIGRATIONS": "false",
        }
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout_path = workdir / "phoenix.stdout"
        self.stderr_path = workdir / "phoenix.stderr"
        self._files: list[IO[bytes]] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def log_tail(self, lines: int = 40) -> str:
        text = (
            self.stderr_path.read_text(encoding="utf-8", errors="replace")
            if self.stderr_path.exists()
            else ""
        )
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        self._files = [self.stdout_path.open("wb"), self.stderr_path.open("wb")]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER],
            env=self.env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._files[0],
            stderr=self._files[1],
            start_new_session=True,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"Phoenix exited ({self.proc.returncode}) while starting:\n{self.log_tail()}")
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"Phoenix was not ready within {STARTUP_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
                time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # uvicorn shuts down on SIGTERM
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT_S)
        for f in self._files:
            f.close()


@dataclass
class Phoenix:
    version: str
    server: PhoenixServer
    client: httpx.Client
    workdir: Path
    #: call id -> what the mapping makes of it (what the first replay exported)
    calls: dict[str, MappedCall]

    def replay(self, paths: list[Path], extra: Mapping[str, str] | None = None) -> str:
        """``otelbridge replay PATHS`` to this Phoenix over OTLP/HTTP, traces only; its summary
        line (on stderr)."""
        env = clean_env(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": self.server.url,  # + /v1/traces
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_METRICS_EXPORTER": "none",  # Phoenix takes traces only
                "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={PROJECT}",
                "OTELBRIDGE_STATE_DIR": str(self.workdir / "otelbridge-state"),
                **(extra or {}),
            }
        )
        result = run_cli(["replay", *map(str, paths)], env, self.workdir, timeout=REPLAY_TIMEOUT_S)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result.stderr

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        response = self.client.get(path, params=params)
        assert response.status_code == 200, (path, response.status_code, response.text)
        body: dict[str, Any] = response.json()
        return body

    def paged(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paginated REST list (``data`` and ``next_cursor``)."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = self.get(path, **params, **({"cursor": cursor} if cursor else {}))
            items += page["data"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items

    def spans(self) -> dict[str, dict[str, Any]]:
        """Phoenix's spans of the project, by OpenTelemetry span id (none before the project
        exists: Phoenix creates it with its first span)."""
        if self.client.get(f"/v1/projects/{PROJECT}").status_code == 404:
            return {}
        stored = self.paged(f"/v1/projects/{PROJECT}/spans", limit=1000)
        by_id = {s["context"]["span_id"]: s for s in stored}
        assert len(by_id) == len(stored), "Phoenix lists a span twice"
        return by_id

    def wait_for_spans(self, span_ids: set[str]) -> dict[str, dict[str, Any]]:
        """The project's spans once all of ``span_ids`` are stored (bounded wait)."""
        deadline = time.monotonic() + INGEST_TIMEOUT_S
        while True:
            stored = self.spans()
            if span_ids <= set(stored):
                return stored
            if time.monotonic() > deadline:
                missing = len(span_ids - set(stored))
                pytest.fail(
                    f"{missing} of {len(span_ids)} spans not in Phoenix after {INGEST_TIMEOUT_S:.0f} s:\n"
                    + self.server.log_tail()
                )
            time.sleep(0.25)

    def session(self, session_id: str) -> dict[str, Any] | None:
        response = self.client.post(
            "/graphql", json={"query": SESSION_QUERY, "variables": {"sessionId": session_id}}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body["errors"]
        session: dict[str, Any] | None = body["data"]["getProjectSessionById"]
        return session


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    """A Phoenix server on loopback with the samples replayed into it, stopped at the end."""
    version = require_phoenix()
    workdir = tmp_path_factory.mktemp("phoenix")
    server = PhoenixServer(workdir)
    try:
        server.start()
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            yield Phoenix(version, server, client, workdir, map_samples(SAMPLES))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stored(phoenix: Phoenix) -> dict[str, dict[str, Any]]:
    """What Phoenix stored of one replay of the samples, by span id."""
    calls = phoenix.calls
    summary = phoenix.replay(SAMPLES)
    spans = sum(len(c.spans) for c in calls.values())
    assert f": {len(calls)} calls, {spans} spans to {phoenix.server.url}/v1/traces, " in summary, summary
    return phoenix.wait_for_spans({hex_id(s.span_id) for c in calls.values() for s in c.spans})


# --- the tests ----------------------------------------------------------------------------------
def test_nothing_of_phoenix_listens_beyond_loopback(phoenix: Phoenix) -> None:
    assert phoenix.server.proc is not None
    sockets = listening_sockets(phoenix.server.proc.pid)
    assert ("tcp", "127.0.0.1", phoenix.server.port) in sockets, sockets  # UI, APIs, OTLP/HTTP
    assert any(port == phoenix.server.grpc_port for _, _, port in sockets), sockets  # OTLP/gRPC
    beyond = {s for s in sockets if not is_loopback(s[1])}
    assert not beyond, f"Phoenix {phoenix.version} listens beyond loopback (see LAUNCHER): {sorted(beyond)}"


def test_every_span_of_every_call_is_stored_in_its_trace(
    phoenix: Phoenix, stored: dict[str, dict[str, Any]]
) -> None:
    calls = phoenix.calls
    assert len(calls) == 21  # 9 saved calls of tests/testdata, 12 streamed in examples/
    expected = {hex_id(s.span_id): (c, s) for c in calls.values() for s in c.spans}
    assert set(stored) == set(expected)  # nothing missing, nothing else in the project
    for span_id, (call, span) in expected.items():
        got = stored[span_id]
        assert got["name"] == span.name
        assert got["context"]["trace_id"] == trace_hex(call)
        assert got["parent_id"] == (None if span.parent_span_id is None else hex_id(span.parent_span_id))
    by_trace: dict[str, int] = {}
    for got in stored.values():
        by_trace[got["context"]["trace_id"]] = by_trace.get(got["context"]["trace_id"], 0) + 1
    assert by_trace == {trace_hex(c): len(c.spans) for c in calls.values()}


def test_span_kinds_are_as_documented(phoenix: Phoenix, stored: dict[str, dict[str, Any]]) -> None:
    kinds: dict[str, int] = {}
    for call in phoenix.calls.values():
        for span in call.spans:
            kind = stored[hex_id(span.span_id)]["span_kind"]
            assert kind == documented_kind(span) == span.attributes["openinference.span.kind"], span.name
            kinds[kind] = kinds.get(kind, 0) + 1
    assert set(kinds) == {"AGENT", "CHAIN", "TOOL"}
    assert kinds["AGENT"] == len(phoenix.calls)


def test_every_turn_has_its_words_as_input_or_output(
    phoenix: Phoenix, stored: dict[str, dict[str, Any]]
) -> None:
    turns = 0
    for call in phoenix.calls.values():
        for span in call.spans:
            if not is_turn(span.name):
                continue
            turns += 1
            attributes = stored[hex_id(span.span_id)]["attributes"]
            side = "input" if span.name == "user_turn" else "output"  # the caller's words; the agent's
            assert attributes.get(f"{side}.value"), (call.call_id, span.name, attributes)
            assert attributes[f"{side}.value"] == span.attributes[f"{side}.value"]
            assert attributes[f"{side}.mime_type"] == "text/plain"
            assert f"{'output' if side == 'input' else 'input'}.value" not in attributes
    assert turns > 100


def test_inputs_and_outputs_are_those_of_the_mapping(
    phoenix: Phoenix, stored: dict[str, dict[str, Any]]
) -> None:
    """Every span, tools included (arguments as JSON in, result out)."""
    keys = ("input.value", "input.mime_type", "output.value", "output.mime_type")
    tools = 0
    for call in phoenix.calls.values():
        for span in call.spans:
            attributes = stored[hex_id(span.span_id)]["attributes"]
            assert {k: attributes.get(k) for k in keys} == {k: span.attributes.get(k) for k in keys}
            if span.name.startswith("execute_tool "):
                tools += 1
                assert attributes["input.mime_type"] == "application/json"
                json.loads(attributes["input.value"])
    assert tools > 0


def test_the_root_of_a_call_with_a_summary_has_its_first_words_and_its_summary(
    phoenix: Phoenix, stored: dict[str, dict[str, Any]]
) -> None:
    summarized = 0
    for call in phoenix.calls.values():
        root = root_of(call)
        attributes = stored[hex_id(root.span_id)]["attributes"]
        summary = root.attributes.get("cartesia.call.summary")
        if not summary:
            assert "output.value" not in attributes
            continue
        summarized += 1
        assert attributes["output.value"] == summary
        assert attributes["input.value"], call.call_id
        assert attributes["input.value"] == root.attributes["input.value"]
    assert summarized >= 10


def test_the_root_carries_session_user_and_metadata(
    phoenix: Phoenix, stored: dict[str, dict[str, Any]]
) -> None:
    with_user = with_metadata = 0
    for call in phoenix.calls.values():
        root = root_of(call)
        attributes = stored[hex_id(root.span_id)]["attributes"]
        assert attributes["session.id"] == call.call_id
        assert attributes.get("user.id") == root.attributes.get("user.id")
        with_user += "user.id" in attributes
        # Phoenix parses the metadata JSON: the UI shows it as an object, the API as dotted keys
        metadata = root.attributes.get("metadata")
        got = {k: v for k, v in attributes.items() if k.startswith("metadata.")}
        assert got == (flatten(json.loads(str(metadata)), "metadata.") if metadata else {})
        with_metadata += bool(metadata)
    assert with_user > 0
    assert with_metadata > 0


def test_each_call_is_a_session_with_its_first_input_and_last_output(
    phoenix: Phoenix, stored: dict[str, dict[str, Any]]
) -> None:
    sessions = phoenix.paged(f"/v1/projects/{PROJECT}/sessions", limit=100)
    assert {s["session_id"] for s in sessions} == set(phoenix.calls)
    for listed in sessions:
        call = phoenix.calls[listed["session_id"]]
        assert [t["trace_id"] for t in listed["traces"]] == [trace_hex(call)]
    for call_id, call in phoenix.calls.items():
        root = root_of(call).attributes
        session = phoenix.session(call_id)
        assert session is not None, call_id
        assert session["sessionId"] == call_id
        assert session["project"]["name"] == PROJECT
        assert session["numTraces"] == 1
        assert session["userId"] == root.get("user.id")
        first, last = session["firstInput"], session["lastOutput"]
        assert (first and first["value"]) == root.get("input.value"), call_id
        assert (last and last["value"]) == root.get("output.value"), call_id


def test_exporting_the_same_calls_again_changes_nothing(
    phoenix: Phoenix, stored: dict[str, dict[str, Any]]
) -> None:
    """Phoenix keeps the first copy of a span id and ignores later ones, even when they differ:
    the samples again, this time without any text (OTELBRIDGE_TRANSCRIPT_TEXT=drop), leave the
    stored spans as they were. A new call sent after them shows they were all processed."""
    phoenix.replay(SAMPLES, {"OTELBRIDGE_TRANSCRIPT_TEXT": "drop"})
    sentinel = json.loads((TESTDATA / "tools_with_results.json").read_text(encoding="utf-8"))
    sentinel["id"] = "ac_sid_PhoenixSentinel0000000001"
    sentinel_path = phoenix.workdir / "sentinel.json"
    sentinel_path.write_text(json.dumps(sentinel), encoding="utf-8")
    phoenix.replay([sentinel_path])
    sentinel_ids = {hex_id(s.span_id) for s in map_samples([sentinel_path])[sentinel["id"]].spans}

    after = phoenix.wait_for_spans(set(stored) | sentinel_ids)
    assert set(after) == set(stored) | sentinel_ids
    for span_id, before in stored.items():
        assert after[span_id] == before  # the first copy, its words included
