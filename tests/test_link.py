"""otelbridge.link: an agent's own spans in its call's trace, with opentelemetry-api alone."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from packaging.requirements import Requirement

import otelbridge
from otelbridge import link
from otelbridge.cartesia.models import parse_call
from otelbridge.mapping import ids, map_call
from tests.support.samples import LIST_CALLS, sample_calls
from tests.support.sdk_reference import build_resource, encode_trace_request, to_readable_spans

ROOT = Path(__file__).resolve().parents[1]
CALL = "ac_sid_gqkgRWUz2u64qFUjA1mZyr"
ROOT_SPAN = "6393b6c70a47799e"  # docs/conventions.md, "Test vectors"
TRACE_VECTORS = [
    ("ac_sid_gqkgRWUz2u64qFUjA1mZyr", "9dbe86d69dd3f7fa0b0296e7affa4a09"),
    ("MZ4958bfe4940bf0ef6cc92f8c6cfa1a1f", "5d74c682cccadde97cde17707bf38f2c"),
    ("ac_ünïcødé", "976dab2f3de3e45fd068bbb60a63400f"),
]


@pytest.mark.parametrize(("call_id", "expected"), TRACE_VECTORS)
def test_trace_id_vectors(call_id: str, expected: str) -> None:
    assert link.trace_id(call_id) == int(expected, 16)
    assert link.trace_id_hex(call_id) == expected
    assert link.traceparent(call_id).split("-")[1] == expected


def test_root_span_id_vector() -> None:
    assert link.root_span_id(CALL) == int(ROOT_SPAN, 16)
    assert link.root_span_id_hex(CALL) == ROOT_SPAN
    assert link.traceparent(CALL) == f"00-9dbe86d69dd3f7fa0b0296e7affa4a09-{ROOT_SPAN}-01"


@pytest.mark.parametrize(("call_id", "expected"), TRACE_VECTORS)
def test_traceparent_parses_as_the_calls_root(call_id: str, expected: str) -> None:
    value = link.traceparent(call_id)
    extracted = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": value}))
    ctx = extracted.get_span_context()
    assert ctx.is_valid and ctx.is_remote and ctx.trace_flags.sampled
    assert ctx.trace_id == int(expected, 16) == link.trace_id(call_id)
    assert ctx.span_id == link.root_span_id(call_id)
    assert ctx == link.root_span_context(call_id)


@pytest.mark.parametrize(
    ("call_id", "error", "message"),
    [("", ValueError, "call id is empty"), (None, TypeError, "NoneType"), (b"ac_x", TypeError, "bytes")],
)
def test_a_missing_call_id_is_refused(call_id: object, error: type[Exception], message: str) -> None:
    for function in (link.trace_id, link.root_span_id, link.traceparent, link.call_context):
        with pytest.raises(error, match=message):
            function(call_id)  # type: ignore[arg-type]


def test_the_daemons_ids_are_the_same_recipe() -> None:
    # One recipe: ids re-exports link's primitives, and its own helpers agree with link's.
    assert ids.trace_id_bytes is link.trace_id_bytes and ids.span_id is link.span_id
    assert (ids.TRACE_PREFIX, ids.SPAN_PREFIX) == (link.TRACE_PREFIX, link.SPAN_PREFIX)
    for call_id, expected in TRACE_VECTORS:
        assert ids.trace_id(call_id) == link.trace_id(call_id) and ids.trace_id_hex(call_id) == expected
        assert ids.root_span_id(call_id) == link.root_span_id(call_id)
    digest = hashlib.sha256(f"cartesia.span.v1:{CALL}:root".encode()).hexdigest()
    assert digest[:16] == ROOT_SPAN
    # The daemon never refuses an id it was sent (an evaluation's callId may be anything).
    assert ids.trace_id("") == int(hashlib.sha256(b"cartesia.call.v1:").hexdigest()[:32], 16)


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # local: the global provider stays untouched
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _agent_spans(call_id: str) -> tuple[ReadableSpan, ReadableSpan]:
    """What an agent does: a span under the call's context, and one nested in it."""
    provider, exporter = _provider()
    tracer = provider.get_tracer("agent")
    with (
        tracer.start_as_current_span("lookup", context=link.call_context(call_id)),
        tracer.start_as_current_span("http GET"),
    ):
        pass
    provider.shutdown()
    child, grandchild = sorted(exporter.get_finished_spans(), key=lambda s: s.name != "lookup")
    return child, grandchild


@pytest.mark.parametrize(("call_id", "expected"), TRACE_VECTORS)
def test_an_agent_span_nests_under_the_calls_root(call_id: str, expected: str) -> None:
    child, grandchild = _agent_spans(call_id)
    assert child.context is not None and child.parent is not None
    assert child.context.trace_id == int(expected, 16)
    assert child.parent.span_id == link.root_span_id(call_id) and child.parent.is_remote
    assert child.parent.trace_id == child.context.trace_id
    assert child.context.trace_flags.sampled  # the default ParentBased sampler followed the root
    assert grandchild.context is not None and grandchild.parent is not None
    assert grandchild.context.trace_id == child.context.trace_id
    assert grandchild.parent.span_id == child.context.span_id and not grandchild.parent.is_remote


