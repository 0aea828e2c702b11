"""The per-agent bound on ``cartesia.deployment.id`` (docs/conventions.md, "5.2 Deployments"):
:func:`is_recent`, :func:`labeller` with :func:`fold`, :class:`RecentDeployments`, and replay.

A deployment's age is the start of its first call seen; the ``limit`` newest by that age keep
their id, older ones read ``other`` (even while they still serve calls); nothing is forgotten."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otelbridge.mapping import conventions as c
from otelbridge.mapping.deployments import (
    OnChange,
    RecentDeployments,
    fold,
    folded_count,
    is_recent,
    kept,
    labeller,
)
from otelbridge.mapping.records import InstrumentKind, MappedCall, MetricPoint
from otelbridge.replay import Replay
from otelbridge.settings import Settings

OTHER: Final = c.DEPLOYMENT_OTHER
DEPLOYMENT_SETTINGS: Final = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _point(deployment: str | None, instrument: str = c.METRIC_RESPONSE_LATENCY) -> MetricPoint:
    attributes: dict[str, str | bool | int] = {c.METRIC_ATTR_AGENT_ID: "agent_1"}
    if deployment is not None:
        attributes[c.METRIC_ATTR_DEPLOYMENT_ID] = deployment
    return MetricPoint(instrument, InstrumentKind.HISTOGRAM, "s", "-", 0.5, attributes, "root", 1, 2)


def _labels(points: list[MetricPoint]) -> list[object]:
    return [p.attributes.get(c.METRIC_ATTR_DEPLOYMENT_ID) for p in points]


# --- is_recent ----------------------------------------------------------------------------


def test_is_recent_below_and_at_the_limit_keeps_everything() -> None:
    assert is_recent({"d1": 100}, "d1", 1)
    first_calls = {"d1": 100, "d2": 200}
    assert all(is_recent(first_calls, d, 3) for d in first_calls)  # below
    assert all(is_recent(first_calls, d, 2) for d in first_calls)  # at the limit
    assert first_calls == {"d1": 100, "d2": 200}  # is_recent only decides


def test_is_recent_past_the_limit_keeps_the_newest_first_calls() -> None:
    first_calls = {"d3": 300, "d1": 100, "d2": 200}
    assert [is_recent(first_calls, d, 2) for d in ("d1", "d2", "d3")] == [False, True, True]
    assert [is_recent(first_calls, d, 1) for d in ("d1", "d2", "d3")] == [False, False, True]
    # the age decides, not the id
    assert is_recent({"z": 100, "a": 200}, "a", 1) and not is_recent({"z": 100, "a": 200}, "z", 1)


def test_is_recent_of_two_first_seen_in_the_same_nanosecond_the_greater_id_is_newer() -> None:
    assert is_recent({"a": 100, "b": 100}, "b", 1)
    assert not is_recent({"b": 100, "a": 100}, "a", 1)
    first_calls = {"a": 100, "b": 100, "c": 50}
    assert [is_recent(first_calls, d, 2) for d in ("a", "b", "c")] == [True, True, False]


def test_is_recent_limit_zero_keeps_nothing() -> None:
    assert not is_recent({"d1": 100}, "d1", 0)
    assert not is_recent({"d1": 10**18, "d2": 0}, "d1", 0)


# --- labeller and fold --------------------------------------------------------------------


def test_fold_relabels_only_deployment_points() -> None:
    first_calls = {"d1": 100, "d2": 200}
    changes: list[tuple[str, int | None]] = []
    label = labeller(first_calls, 300, 1, lambda *change: changes.append(change))
    points = [
        _point("d2"),
        _point("d1"),
        _point(c.DEPLOYMENT_NONE),
        _point(None, c.METRIC_TURNS),
        _point("d1", c.METRIC_TURN_DURATION),
    ]
    folded = fold(points, label)
    assert _labels(folded) == ["d2", OTHER, c.DEPLOYMENT_NONE, None, OTHER]
    assert folded_count(folded) == 2
    assert folded[3] is points[3]  # untouched
    assert folded[0] is points[0] and folded[2] is points[2]
    assert points[1].attributes[c.METRIC_ATTR_DEPLOYMENT_ID] == "d1"  # the input is not changed
    assert {k: v for k, v in folded[1].attributes.items() if k != c.METRIC_ATTR_DEPLOYMENT_ID} == {
        c.METRIC_ATTR_AGENT_ID: "agent_1"
    }
    assert first_calls == {"d1": 100, "d2": 200}  # later calls do not move a first call
    assert changes == []


def test_none_is_never_bounded_and_takes_no_place() -> None:
    first_calls: dict[str, int] = {}
    folded = fold([_point(c.DEPLOYMENT_NONE)] * 3, labeller(first_calls, 100, 0))
    assert _labels(folded) == [c.DEPLOYMENT_NONE] * 3 and folded_count(folded) == 0
    assert first_calls == {}
    folded = fold([_point(c.DEPLOYMENT_NONE), _point("d1")], labeller(first_calls, 100, 1))
    assert _labels(folded) == [c.DEPLOYMENT_NONE, "d1"]
    assert first_calls == {"d1": 100}


def test_limit_zero_folds_everything_but_remembers_every_deployment() -> None:
    first_calls: dict[str, int] = {}
    changes: list[tuple[str, int | None]] = []
    for deployment, call_ns in (("d1", 100), ("d2", 200), ("d1", 50)):
        label = labeller(first_calls, call_ns, 0, lambda *change: changes.append(change))
        assert label(deployment) == OTHER
    assert first_calls == {"d1": 50, "d2": 200}
    assert changes == [("d1", 100), ("d2", 200), ("d1", 50)]


def test_on_change_is_told_of_new_deployments_and_earlier_first_calls_only() -> None:
    first_calls: dict[str, int] = {}
    changes: list[tuple[str, int | None]] = []

    def run(deployment: str, call_ns: int) -> list[object]:
        label = labeller(first_calls, call_ns, 2, lambda *change: changes.append(change))
        return _labels(fold([_point(deployment), _point(deployment)], label))

    assert run("d1", 100) == ["d1", "d1"]
    assert changes == [("d1", 100)]  # once, not per point
    assert run("d2", 200) == ["d2", "d2"]
    assert changes[1:] == [("d2", 200)]
    changes.clear()
    assert run("d1", 300) == ["d1", "d1"]  # a later call: its first call stays
    assert run("d1", 100) == ["d1", "d1"]  # the first call again: nothing changed
    assert changes == []
    assert first_calls == {"d1": 100, "d2": 200}
    # a third, newer deployment: d1 is past the bound, even while it still serves calls
    assert run("d3", 250) == ["d3", "d3"]
    assert changes == [("d3", 250)]
    assert run("d1", 400) == [OTHER, OTHER]
    assert run("d2", 400) == ["d2", "d2"]
    # an earlier call of d2 (a backfill): d2 went live before d1, so d1 is back among the two
    # most recent and d2 is not
    changes.clear()
    assert run("d2", 50) == [OTHER, OTHER]
    assert changes == [("d2", 50)]
    assert run("d1", 500) == ["d1", "d1"]
    assert run("d2", 500) == [OTHER, OTHER]
    assert changes == [("d2", 50)]
    assert first_calls == {"d1": 100, "d2": 50, "d3": 250}  # nothing is evicted


# --- RecentDeployments --------------------------------------------------------------------


def test_the_twenty_most_recent_keep_their_id() -> None:
    recent = RecentDeployments(20)
    deployments = [f"dep_{n:02d}" for n in range(1, 26)]
    for n, deployment in enumerate(deployments, start=1):
        # live, in start order: a deployment's first call is the newest yet, so it keeps its id
        assert recent.labeller("agent_1", n * 1000)(deployment) == deployment
    # 20 newer deployments have appeared since dep_01..dep_05: their later calls read other
    for deployment in deployments[:5]:
        assert recent.labeller("agent_1", 30_000)(deployment) == OTHER
    for deployment in deployments[5:]:
        assert recent.labeller("agent_1", 30_000)(deployment) == deployment
    # a new deployment pushes out the then-oldest (dep_06, first seen at 6000)
    assert recent.labeller("agent_1", 40_000)("dep_26") == "dep_26"
    assert recent.labeller("agent_1", 41_000)("dep_06") == OTHER
    assert recent.labeller("agent_1", 41_000)("dep_07") == "dep_07"
    # a call showing that dep_25 went live long ago makes it old: dep_06 is back
    assert recent.labeller("agent_1", 1500)("dep_25") == OTHER
    assert recent.labeller("agent_1", 42_000)("dep_25") == OTHER
    assert recent.labeller("agent_1", 42_000)("dep_06") == "dep_06"
    # an earlier call of an old deployment only makes it older
    assert recent.labeller("agent_1", 500)("dep_01") == OTHER


def test_agents_are_bounded_independently() -> None:
    recent = RecentDeployments(1)
    assert recent.labeller("agent_a", 100)("a1") == "a1"
    assert recent.labeller("agent_b", 50)("b1") == "b1"  # older, but another agent
    assert recent.labeller("agent_a", 90)("a2") == OTHER  # went live before a1
    assert recent.labeller("agent_b", 90)("b2") == "b2"  # newer than b1: b1 is out, a1 is not
    assert recent.labeller("agent_a", 200)("a1") == "a1"
    assert recent.labeller("agent_b", 200)("b1") == OTHER
    # the same deployment id under two agents has an age under each
    assert recent.labeller("agent_b", 300)("a1") == "a1"
    assert recent.labeller("agent_b", 300)("b2") == OTHER
    assert recent.labeller("agent_a", 300)("a1") == "a1"


#: (deployment, call start) of one agent, in any order; starts may repeat (ties)
_calls = st.lists(st.tuples(st.sampled_from([f"d{n}" for n in range(8)]), st.integers(0, 50)), max_size=40)
#: the same with distinct call starts
_distinct_calls = st.lists(
    st.tuples(st.sampled_from([f"d{n}" for n in range(8)]), st.integers(0, 10**6)),
    max_size=40,
    unique_by=lambda call: call[1],
)


def _earliest(calls: list[tuple[str, int]]) -> dict[str, int]:
    """Each deployment's first call: the earliest start of its calls."""
    first: dict[str, int] = {}
    for deployment, start in calls:
        first[deployment] = min(start, first.get(deployment, start))
    return first


