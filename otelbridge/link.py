"""Your agent's spans in its call's trace: the call's ids (contract v1, docs/conventions.md §1).

otelbridge exports each call as one trace whose ids are a function of the call id alone, so a
Line agent, which knows its call id, can start its own spans under the call's root span::

    from opentelemetry import trace
    from otelbridge.link import call_context

    with trace.get_tracer("my-agent").start_as_current_span("lookup", context=call_context(call_id)):
        ...

This module stands alone because it runs in the agent's process, not the daemon's: it needs the
standard library and ``opentelemetry-api`` only, and imports no other otelbridge module (those
pull in pydantic, httpx and the OTel SDK). It is also the one home of the id recipe;
:mod:`otelbridge.mapping.ids` builds the daemon's span keys on it.
"""

from __future__ import annotations

import hashlib
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

TRACE_PREFIX: Final = "cartesia.call.v1:"
SPAN_PREFIX: Final = "cartesia.span.v1:"
ROOT_KEY: Final = "root"


# The two primitives below are the recipe itself, shared with the daemon's mapping. They do not
# check the call id: the daemon maps whatever id Cartesia sent. Agent-facing functions do.


def trace_id_bytes(call_id: str) -> bytes:
    """First 16 bytes of SHA-256(UTF-8 ``TRACE_PREFIX + call_id``)."""
    return hashlib.sha256((TRACE_PREFIX + call_id).encode("utf-8")).digest()[:16]


def span_id(call_id: str, key: str) -> int:
    """First 8 bytes of SHA-256(UTF-8 ``SPAN_PREFIX + call_id + ":" + key``), as an integer."""
    digest = hashlib.sha256(f"{SPAN_PREFIX}{call_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _checked(call_id: str) -> str:
    # An empty id (or None from an SDK field that is not there) would silently name a trace no
    # call has; fail where the agent can see it.
    if not isinstance(call_id, str):
        raise TypeError(f"call id must be a str, got {type(call_id).__name__}")
    if not call_id:
        raise ValueError(
            "call id is empty: a Cartesia call id is never empty (is the agent reading the right field?)"
        )
    return call_id


def trace_id(call_id: str) -> int:
    """The call's trace id, as the integer the OTel SDK uses."""
    return int.from_bytes(trace_id_bytes(_checked(call_id)), "big")


def trace_id_hex(call_id: str) -> str:
    """The call's trace id as 32 lowercase hex digits (what backends search by)."""
    return f"{trace_id(call_id):032x}"


def root_span_id(call_id: str) -> int:
    """The span id of the call's root span (``invoke_agent``), as an integer."""
    return span_id(_checked(call_id), ROOT_KEY)


def root_span_id_hex(call_id: str) -> str:
    return f"{root_span_id(call_id):016x}"


def root_span_context(call_id: str) -> SpanContext:
    """The call's root span as a remote, sampled SpanContext (also usable for span links)."""
    # Remote: the root span is not started in this process; otelbridge exports it at call end.
    # Sampled: otelbridge exports every call, so children must not be dropped by a parent-based sampler.
    return SpanContext(
        trace_id=trace_id(call_id),
        span_id=root_span_id(call_id),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


def call_context(call_id: str, context: Context | None = None) -> Context:
    """``context`` (default: the current one) with the call's root span as its current span.

    Spans started with it as parent nest under the call's ``invoke_agent`` span. Nothing else in
    ``context`` (baggage, other values) changes, and nothing is attached: pass it as ``context=``
    or attach it yourself.
    """
    return trace.set_span_in_context(NonRecordingSpan(root_span_context(call_id)), context)


def traceparent(call_id: str) -> str:
    """The W3C ``traceparent`` header value naming the call's root span as parent."""
    return f"00-{trace_id(call_id):032x}-{root_span_id(call_id):016x}-01"


__all__ = [
    "ROOT_KEY",
    "SPAN_PREFIX",
    "TRACE_PREFIX",
    "call_context",
    "root_span_context",
    "root_span_id",
    "root_span_id_hex",
    "span_id",
    "trace_id",
    "trace_id_bytes",
    "trace_id_hex",
    "traceparent",
]
