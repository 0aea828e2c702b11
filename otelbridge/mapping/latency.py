"""Response latency: the silence a caller hears between the end of their turn and the agent's
answer. Pure, no I/O (docs/conventions.md, "Response latency").

Order a call's spoken turns by ``start_timestamp``; for each ``assistant`` turn whose
preceding spoken turn is a ``user`` turn, ``response_latency = assistant.start_timestamp -
user.end_timestamp`` in seconds, when it is >= 0. Both times are taken to whole microseconds
(half up on the number's decimal text, as the span ids take milliseconds), so Cartesia's float
noise cannot make a latency of 0 negative nor two paths disagree.

The preceding turn is the one with the latest start strictly before the assistant turn's; of
several starting in the same microsecond, the one that ends last (a user turn before any other
on a full tie). No latency when the user turn has no end, ends before it starts, or either
time lies outside 0 .. ``MAX_OFFSET_S`` (times the span mapping has to clamp).

The same function serves a whole transcript (polling, backfill, replay, a call's end) and a
turn streamed alone (``call_turn``), which is given the turns of its call already received.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from otelbridge.cartesia.models import TranscriptItem
from otelbridge.cartesia.timestamps import MAX_OFFSET_S
from otelbridge.mapping import ids

_MAX_US: Final = int(MAX_OFFSET_S * 1_000_000)
USER: Final = "user"
ASSISTANT: Final = "assistant"


#: far outside any latency, inside what SQLite's 64-bit integers hold (an offset like 1e300
#: keeps its place in the order of turns and gives no latency)
_BOUND_US: Final = 2**62


def micros(seconds: float) -> int:
    """Seconds from call start -> integer microseconds, half up on the decimal text."""
    us = ids.decimal_units(seconds, 6)
    return max(-_BOUND_US, min(us, _BOUND_US))


@dataclass(frozen=True, slots=True)
class TurnTiming:
    """What response latency needs of a spoken turn (and what the state store keeps of it)."""

    role: str
    start_us: int
    end_us: int | None

    @classmethod
    def of(cls, item: TranscriptItem) -> TurnTiming:
        end = None if item.end_timestamp is None else micros(item.end_timestamp)
        return cls(item.role, micros(item.start_timestamp), end)

    @property
    def order(self) -> tuple[int, int, bool]:
        """Sort key: by start, then the later end, then a user turn after any other."""
        return (self.start_us, -1 if self.end_us is None else self.end_us, self.role == USER)


def latency_after(previous: TurnTiming | None, turn: TurnTiming) -> float | None:
    """The response latency of ``turn`` given the spoken turn before it, in seconds."""
    if turn.role != ASSISTANT or previous is None or previous.role != USER or previous.end_us is None:
        return None
    if not (0 <= previous.start_us <= previous.end_us <= turn.start_us <= _MAX_US):
        return None
    return (turn.start_us - previous.end_us) / 1_000_000


def preceding(turns: Iterable[TurnTiming], start_us: int) -> TurnTiming | None:
    """The turn of ``turns`` that precedes a turn starting at ``start_us``."""
    return max((t for t in turns if t.start_us < start_us), key=lambda t: t.order, default=None)


def spoken_timings(transcript: Iterable[TranscriptItem]) -> list[TurnTiming]:
    return [TurnTiming.of(item) for item in transcript if not item.is_system]


def response_latencies(
    transcript: list[TranscriptItem], known: Iterable[TurnTiming] = ()
) -> dict[int, float]:
    """Transcript index -> response latency of each assistant turn that has one. ``known`` are
    turns of the call learnt elsewhere (streamed ones the transcript may lack)."""
    timings = {index: TurnTiming.of(item) for index, item in enumerate(transcript) if not item.is_system}
    everything = sorted({*timings.values(), *known}, key=lambda t: t.order)
    # Sorted by start, the last turn of the previous start group precedes every turn of a group.
    before: dict[int, TurnTiming | None] = {}
    group_last: TurnTiming | None = None
    for timing in everything:
        if timing.start_us not in before:
            before[timing.start_us] = group_last
        group_last = timing
    out: dict[int, float] = {}
    for index, timing in timings.items():
        latency = latency_after(before.get(timing.start_us), timing)
        if latency is not None:
            out[index] = latency
    return out
