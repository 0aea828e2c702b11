"""The Cartesia webhook envelope, in its current shape and the 2025 legacy shape.

Current: ``{type, call_id, agent_id, webhook_id, timestamp}`` plus ``call`` (call_started /
call_completed / call_failed), ``turn`` (call_turn) or ``analysis`` (post_call_analysis).
Deprecated but still sent: top-level ``body`` and ``end_reason``.

Legacy (2025): no ``call_id`` and no ``call``; ``request_id`` is the call id and ``body`` is
the whole transcript; there is no start time (see :mod:`otelbridge.ingest.assembly`).

Unknown event types validate (only the envelope is checked) so that the receiver can
acknowledge and ignore them.
"""

from __future__ import annotations

import json
from typing import Any, Final, Self

from pydantic import ValidationError, model_validator

from otelbridge.cartesia.errors import describe_validation_error
from otelbridge.cartesia.models import AgentCall, CartesiaModel, Timestamp, TranscriptItem

CALL_STARTED: Final = "call_started"
CALL_TURN: Final = "call_turn"
CALL_COMPLETED: Final = "call_completed"
CALL_FAILED: Final = "call_failed"
POST_CALL_ANALYSIS: Final = "post_call_analysis"

CALL_EVENTS: Final = frozenset({CALL_STARTED, CALL_COMPLETED, CALL_FAILED})
END_EVENTS: Final = frozenset({CALL_COMPLETED, CALL_FAILED})
KNOWN_EVENT_TYPES: Final = CALL_EVENTS | {CALL_TURN, POST_CALL_ANALYSIS}


class CallAnalysis(CartesiaModel):
    summary: str | None = None


class WebhookEvent(CartesiaModel):
    type: str
    call_id: str | None = None
    request_id: str | None = None
    agent_id: str | None = None
    webhook_id: str | None = None
    timestamp: Timestamp | None = None
    call: AgentCall | None = None
    turn: TranscriptItem | None = None
    analysis: CallAnalysis | None = None
    #: legacy transcript (list) on call events; the raw turn (object) on call_turn
    body: list[TranscriptItem] | dict[str, Any] | None = None
    end_reason: str | None = None
    #: set by otelbridge on the events that carry a call read from the List Calls API
    #: (``poll``, ``backfill``): that copy wins over the webhooks' field by field
    source: str | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        if self.type not in KNOWN_EVENT_TYPES:
            return self  # ignored by the receiver; nothing more to check
        if not self.resolved_call_id:
            raise ValueError("call_id: missing (no call_id, request_id or call.id)")
        if self.type == CALL_TURN and self.turn is None:
            if isinstance(self.body, dict):
                try:
                    self.turn = TranscriptItem.model_validate(self.body)
                except ValidationError as exc:
                    raise ValueError(describe_validation_error(exc, prefix="body")) from None
            else:
                raise ValueError("turn: required on call_turn events")
        if self.type == POST_CALL_ANALYSIS and self.analysis is None:
            raise ValueError("analysis: required on post_call_analysis events")
        if self.type in CALL_EVENTS and self.call is None:
            if not self.agent_id:
                raise ValueError("agent_id: required when the event carries no call object")
            if self.timestamp is None:
                raise ValueError("timestamp: required when the event carries no call object")
        return self

    @property
    def resolved_call_id(self) -> str | None:
        """The call id, wherever this shape keeps it."""
        if self.call_id:
            return self.call_id
        if self.call is not None:
            return self.call.id
        return self.request_id or None

    @property
    def is_known(self) -> bool:
        return self.type in KNOWN_EVENT_TYPES

    @property
    def is_legacy(self) -> bool:
        """The 2025 shape: a call event with no ``call`` object."""
        return self.type in CALL_EVENTS and self.call is None

    @property
    def legacy_transcript(self) -> list[TranscriptItem]:
        return self.body if isinstance(self.body, list) else []


def parse_webhook_event(payload: object) -> WebhookEvent:
    """Validate one webhook delivery; raises :class:`pydantic.ValidationError`."""
    return WebhookEvent.model_validate(payload)


def synthetic_event(call: AgentCall, source: str) -> WebhookEvent:
    """The event that carries a call read from the List Calls API (``source``: ``poll`` or
    ``backfill``): ``call_completed`` / ``call_failed`` for a final call, else ``call_started``.
    Built from the validated call, so it is not validated again."""
    if call.is_final:
        kind = CALL_FAILED if call.status == "failed" else CALL_COMPLETED
    else:
        kind = CALL_STARTED
    return WebhookEvent.model_construct(
        type=kind, call_id=call.id, agent_id=call.agent_id, call=call, source=source
    )


def synthetic_body(event: WebhookEvent, raw: dict[str, Any]) -> bytes:
    """``event`` (see :func:`synthetic_event`) as stored JSON, carrying ``raw``, the API's call
    object as it came."""
    body = {"type": event.type, "call_id": event.call_id, "agent_id": event.agent_id, "call": raw,
            "source": event.source}  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()
