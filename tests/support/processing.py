"""A Processor on real SQLite files, built the way the daemon builds it (the spans encoded to
real OTLP bytes), for tests that drive processing directly."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from otelbridge.delivery.otlp import encode_traces
from otelbridge.delivery.resource import build_resource
from otelbridge.delivery.spool import Spool
from otelbridge.ingest.processor import Processor
from otelbridge.mapping.policy import MappingOptions
from otelbridge.mapping.records import SpanRecord
from otelbridge.store.sqlite import SqliteInboxStore, SqliteState, open_inbox, open_state

RESOURCE = build_resource("test", "i-1")


def encode_spans(spans: list[SpanRecord]) -> bytes:
    return encode_traces(spans, RESOURCE)


def open_processor(
    state_dir: Path, *, clock: Callable[[], int] = time.time_ns, deployments_per_agent: int = 20
) -> tuple[SqliteState, SqliteInboxStore, Processor]:
    """``state.db`` and ``inbox.db`` in ``state_dir`` and a Processor on them (an hour's call
    timeout, a week's retention, caps no test reaches)."""
    state, inbox = open_state(state_dir), open_inbox(state_dir)
    processor = Processor(
        state,
        inbox,
        Spool(max_bytes=1 << 30, max_age_ns=1 << 62),
        MappingOptions(),
        encode_spans,
        call_timeout_ns=3600 * 10**9,
        retention_ns=7 * 86400 * 10**9,
        deployments_per_agent=deployments_per_agent,
        clock=clock,
    )
    return state, inbox, processor
