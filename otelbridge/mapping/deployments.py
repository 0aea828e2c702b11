"""The per-agent bound on ``cartesia.deployment.id`` in metrics: pure, no I/O.

Every deployment is a new id, so the attribute would grow series without end. An agent's
``limit`` deployments whose latest call started most recently keep their id; a point of any
other deployment reads ``other`` (and is counted). Recency is the call's start time, not the
time a point is made, so a backfill that reads calls newest first ranks them as live traffic
would. Calls without a deployment read ``none`` and take no place.

The ranking needs memory across calls: ``otelbridge serve`` keeps it in state.db (so a restart
changes nothing), ``otelbridge replay`` in :class:`RecentDeployments`; both decide with
:func:`admit`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import MetricPoint


def admit(recent: Mapping[str, int], deployment_id: str, call_ns: int, limit: int) -> tuple[bool, str | None]:
    """Does ``deployment_id`` keep its id after a call starting at ``call_ns``, given the agent's
    ``recent`` deployments (id -> latest call start, at most ``limit``)? And which one does it
    push out (``None``: none)? A deployment only as recent as the oldest kept one stays out."""
    if deployment_id in recent or len(recent) < limit:
        return True, None
    if limit <= 0:
        return False, None
    oldest = min(recent, key=lambda d: (recent[d], d))
    if call_ns > recent[oldest]:
        return True, oldest
    return False, None


#: deployment id -> the label its points carry
Labeller = Callable[[str], str]
#: told of each change to ``recent``: (deployment id, its latest call start, the id pushed out)
OnChange = Callable[[str, int, str | None], None]


def labeller(recent: dict[str, int], call_ns: int, limit: int, on_change: OnChange | None = None) -> Labeller:
    """Labels for the points of one call of an agent whose ``recent`` deployments are given
    (and kept up to date)."""

    def label(deployment_id: str) -> str:
        kept, evicted = admit(recent, deployment_id, call_ns, limit)
        if not kept:
            return c.DEPLOYMENT_OTHER
        if evicted is not None:
            del recent[evicted]
        if evicted is not None or recent.get(deployment_id, call_ns - 1) < call_ns:
            recent[deployment_id] = call_ns
            if on_change is not None:
                on_change(deployment_id, call_ns, evicted)
        return deployment_id

    return label


def fold(points: list[MetricPoint], label: Labeller) -> list[MetricPoint]:
    """``points`` with each deployment attribute replaced by its label."""
    out = []
    for point in points:
        deployment = point.attributes.get(c.METRIC_ATTR_DEPLOYMENT_ID)
        labelled = (
            label(deployment) if isinstance(deployment, str) and deployment != c.DEPLOYMENT_NONE else None
        )
        if labelled is None or labelled == deployment:
            out.append(point)
        else:
            out.append(replace(point, attributes={**point.attributes, c.METRIC_ATTR_DEPLOYMENT_ID: labelled}))
    return out


def folded_count(points: list[MetricPoint]) -> int:
    return sum(1 for p in points if p.attributes.get(c.METRIC_ATTR_DEPLOYMENT_ID) == c.DEPLOYMENT_OTHER)


class RecentDeployments:
    """The bound kept in memory, for one run of ``otelbridge replay``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._recent: dict[str, dict[str, int]] = {}

    def labeller(self, agent_id: str, call_ns: int) -> Labeller:
        return labeller(self._recent.setdefault(agent_id, {}), call_ns, self._limit)