def test_call_context_keeps_the_base_contexts_values() -> None:
    base = baggage.set_baggage("tenant", "acme")
    ctx = link.call_context(CALL, base)
    assert baggage.get_baggage("tenant", ctx) == "acme"
    assert trace.get_current_span(ctx).get_span_context() == link.root_span_context(CALL)
    assert trace.get_current_span(base).get_span_context().is_valid is False  # base unchanged
    # Without a base, it builds on the current context (nothing is attached by call_context).
    assert trace.get_current_span().get_span_context().is_valid is False


@pytest.mark.parametrize(
    "payload",
    [
        max(sample_calls((LIST_CALLS[0],)), key=lambda c: len(c["transcript"] or ())),  # turns and tools
        {
            "id": "ac_ünïcødé",
            "agent_id": "agent_x",
            "status": "completed",
            "start_time": "2026-04-16T01:08:37.413659Z",
            "end_time": "2026-04-16T01:08:50.036327Z",
            "transcript": [
                {"role": "assistant", "text": "Hi", "start_timestamp": 0.41, "end_timestamp": 1.2}
            ],
        },
    ],
    ids=["sample", "unicode"],
)
def test_link_names_the_root_span_the_daemon_exports(payload: dict[str, object]) -> None:
    call = parse_call(payload)
    mapped = map_call(call)
    assert mapped.root is not None
    assert (mapped.root.trace_id, mapped.root.span_id) == (link.trace_id(call.id), link.root_span_id(call.id))
    assert any(s.parent_span_id == link.root_span_id(call.id) for s in mapped.spans)  # the turns

    # On the wire: the daemon's OTLP request and the agent's span, both through the SDK encoder.
    daemon = to_readable_spans(mapped.spans, build_resource("otelbridge", "test"))
    agent, _ = _agent_spans(call.id)
    request = encode_trace_request([*daemon, agent])
    wire = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    (root,) = (s for s in wire if s.parent_span_id == b"")
    assert root.trace_id.hex() == link.trace_id_hex(call.id)
    assert root.span_id.hex() == link.root_span_id_hex(call.id)
    (lookup,) = (s for s in wire if s.name == "lookup")
    assert lookup.trace_id == root.trace_id and lookup.parent_span_id == root.span_id


# --- isolation: opentelemetry-api alone is enough -------------------------------------------------

PROBE = """
import json, sys
import otelbridge.link
print(json.dumps({"traceparent": otelbridge.link.traceparent("ac_x"), "file": otelbridge.link.__file__,
                  "modules": sorted(sys.modules)}))
"""


def _copy_distribution(name: str, site: Path, done: set[str]) -> None:
    """Install one installed distribution (and what it requires) by copying its RECORDed files."""
    dist = importlib.metadata.distribution(name)
    key = dist.metadata["Name"].lower().replace("_", "-")
    if key in done:
        return
    done.add(key)
    files = dist.files
    assert files, f"{name}: no RECORD to copy from"
    for file in files:
        source = Path(str(dist.locate_file(file)))
        target = site / file
        # (a script RECORDed outside site-packages, ../../bin/x, is not needed to import the package)
        if source.is_file() and target.resolve().is_relative_to(site.resolve()):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for requirement in map(Requirement, dist.requires or []):
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            _copy_distribution(requirement.name, site, done)


def _wheel(out: Path) -> Path:
    """This checkout's otelbridge package as a py3-none-any wheel, built with the standard library.

    Not ``pip wheel --no-build-isolation``: setuptools before 70.1 (Python 3.11's venv bundles
    65.5) has no ``bdist_wheel`` without the ``wheel`` package, and with build isolation pip
    would fetch setuptools from an index. The files are the package's, as setuptools packs them.
    """
    version = otelbridge.__version__
    dist_info = f"otelbridge-{version}.dist-info"
    entries: dict[str, bytes] = {}
    package = ROOT / "otelbridge"
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed"):
            entries[path.relative_to(ROOT).as_posix()] = path.read_bytes()
    entries[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: otelbridge\nVersion: {version}\n".encode()
    )
    entries[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: tests/test_link.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for name, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    entries[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = out / f"otelbridge-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return wheel


def test_link_needs_only_opentelemetry_api(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}

    def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            args, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert (done.returncode == 0) is ok, done.stdout + done.stderr
        return done

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    site = Path(
        run(python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    )
    done: set[str] = set()
    _copy_distribution("opentelemetry-api", site, done)
    assert done == {"opentelemetry-api", "typing-extensions"}  # what opentelemetry-api 1.45 requires
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", _wheel(tmp_path))

    # -I: neither the working directory nor PYTHONPATH can lend the checkout's modules.
    probe = json.loads(run(python, "-I", "-c", PROBE).stdout)
    assert probe["traceparent"] == link.traceparent("ac_x")
    assert Path(probe["file"]).is_relative_to(site)
    modules: list[str] = probe["modules"]
    assert "opentelemetry.trace" in modules
    assert [m for m in modules if m.split(".")[0] in ("pydantic", "httpx", "anyio")] == []
    assert [m for m in modules if m == "opentelemetry.sdk" or m.startswith("opentelemetry.sdk.")] == []
    assert [m for m in modules if m.split(".")[0] == "otelbridge"] == ["otelbridge", "otelbridge.link"]
    # The rest of otelbridge is installed there too, and cannot be imported: the test is real.
    assert (
        "No module named 'pydantic'" in run(python, "-I", "-c", "import otelbridge.mapping", ok=False).stderr
    )
