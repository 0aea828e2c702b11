"""Webhook events of one call -> the call they describe.

Used by ``otelbridge replay`` on a saved webhook stream. Deliveries may be duplicated,
reordered or partial; the assembler keeps:

* one ``call`` object merged field by field from every copy: a copy read from the List Calls
  API first, then the end events (call_completed / call_failed, the one with more transcript
  first), then call_started; each field from the first copy that has it;
* every ``call_turn`` turn not already in that call's transcript (same role and start
  millisecond = same turn, as for span ids);
* the ``post_call_analysis`` summary;
* for the 2025 legacy shape (``request_id`` + ``body``, no ``call``): a call built from the
  envelope, its start from a legacy ``call_started``'s ``timestamp`` when there is one (else
  derived from the end when mapped), its end from the ``call_completed``/``call_failed``
  ``timestamp``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from otelbridge.cartesia.models import AgentCall, TranscriptItem
from otelbridge.cartesia.webhooks import (
    CALL_FAILED,
    CALL_STARTED,
    CALL_TURN,
    END_EVENTS,
    POST_CALL_ANALYSIS,
    WebhookEvent,
)
from otelbridge.mapping import ids


@dataclass(slots=True)
class _CallEvents:
    call_id: str
    agent_id: str | None = None
    started: WebhookEvent | None = None
    ends: list[WebhookEvent] = field(default_factory=list)
    turns: list[TranscriptItem] = field(default_factory=list)
    summary: str | None = None
    latest_ns: int | None = None


@dataclass(frozen=True, slots=True)
class AssembledCall:
    call: AgentCall
    #: the time of the latest event: places a call that carries no time of its own
    fallback_end_ns: int | None


def _turn_identity(item: TranscriptItem) -> str:
    return ids.turn_key(item.role, item.start_timestamp)


class CallAssembler:
    def __init__(self) -> None:
        self._calls: dict[str, _CallEvents] = {}

    def add(self, event: WebhookEvent) -> bool:
        """Take one event; ``False`` for types that carry nothing to map (unknown types)."""
        call_id = event.resolved_call_id
        if not event.is_known or call_id is None:
            return False
        state = self._calls.setdefault(call_id, _CallEvents(call_id))
        state.agent_id = state.agent_id or event.agent_id
        if event.timestamp is not None:
            state.latest_ns = max(state.latest_ns or 0, event.timestamp)
        if event.type == CALL_STARTED:
            state.started = state.started or event
        elif event.type in END_EVENTS:
            state.ends.append(event)
        elif event.type == CALL_TURN and event.turn is not None:
            state.turns.append(event.turn)
        elif event.type == POST_CALL_ANALYSIS and event.analysis is not None:
            state.summary = event.analysis.summary or state.summary
        return True

    def __len__(self) -> int:
        return len(self._calls)

    def calls(self) -> list[AssembledCall]:
        return [self._build(state) for state in self._calls.values()]

    def _build(self, state: _CallEvents) -> AssembledCall:
        copies = _by_precedence(state)
        base = copies[0] if copies else None
        if base is not None and base.call is not None:
            call = base.call
            for other in copies[1:]:
                if other.call is not None:
                    call = call.merged_with(other.call)
            if not call.transcript and base.legacy_transcript:
                call = call.model_copy(update={"transcript": base.legacy_transcript})
            if call.end_reason is None and base.end_reason is not None:
                call = call.model_copy(update={"end_reason": base.end_reason})
        else:
            call = self._legacy_call(state)
        transcript = list(call.transcript)
        known = {_turn_identity(t) for t in transcript if not t.is_system}
        for turn in state.turns:
            identity = _turn_identity(turn)
            if identity not in known:
                known.add(identity)
                transcript.append(turn)
        update: dict[str, object] = {}
        if len(transcript) != len(call.transcript):
            transcript.sort(key=lambda t: t.start_timestamp)
            update["transcript"] = transcript
        if state.summary and not call.summary:
            update["summary"] = state.summary
        if update:
            call = call.model_copy(update=update)
        return AssembledCall(call, state.latest_ns)

    @staticmethod
    def _legacy_call(state: _CallEvents) -> AgentCall:
        ended = max(state.ends, key=_weight, default=None)
        started = state.started
        if ended is not None:
            status = "failed" if ended.type == CALL_FAILED else "completed"
        else:
            status = "started"
        return AgentCall(
            id=state.call_id,
            agent_id=state.agent_id or "unknown",
            status=status,
            start_time=started.timestamp if started is not None else None,
            end_time=ended.timestamp if ended is not None else None,
            end_reason=ended.end_reason if ended is not None else None,
            transcript=ended.legacy_transcript if ended is not None else [],
        )


def _weight(event: WebhookEvent) -> tuple[bool, int]:
    """An end event with a call object and more transcript says more."""
    transcript = event.call.transcript if event.call is not None else event.legacy_transcript
    return (event.call is not None, len(transcript))


def _by_precedence(state: _CallEvents) -> list[WebhookEvent]:
    """The call's copies, the one whose fields win first: end events, those read from List
    Calls (the source of truth) first, then by what they carry; then call_started. Sorting
    is stable, so among equals the first delivered wins."""
    events = sorted(state.ends, key=lambda e: (e.source is not None, *_weight(e)), reverse=True)
    if state.started is not None:
        events.append(state.started)
    return events
