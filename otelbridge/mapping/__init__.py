"""Pure mapping: a validated Cartesia call in, spans, span events and metric points out.

No I/O and no clock here; see docs/conventions.md for the contract it implements.
"""

from __future__ import annotations

from otelbridge.cartesia.models import AgentCall
from otelbridge.mapping.metrics import map_call_points
from otelbridge.mapping.policy import MappingOptions, TextPolicy
from otelbridge.mapping.records import MappedCall
from otelbridge.mapping.traces import UnplaceableCallError, map_call_spans


def map_call(
    call: AgentCall,
    options: MappingOptions | None = None,
    *,
    fallback_end_ns: int | None = None,
) -> MappedCall:
    """Map one call to one trace and its metric points.

    ``fallback_end_ns`` (the time of the event that reported the call) places calls that carry
    neither ``start_time`` nor ``end_time``; without it such a call raises
    :class:`UnplaceableCallError`.
    """
    spans = map_call_spans(call, options or MappingOptions(), fallback_end_ns)
    return MappedCall(call.id, spans.root.trace_id, spans.all(), map_call_points(call, spans))


__all__ = ["MappedCall", "MappingOptions", "TextPolicy", "UnplaceableCallError", "map_call"]
