"""The per-agent bound on ``cartesia.deployment.id`` in metrics: pure, no I/O.

Every deployment is a new id, so the attribute would grow series without end. Of an agent's
deployments, the ``limit`` most recent keep their id; the points of older ones read ``other``
(and are counted). A deployment's age is the start of its first call seen — when it went live,
as far as otelbridge can tell — so an old deployment that still serves calls stays ``other``
once ``limit`` newer ones have appeared, and the label of a call does not depend on the order
calls are read in once the deployments are known (a backfill reads the newest first). Calls
without a deployment read ``none`` and take no place.

The ages need memory across calls: ``otelbridge serve`` and ``backfill`` keep them in the
state store (so a restart changes nothing), ``otelbridge replay`` in :class:`RecentDeployments`;
both decide with :func:`labeller`. Only the :func:`kept` most recent of an agent are remembered
(older ones are forgotten, so the memory and the check per call stay bounded): an older
deployment that comes back is taken for a new one.
"""

from __future__ import annotations

import heapq
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


def kept(limit: int) -> int:
    """How many deployments of an agent are remembered: the ``limit`` that keep their id, and
    enough older ones that a deployment just past the bound does not come back as new."""
    return 5 * limit + 10


def recent(first_calls: Mapping[str, int], limit: int) -> set[str]:
    """The ``limit`` most recent of ``first_calls``."""
    return set(heapq.nlargest(limit, first_calls, key=lambda d: (first_calls[d], d)))


#: deployment id -> the label its points carry
Labeller = Callable[[str], str]
#: told when a deployment's first call moves earlier (or it is new): (deployment id, that start),
#: and when a deployment is forgotten: (deployment id, None)
OnChange = Callable[[str, int | None], None]
#: told of a deployment that stopped being one of the most recent: its id
OnFall = Callable[[str], None]


def labeller(
    first_calls: dict[str, int],
    call_ns: int,
    limit: int,
    on_change: OnChange | None = None,
    on_fall: OnFall | None = None,
) -> Labeller:
    """Labels for the points of one call (starting at ``call_ns``) of an agent whose
    deployments' first calls are ``first_calls`` (kept up to date, at most :func:`kept`)."""

    def label(deployment_id: str) -> str:
        first = first_calls.get(deployment_id)
        if first is None or call_ns < first:
            before = recent(first_calls, limit) if on_fall is not None else set()
            first_calls[deployment_id] = call_ns
            if on_change is not None:
                on_change(deployment_id, call_ns)
            _forget_oldest(first_calls, kept(limit), on_change)
            if on_fall is not None:
                for fallen in sorted(before - recent(first_calls, limit)):
                    on_fall(fallen)
        return deployment_id if is_recent(first_calls, deployment_id, limit) else c.DEPLOYMENT_OTHER

    return label


def _forget_oldest(first_calls: dict[str, int], keep: int, on_change: OnChange | None) -> None:
    if len(first_calls) <= keep:
        return
    oldest = heapq.nsmallest(len(first_calls) - keep, first_calls, key=lambda d: (first_calls[d], d))
    for deployment_id in oldest:
        del first_calls[deployment_id]
        if on_change is not None:
            on_change(deployment_id, None)


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
        #: (agent id, deployment id) of each deployment that stopped being one of the most recent
        self.fallen: list[tuple[str, str]] = []

    def labeller(self, agent_id: str, call_ns: int) -> Labeller:
        def fell(deployment_id: str) -> None:
            self.fallen.append((agent_id, deployment_id))

        return labeller(self._first_calls.setdefault(agent_id, {}), call_ns, self._limit, on_fall=fell)
