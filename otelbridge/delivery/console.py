"""``--exporter console``: a readable per-call tree of exactly what would be exported."""

from __future__ import annotations

from collections.abc import Iterable

from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import MappedCall, SpanRecord

_TEXT_PREVIEW = 60


def _seconds(ns: int) -> str:
    return f"{ns / 1e9:.3f}s"


def _describe(span: SpanRecord, origin_ns: int) -> str:
    a = span.attributes
    parts = [span.name, f"+{_seconds(span.start_ns - origin_ns)}",
             f"{_seconds(span.end_ns - span.start_ns)}"]  # fmt: skip
    for key, label in ((c.TTS_TTFB, "tts_ttfb"), (c.STT_TTFB, "stt_ttfb")):
        if key in a:
            parts.append(f"{label}={a[key]}s")
    if a.get(c.TURN_INTERRUPTED) is True:
        parts.append("interrupted")
    if span.events:
        parts.append(f"{len(span.events)} events")
    if a.get(c.TIME_ADJUSTED):
        reasons = a.get(c.TIME_ADJUSTMENTS, [])
        parts.append(f"adjusted({','.join(reasons) if isinstance(reasons, list) else reasons})")
    text = a.get(c.TURN_TEXT)
    if isinstance(text, str):
        preview = text if len(text) <= _TEXT_PREVIEW else text[: _TEXT_PREVIEW - 1] + "…"
        parts.append(repr(preview))
    return "  ".join(parts)


def render(mapped: MappedCall) -> str:
    root = mapped.root
    assert root is not None
    a = root.attributes
    head = [
        f"call {mapped.call_id}",
        f"trace {mapped.trace_id:032x}",
        f"agent {a.get(c.AGENT_NAME) or a.get(c.AGENT_ID)}",
        f"{a.get(c.CALL_STATUS)}" + (f" ({a[c.CALL_END_REASON]})" if c.CALL_END_REASON in a else ""),
        _seconds(root.end_ns - root.start_ns),
    ]
    if root.error:
        head.append(f"ERROR: {root.error}")
    lines = ["  ".join(head)]
    children: dict[int, list[SpanRecord]] = {}
    for span in mapped.spans:
        if span.parent_span_id is not None:
            children.setdefault(span.parent_span_id, []).append(span)

    def walk(parent: SpanRecord, prefix: str) -> None:
        kids = sorted(children.get(parent.span_id, []), key=lambda s: (s.start_ns, s.span_id))
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(f"{prefix}{'└─ ' if last else '├─ '}{_describe(kid, root.start_ns)}")
            walk(kid, prefix + ("   " if last else "│  "))

    walk(root, "")
    if root.events:
        lines.append(f"   ({len(root.events)} log events outside any turn)")
    lines.append(f"   {len(mapped.points)} metric points")
    return "\n".join(lines)


def render_all(calls: Iterable[MappedCall]) -> str:
    return "\n\n".join(render(m) for m in calls)