def _recorder(changes: list[tuple[str, int | None]]) -> OnChange:
    def on_change(deployment_id: str, first_call_ns: int | None) -> None:
        changes.append((deployment_id, first_call_ns))

    return on_change


def _newest(first_calls: dict[str, int], limit: int) -> set[str]:
    """The ``limit`` deployments first seen most recently (of a tie, the greater id is newer)."""
    ranked = sorted(first_calls, key=lambda d: (first_calls[d], d), reverse=True)
    return set(ranked[:limit])


@DEPLOYMENT_SETTINGS
@given(_calls, st.integers(0, 5))
def test_first_calls_stay_the_earliest_and_on_change_tells_exactly_then(
    calls: list[tuple[str, int]], limit: int
) -> None:
    """In any order: the first calls are the earliest start seen of each deployment (nothing is
    forgotten), on_change is told exactly when a deployment is new or its first call moves
    earlier, a label is the id exactly when the deployment is among the ``limit`` newest after
    the call, and ``min(limit, deployments seen)`` deployments are recent at any time."""
    first_calls: dict[str, int] = {}
    for n, (deployment, start) in enumerate(calls):
        before = dict(first_calls)
        changes: list[tuple[str, int | None]] = []
        label = labeller(first_calls, start, limit, _recorder(changes))(deployment)
        moved = deployment not in before or start < before[deployment]
        assert changes == ([(deployment, start)] if moved else [])
        assert first_calls == _earliest(calls[: n + 1])
        assert label == (deployment if deployment in _newest(first_calls, limit) else OTHER)
        assert sum(is_recent(first_calls, d, limit) for d in first_calls) == min(limit, len(first_calls))


