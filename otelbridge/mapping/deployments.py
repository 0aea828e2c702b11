"""The per-agent bound on ``cartesia.deployment.id`` in metrics: pure, no I/O.

Every deployment is a new id, so the attribute would grow series without end. Of an agent's
deployments, the ``limit`` most recent keep their id; the points of older ones read ``other``
(and are counted). A deployment's age is the start of its first call seen — when it went live,
as far as otelbridge can tell — so an old deployment that still serves calls stays ``other``
once ``limit`` newer ones have appeared, and the label of a call does not depend on the order
calls are read in once the deployments are known (a backfill reads the newest first). Calls
without a deployment read ``none`` and take no place.

The ages need memory across calls: ``otelbridge serve`` and ``backfill`` keep them in state.db
(so a restart changes nothing), ``otelbridge replay`` in :class:`RecentDeployments`; both
decide with :func:`labeller`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import MetricPoint


def is_recent(first_calls: Mapping[str, int], deployment_id: str, limit: int) -> bool:
    """Is ``deployment_id`` one of the ``limit`` most recent of ``first_calls`` (deployment id ->
    start of its first call)? Of two first seen at the same nanosecond, the greater id is newer."""
    mine = (first_calls[deployment_id], deployment_id)
    newer = sum(1 for other, first in first_calls.items() if (first, other) > mine)
    return newer < limit


#: deployment id -> the label its points carry
Labeller = Callable[[str], str]
#: told when a deployment's first call moves earlier (or it is new): (deployment id, that start)
OnChange = Callable[[str, int], None]


def labeller(
    first_calls: dict[str, int], call_ns: int, limit: int, on_change: OnChange | None = None
) -> Labeller:
    """Labels for the points of one call (starting at ``call_ns``) of an agent whose
    deployments' first calls are ``first_calls`` (kept up to date)."""

    def label(deployment_id: str) -> str:
        first = first_calls.get(deployment_id)
        if first is None or call_ns < first:
            first_calls[deployment_id] = call_ns
            if on_change is not None:
                on_change(deployment_id, call_ns)
        return deployment_id if is_recent(first_calls, deployment_id, limit) else c.DEPLOYMENT_OTHER

    return label


def fold(points: list[MetricPoint], label: Labeller) -> list[MetricPoint]:
    """``points`` with each deployment attribute replaced by its label."""
    out = []
    labels: dict[str, str] = {}  # the points of one call share one or two deployments
    for point in points:
        deployment = point.attributes.get(c.METRIC_ATTR_DEPLOYMENT_ID)
        if not isinstance(deployment, str) or deployment == c.DEPLOYMENT_NONE:
            out.append(point)
            continue
        labelled = labels.get(deployment)
        if labelled is None:
            labelled = labels[deployment] = label(deployment)
        if labelled == deployment:
            out.append(point)
        else:
            out.append(replace(point, attributes={**point.attributes, c.METRIC_ATTR_DEPLOYMENT_ID: labelled}))
    return out


def folded_count(points: list[MetricPoint]) -> int:
    return sum(1 for p in points if p.attributes.get(c.METRIC_ATTR_DEPLOYMENT_ID) == c.DEPLOYMENT_OTHER)


class RecentDeployments:
    """The deployments' first calls kept in memory, for one run of ``otelbridge replay``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._first_calls: dict[str, dict[str, int]] = {}

    def labeller(self, agent_id: str, call_ns: int) -> Labeller:
        return labeller(self._first_calls.setdefault(agent_id, {}), call_ns, self._limit)
