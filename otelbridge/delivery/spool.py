"""The spool: encoded OTLP requests waiting for the backend, in the state store.

Requests are added inside the processor's transaction (together with the ledger entries of
their spans), so a request is spooled exactly when its spans are marked exported. The sender
takes them oldest first per signal; a 2xx is recorded at once in the ack log, then deletes; a
retryable answer reschedules, any other answer moves the request to the dead letters. Caps:
``max_bytes`` (the oldest requests are dropped beyond it) and ``max_age_ns`` (older requests
are dropped); every drop is counted and logged loudly by the caller.
"""

from __future__ import annotations

from collections.abc import Callable

from otelbridge.store import DROP_REASONS, Dropped, DropReason, SpoolEntry, SpoolStats, StateTx

__all__ = ["DROP_REASONS", "DropReason", "Dropped", "Spool", "SpoolEntry", "SpoolStats"]


class Spool:
    """The spool's caps (the rows themselves are the state store's). ``delivered`` gives the
    spool ids the backend has acknowledged whose rows the sender has not deleted yet."""

    def __init__(self, *, max_bytes: int, max_age_ns: int, delivered: Callable[[], list[int]] = list) -> None:
        self.max_bytes = max_bytes
        self.max_age_ns = max_age_ns
        self._delivered = delivered

    def enforce_caps(self, tx: StateTx, now_ns: int) -> Dropped:
        dropped = Dropped()
        for signal, items in tx.spool_expire(now_ns - self.max_age_ns):
            dropped.add(signal, "age", items)
        excess = tx.spool_bytes() - self.max_bytes
        if excess > 0 and (delivered := self._delivered()):
            # delivered, not dropped: deleted here (the sender's delete of them finds nothing),
            # never counted as requests lost to the cap
            tx.spool_delete(delivered)
            excess = tx.spool_bytes() - self.max_bytes
        if excess > 0:
            for signal, items in tx.spool_drop_oldest(excess):
                dropped.add(signal, "size", items)
        return dropped