@DEPLOYMENT_SETTINGS
@given(_calls, st.integers(0, 5), st.data())
def test_once_the_deployments_are_known_the_label_does_not_depend_on_the_order(
    calls: list[tuple[str, int]], limit: int, data: st.DataObject
) -> None:
    """Label the calls once (in the order given), then again in start order, newest first
    (a backfill) and shuffled: the second passes change nothing and agree, and a call's label
    depends only on its deployment (its id exactly when it is among the ``limit`` newest)."""
    known: dict[str, int] = {}
    for deployment, start in calls:
        labeller(known, start, limit)(deployment)
    assert known == _earliest(calls)
    newest = _newest(known, limit)
    expected = [d if d in newest else OTHER for d, _ in calls]
    indexed = list(enumerate(calls))
    orders = {
        "start": sorted(indexed, key=lambda call: call[1][1]),
        "newest first": sorted(indexed, key=lambda call: -call[1][1]),
        "shuffled": data.draw(st.permutations(indexed)),
    }
    for ordered in orders.values():
        first_calls = dict(known)
        changes: list[tuple[str, int | None]] = []
        labels: dict[int, str] = {}
        for n, (deployment, start) in ordered:
            labels[n] = labeller(first_calls, start, limit, _recorder(changes))(deployment)
        assert [labels[n] for n in range(len(calls))] == expected
        assert first_calls == known and changes == []


@DEPLOYMENT_SETTINGS
@given(_distinct_calls, st.integers(0, 5))
def test_live_in_start_order(calls: list[tuple[str, int]], limit: int) -> None:
    """In start order (live) with distinct starts: a deployment's first call keeps its id (for a
    limit of at least 1); a later call keeps it exactly while fewer than ``limit`` newer
    deployments have appeared, so once it reads ``other`` every later call does; after the pass
    exactly the ``limit`` newest by first call are recent."""
    first = _earliest(calls)
    first_calls: dict[str, int] = {}
    folded: set[str] = set()
    for deployment, start in sorted(calls, key=lambda call: call[1]):
        label = labeller(first_calls, start, limit)(deployment)
        newer = sum(1 for d, f in first.items() if first[deployment] < f <= start)
        assert label == (deployment if newer < limit else OTHER)
        if start == first[deployment]:
            assert label == (deployment if limit else OTHER)
        if deployment in folded:
            assert label == OTHER
        if label == OTHER:
            folded.add(deployment)
    assert first_calls == first
    assert {d for d in first_calls if is_recent(first_calls, d, limit)} == _newest(first, limit)
    assert len(_newest(first, limit)) == min(limit, len(first))


# --- through replay -----------------------------------------------------------------------


def _replay_call(n: int, deployment: str) -> dict[str, Any]:
    """Call ``call_<n>`` of agent_1, starting at 09:0<n>."""
    return {
        "id": f"call_{n}",
        "agent_id": "agent_1",
        "status": "completed",
        "end_reason": "agent_hangup",
        "start_time": f"2026-11-20T09:0{n}:00Z",
        "end_time": f"2026-11-20T09:0{n}:30Z",
        "deployment_id": deployment,
        "transcript": [
            {"role": "user", "text": "hi", "start_timestamp": 0.5, "end_timestamp": 1.5},
            {"role": "assistant", "text": "hello", "start_timestamp": 2.0, "end_timestamp": 4.0},
        ],
    }


#: dep_1 goes live at 09:01, dep_2 at 09:02, dep_3 at 09:03; dep_1 serves another call at 09:04
_FOUR_CALLS: Final = {
    1: _replay_call(1, "dep_1"),
    2: _replay_call(2, "dep_2"),
    3: _replay_call(3, "dep_3"),
    4: _replay_call(4, "dep_1"),
}


def _write(tmp_path: Path, order: list[int]) -> Path:
    path = tmp_path / "calls.json"
    path.write_text(json.dumps({"data": [_FOUR_CALLS[n] for n in order]}))
    return path


def _replay(path: Path, limit: int) -> tuple[Replay, dict[str, MappedCall]]:
    err = io.StringIO()
    replay = Replay(
        Settings.model_construct(deployments_per_agent=limit),
        {"traces": "none", "metrics": "none"},
        io.StringIO(),
        err,
    )
    replay.read(path)
    mapped = replay.map()
    assert replay.report.ok and not err.getvalue()
    return replay, {m.call_id: m for m in mapped}


def _deployed(mapped: MappedCall) -> list[MetricPoint]:
    points = [p for p in mapped.points if c.METRIC_ATTR_DEPLOYMENT_ID in p.attributes]
    assert points
    return points


@pytest.mark.parametrize("order", [[1, 2, 3, 4], [4, 2, 1, 3], [4, 3, 2, 1]])
def test_replay_folds_the_oldest_deployment(tmp_path: Path, order: list[int]) -> None:
    """Replay labels in start order, whatever the file order: dep_1's first call (09:01) came
    when only dep_1 was known and keeps its id; its call at 09:04 comes after two newer
    deployments appeared, so it reads other."""
    replay, by_call = _replay(_write(tmp_path, order), 2)
    assert set(_labels(_deployed(by_call["call_1"]))) == {"dep_1"}
    assert set(_labels(_deployed(by_call["call_2"]))) == {"dep_2"}
    assert set(_labels(_deployed(by_call["call_3"]))) == {"dep_3"}
    folded = _deployed(by_call["call_4"])
    assert set(_labels(folded)) == {OTHER}
    # points without the attribute are not touched; the spans keep the real id
    turns = [p for p in by_call["call_4"].points if p.instrument == c.METRIC_TURNS]
    assert turns and all(c.METRIC_ATTR_DEPLOYMENT_ID not in p.attributes for p in turns)
    root = by_call["call_4"].root
    assert root is not None and root.attributes[c.DEPLOYMENT_ID] == "dep_1"
    assert replay.report.calls == 4
    assert replay.report.deployments_folded == len(folded) > 0
    assert (
        f"{len(folded)} points of deployments past OTELBRIDGE_DEPLOYMENTS_PER_AGENT read 'other'"
        in replay.summary()
    )


def test_replay_in_start_order_keeps_every_id_of_distinct_starts(tmp_path: Path) -> None:
    """Each deployment once, distinct starts: each call is its deployment's first, the newest
    yet, so it keeps its id (the bound folds only later calls of old deployments)."""
    replay, by_call = _replay(_write(tmp_path, [2, 1, 3]), 2)
    for n in (1, 2, 3):
        assert set(_labels(_deployed(by_call[f"call_{n}"]))) == {f"dep_{n}"}
    assert replay.report.deployments_folded == 0
    assert "OTELBRIDGE_DEPLOYMENTS_PER_AGENT" not in replay.summary()


def test_replay_limit_zero_folds_every_deployment_point(tmp_path: Path) -> None:
    replay, by_call = _replay(_write(tmp_path, [1, 2, 3, 4]), 0)
    everything = [p for m in by_call.values() for p in _deployed(m)]
    assert set(_labels(everything)) == {OTHER}
    assert replay.report.deployments_folded == len(everything)
    assert (
        f"{len(everything)} points of deployments past OTELBRIDGE_DEPLOYMENTS_PER_AGENT read 'other'"
        in replay.summary()
    )


def test_replay_without_folding_says_nothing(tmp_path: Path) -> None:
    path = tmp_path / "calls.json"
    path.write_text(json.dumps([_FOUR_CALLS[1], _FOUR_CALLS[2]]))
    replay, _ = _replay(path, 2)
    assert replay.report.deployments_folded == 0
    assert "OTELBRIDGE_DEPLOYMENTS_PER_AGENT" not in replay.summary()
    # three deployments within a bound of three: nothing folds either
    replay, _ = _replay(_write(tmp_path, [1, 2, 3, 4]), 3)
    assert replay.report.deployments_folded == 0
    assert "OTELBRIDGE_DEPLOYMENTS_PER_AGENT" not in replay.summary()


def test_a_new_deployment_reports_the_one_it_pushed_out() -> None:
    first_calls = {"d1": 10, "d2": 20}
    fallen: list[str] = []
    assert labeller(first_calls, 30, 2, on_fall=fallen.append)("d3") == "d3"
    assert fallen == ["d1"]
    # an older call of a known deployment moves nothing out of the most recent
    assert labeller(first_calls, 25, 2, on_fall=fallen.append)("d2") == "d2"
    assert fallen == ["d1"]
    # a first call older than the two most recent: it was never recent, so nothing fell
    assert labeller(first_calls, 5, 2, on_fall=fallen.append)("d0") == c.DEPLOYMENT_OTHER
    assert fallen == ["d1"]


def test_only_the_kept_most_recent_deployments_are_remembered() -> None:
    limit = 2
    first_calls: dict[str, int] = {}
    changes: list[tuple[str, int | None]] = []
    for n in range(kept(limit) + 5):
        labeller(first_calls, 100 + n, limit, _recorder(changes))(f"d{n}")
    assert len(first_calls) == kept(limit)
    forgotten = [d for d, first in changes if first is None]
    assert forgotten == [f"d{n}" for n in range(5)]  # the oldest, in order
    assert min(first_calls.values()) == 105
