"""The store seam's contract, the same tests against each engine (tests/store/conftest.py): every
operation of the Protocols in otelbridge/store/api.py, rollback, and two writers at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from otelbridge.mapping.latency import TurnTiming
from otelbridge.store.api import (
    AckLog,
    CallRow,
    Engine,
    InboxStore,
    NewRow,
    PollWatermark,
    RunningCall,
    SpoolEntry,
    StateStore,
    StateTx,
)


@dataclass
class Stores:
    engine: Engine
    state: StateStore
    reader: StateStore
    inbox: InboxStore
    acks: AckLog

    def close(self) -> None:
        for store in (self.state, self.reader, self.inbox, self.acks):
            store.close()


@pytest.fixture
def s(engine: Engine) -> Iterator[Stores]:
    stores = Stores(engine, engine.state(), engine.state_reader(), engine.inbox(), engine.acks())
    yield stores
    stores.close()


def _rows(n: int, start: int = 0, size: int = 10) -> list[NewRow]:
    return [
        (1_000 + i, "call_turn", f"call-{i % 3}", f"{i:0{size}d}".encode()) for i in range(start, start + n)
    ]


def _claim(s: Stores, limit: int = 100, max_bytes: int = 1 << 20) -> list[bytes]:
    with s.state.transaction() as tx:
        claim = s.inbox.claim(tx, limit, max_bytes)
    s.inbox.delete_through(claim.through)
    return [row.body for row in claim.rows]


# --- inbox ----------------------------------------------------------------------------------------
def test_inbox_rows_are_claimed_once_in_receipt_order(s: Stores) -> None:
    rows = _rows(5)
    s.inbox.append(rows)
    assert s.inbox.backlog() == 5
    assert _claim(s, limit=3) == [r[3] for r in rows[:3]]
    assert _claim(s) == [r[3] for r in rows[3:]]
    assert _claim(s) == []
    assert s.inbox.backlog() == 0


def test_a_claim_stops_at_max_bytes_but_takes_at_least_one_row(s: Stores) -> None:
    s.inbox.append(_rows(4, size=100))
    assert len(_claim(s, max_bytes=1)) == 1
    assert len(_claim(s, max_bytes=150)) == 2  # the row that crosses the limit is taken
    with s.state.transaction() as tx:
        claim = s.inbox.claim(tx, 10, 1 << 20)
    assert [r.received_ns for r in claim.rows] == [1_003]


def test_a_claim_rolled_back_gives_its_rows_back(s: Stores) -> None:
    rows = _rows(3)
    s.inbox.append(rows)

    def failing_batch() -> None:
        with s.state.transaction() as tx:
            assert len(s.inbox.claim(tx, 10, 1 << 20).rows) == 3
            raise RuntimeError("the batch failed")

    with pytest.raises(RuntimeError):
        failing_batch()
    assert _claim(s) == [r[3] for r in rows]


def test_inbox_append_of_many_rows_commits_them_all(s: Stores) -> None:
    rows = _rows(2_500)
    s.inbox.append(rows)
    got: list[bytes] = []
    while batch := _claim(s, limit=500):
        got += batch
    assert got == [r[3] for r in rows]


def test_two_writers_and_a_claimer_at_once_lose_nothing_and_take_nothing_twice(s: Stores) -> None:
    second = s.engine.inbox(receiving=True)
    per_writer, chunk = 600, 20
    errors: list[BaseException] = []

    def write(inbox: InboxStore, tag: str) -> None:
        try:
            for start in range(0, per_writer, chunk):
                inbox.append(
                    [(i, "call_turn", "c", f"{tag}-{i}".encode()) for i in range(start, start + chunk)]
                )
        except BaseException as exc:  # the assertion below names it
            errors.append(exc)

    writers = [
        threading.Thread(target=write, args=(inbox, tag)) for inbox, tag in ((s.inbox, "a"), (second, "b"))
    ]
    for w in writers:
        w.start()
    claimed: list[bytes] = []
    while any(w.is_alive() for w in writers):
        claimed += _claim(s, limit=50)
    for w in writers:
        w.join()
    while batch := _claim(s):
        claimed += batch
    second.close()
    assert errors == []
    assert len(claimed) == len(set(claimed)) == 2 * per_writer
    for tag in "ab":  # each writer's rows in its own order
        mine = [int(b.split(b"-")[1]) for b in claimed if b.startswith(tag.encode())]
        assert sorted(mine) == list(range(per_writer))


def test_probes_write_for_real(s: Stores) -> None:
    s.state.probe()
    s.inbox.probe()


# --- the unit of work -----------------------------------------------------------------------------
def test_a_transaction_is_all_or_nothing(s: Stores) -> None:

    def failing() -> None:
        with s.state.transaction() as tx:
            tx.save_call(CallRow("c1", "a1"))
            tx.record_exported("c1", [1, 2], 5)
            tx.spool_add("traces", b"x", 1, 5)
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        failing()
    with s.state.reading() as tx:
        assert tx.load_call("c1") is None
        assert tx.exported("c1") == set()
        assert tx.spool_stats().depth == {"traces": 0, "metrics": 0}


def test_a_savepoint_undoes_only_its_own_work(s: Stores) -> None:
    def bad_event(tx: StateTx) -> None:
        with tx.savepoint():
            tx.save_call(CallRow("undone", "a1"))
            raise KeyError("one bad event")

    with s.state.transaction() as tx:
        tx.save_call(CallRow("kept", "a1"))
        with pytest.raises(KeyError):
            bad_event(tx)
        with tx.savepoint():
            tx.save_call(CallRow("also kept", "a1"))
    with s.state.reading() as tx:
        assert tx.load_call("kept") is not None
        assert tx.load_call("undone") is None
        assert tx.load_call("also kept") is not None


def test_calls_round_trip_and_age_out(s: Stores) -> None:
    call = CallRow(
        "c1",
        "agent",
        "Support",
        10**18,
        True,
        False,
        True,
        50,
        None,
        "dep_1",
        TurnTiming("user", 1_500_000, 2_000_000),
    )
    with s.state.transaction() as tx:
        tx.save_call(call)
        tx.save_call(CallRow("c2", "agent", last_event_ns=10, closed_ns=20))
        tx.save_call(CallRow("c3", "agent", last_event_ns=100))
        tx.record_exported("c2", [7], 20)
        tx.remember_turns("c2", [TurnTiming("user", 1, 2)])
    with s.state.transaction() as tx:
        assert tx.load_call("c1") == call
        assert sorted(tx.stale_calls(60, 10)) == ["c1"]  # open and silent since before 60
        assert tx.open_calls() == 2
        assert tx.forget_calls_closed_before(30, 10) == 1
        assert tx.load_call("c2") is None and tx.exported("c2") == set() and tx.turns("c2") == []
        call.closed_ns, call.latest_turn = 99, None
        tx.save_call(call)  # an update
    with s.state.reading() as tx:
        assert tx.load_call("c1") == call
        assert tx.open_calls() == 1


def test_the_ledger_of_a_call_without_a_row_is_forgotten_after_the_retention(s: Stores) -> None:
    """An evaluation's spans are ledgered under its call id, which may have no call row (never
    seen, or forgotten): the walk over the ledger's calls, ``limit`` of them at a time in id
    order, forgets those whose last span went out before the cutoff and that have no row."""
    with s.state.transaction() as tx:
        tx.save_call(CallRow("a1", "agent", last_event_ns=1))  # a row: forgotten with it, not here
        tx.record_exported("a1", [1], 5)
        tx.record_exported("b1", [2, 3], 5)  # no row, old: forgotten
        tx.record_exported("c1", [4], 5)
        tx.record_exported("c1", [5], 50)  # no row, but a span out since the cutoff: kept
        tx.record_exported("d1", [(1 << 64) - 1], 6)  # no row, old: forgotten
    with s.state.transaction() as tx:
        assert tx.forget_ledger_without_call("", 30, 2) == (2, "b1")  # a1 kept, b1 forgotten
        assert tx.forget_ledger_without_call("b1", 30, 2) == (1, "d1")  # c1 kept, d1 forgotten
        assert tx.forget_ledger_without_call("d1", 30, 2) == (0, None)  # the end: start again
    with s.state.reading() as tx:
        assert tx.exported("a1") == {1} and tx.exported("c1") == {4, 5}
        assert tx.exported("b1") == set() and tx.exported("d1") == set()
    with s.state.transaction() as tx:
        assert tx.forget_ledger_without_call("", 30, 10) == (0, None)  # fewer than the limit


def test_kept_events_in_order_until_dropped(s: Stores) -> None:
    with s.state.transaction() as tx:
        for body in (b"one", b"two", b"three"):
            tx.keep_event("c1", body)
        tx.keep_event("c2", b"other")
        assert tx.kept_events("c1") == [b"one", b"two", b"three"]
        tx.drop_kept_events("c1")
        assert tx.kept_events("c1") == []
        assert tx.kept_events("c2") == [b"other"]


def test_kept_events_by_id_and_some_of_them_dropped(s: Stores) -> None:
    with s.state.transaction() as tx:
        for body in (b"one", b"two", b"three"):
            tx.keep_event("c1", body)
        tx.keep_event("c2", b"other")
        kept = tx.kept_events_with_ids("c1")
        assert [body for _, body in kept] == [b"one", b"two", b"three"]
        assert [i for i, _ in kept] == sorted(i for i, _ in kept)
        (other_id, _), *_ = tx.kept_events_with_ids("c2")
        tx.drop_kept_events_by_id("c1", [kept[1][0], other_id])  # only the call's own
        tx.drop_kept_events_by_id("c1", [])
        tx.keep_event("c1", b"four")
        assert tx.kept_events("c1") == [b"one", b"three", b"four"]
        assert tx.kept_events("c2") == [b"other"]


def test_turns_known_once_and_the_latest_before_a_start(s: Stores) -> None:
    with s.state.transaction() as tx:
        tx.remember_turns("c1", [TurnTiming("user", 1_000, 2_000), TurnTiming("assistant", 3_000, None)])
        tx.remember_turns("c1", [TurnTiming("user", 1_000, 9_999)])  # known: stays as it was
        tx.remember_turns("c1", [TurnTiming("user", 3_000, 3_500)])
        assert _ordered(tx.turns("c1")) == [
            TurnTiming("user", 1_000, 2_000),
            TurnTiming("assistant", 3_000, None),
            TurnTiming("user", 3_000, 3_500),
        ]
        assert _ordered(tx.turns_starting_last_before("c1", 5_000)) == [
            TurnTiming("assistant", 3_000, None),
            TurnTiming("user", 3_000, 3_500),
        ]
        assert tx.turns_starting_last_before("c1", 3_000) == [TurnTiming("user", 1_000, 2_000)]
        assert tx.turns_starting_last_before("c1", 1_000) == []


def _ordered(turns: list[TurnTiming]) -> list[TurnTiming]:
    return sorted(turns, key=lambda t: (t.start_us, t.role))


def test_deployments_upsert_per_agent(s: Stores) -> None:
    with s.state.transaction() as tx:
        tx.set_deployment("a1", "d1", 10)
        tx.set_deployment("a1", "d2", 20)
        tx.set_deployment("a1", "d1", 5)
        tx.set_deployment("a2", "d1", 1)
    with s.state.reading() as tx:
        assert tx.deployments("a1") == {"d1": 5, "d2": 20}
        assert tx.deployments("nobody") == {}
    with s.state.transaction() as tx:
        tx.forget_deployment("a1", "d1")
        tx.forget_deployment("a1", "never")
    with s.state.reading() as tx:
        assert tx.deployments("a1") == {"d2": 20}
        assert tx.deployments("a2") == {"d1": 1}


def test_ledger_keeps_unsigned_64_bit_span_ids(s: Stores) -> None:
    high, low = (1 << 64) - 1, 1 << 63
    with s.state.transaction() as tx:
        tx.record_exported("c1", [high, low, 5], 1)
        tx.record_exported("c1", [high], 2)  # again: no error, no duplicate
    with s.state.reading() as tx:
        assert tx.exported("c1") == {high, low, 5}
        assert tx.exported("c2") == set()


def test_newly_exported_records_the_span_ids_and_names_those_not_recorded_before(s: Stores) -> None:
    high = (1 << 64) - 1
    with s.state.transaction() as tx:
        tx.record_exported("c1", [high], 1)
        assert tx.newly_exported("c1", [high, 6, 6, 1 << 63], 2) == {6, 1 << 63}
        assert tx.newly_exported("c1", [high, 6], 3) == set()
        assert tx.newly_exported("c2", [high], 3) == {high}  # per call
        assert tx.newly_exported("c2", [high], 4) == set()  # one id alone, already there
        assert tx.newly_exported("c1", [], 3) == set()
    with s.state.reading() as tx:
        assert tx.exported("c1") == {high, 6, 1 << 63}


def test_points_until_forgotten(s: Stores) -> None:
    with s.state.transaction() as tx:
        first, second = tx.add_point('{"a": 1}'), tx.add_point('{"a": 2}')
        more = [tx.add_point(f'{{"b": {i}}}') for i in range(300)]
    assert first < second < more[0]
    assert more == sorted(more) and len(set(more)) == 300
    with s.state.transaction() as tx:
        stored = tx.points()
        assert stored[:2] == [(first, '{"a": 1}'), (second, '{"a": 2}')]
        assert stored[2:] == [(i, f'{{"b": {n}}}') for n, i in enumerate(more)]  # each id its own point
        tx.forget_points(more[149])
        assert tx.points() == [(i, f'{{"b": {n}}}') for n, i in enumerate(more)][150:]


# --- spool ----------------------------------------------------------------------------------------
def test_spool_takes_oldest_first_and_merges_up_to_max_bytes(s: Stores) -> None:
    with s.state.transaction() as tx:
        ids = [tx.spool_add("traces", bytes([i]) * 100, i + 1, 1_000 + i, call_ends=[i]) for i in range(4)]
        tx.spool_add("metrics", b"m", 3, 5, epoch="e1")
    with s.reader.reading() as tx:
        one = tx.spool_take("traces", 0)
        merged = tx.spool_take("traces", 250)
    assert [e.id for e in one] == ids[:1]
    assert one[0] == SpoolEntry(ids[0], "traces", b"\x00" * 100, 1, 1_000, 0, [0])
    assert [e.id for e in merged] == ids[:2]
    with s.reader.reading() as tx:  # the sender reads past what it has acknowledged
        assert [e.id for e in tx.spool_take("traces", 250, after_id=ids[1])] == ids[2:]
        assert tx.spool_take("traces", 250, after_id=ids[3]) == []
    with s.state.transaction() as tx:
        tx.spool_delete(ids[:2])
        tx.spool_retried([ids[2]], 99)
        tx.spool_retried([ids[2]], 100)
        assert [(e.id, e.attempts) for e in tx.spool_take("traces", 1 << 20)] == [(ids[2], 2), (ids[3], 0)]
        stats = tx.spool_stats()
    assert stats.depth == {"traces": 2, "metrics": 1}
    assert stats.bytes == 201 and stats.oldest_ns == 5 and stats.dead_letters == 0


def test_spool_dead_letters_expiry_size_cap_and_supersede(s: Stores) -> None:
    with s.state.transaction() as tx:
        a = tx.spool_add("traces", b"a" * 10, 1, 100)
        b = tx.spool_add("traces", b"b" * 20, 2, 200)
        c = tx.spool_add("traces", b"c" * 30, 3, 300)
        m1 = tx.spool_add("metrics", b"1", 1, 400, epoch="e1")
        m2 = tx.spool_add("metrics", b"22", 1, 500, epoch="e1")
        other = tx.spool_add("metrics", b"3", 1, 500, epoch="e2")
        assert tx.spool_bytes() == 64
        entry = tx.spool_take("traces", 0)[0]
        tx.dead_letter(entry, 1_000, "400", "bad request")
        assert tx.spool_stats().dead_letters == 1
        assert tx.spool_expire(250) == [("traces", 2)]  # b: created before 250
        assert tx.spool_supersede_metrics("e1", m2) == 1  # m1, not e2's
        assert tx.spool_drop_oldest(25) == [("traces", 3)]  # c (30 bytes) frees enough
        assert [e.id for e in tx.spool_take("metrics", 1 << 20)] == [m2, other]
        assert tx.spool_take("traces", 1 << 20) == []
        tx.purge_dead_letters(1_001)
        assert tx.spool_stats().dead_letters == 0
    del a, b, c, m1


def test_acknowledged_exports_are_deleted_from_the_spool_by_id_and_creation(s: Stores) -> None:
    with s.state.transaction() as tx:
        first = tx.spool_add("traces", b"1", 1, 10)
        second = tx.spool_add("traces", b"2", 1, 20)
        entries = tx.spool_take("traces", 1 << 20)
    s.acks.record(entries, [])
    assert sorted(s.acks.acked()) == [(first, 10), (second, 20)]
    with s.state.transaction() as tx:
        # a row of another life of the spool (same id, other creation time) is not touched
        assert tx.spool_delete_acked([(first, 10), (second, 999)]) == 1
        assert [e.id for e in tx.spool_take("traces", 1 << 20)] == [second]
    s.acks.forget([(first, 10)])
    assert s.acks.acked() == [(second, 20)]
    s.acks.record([], [second])
    assert s.acks.acked() == []


# --- cursors --------------------------------------------------------------------------------------
def test_meta_poll_watermarks_and_running_calls(s: Stores) -> None:
    with s.state.transaction() as tx:
        assert tx.get_meta("k") is None
        tx.set_meta("k", "v1")
        tx.set_meta("k", "v2")
        assert tx.poll_watermark("a1") == PollWatermark(None, None)
        tx.save_poll_watermark("a1", "call-9", 123, 1)
        tx.save_poll_watermark("a1", "call-10", None, 2)
        tx.remember_running([RunningCall("c1", "a1", 5), RunningCall("c2", "a1", 6)])
        tx.remember_running([RunningCall("c1", "a1", 99)])  # known: kept as first seen
    with s.state.transaction() as tx:
        assert tx.get_meta("k") == "v2"
        assert tx.poll_watermark("a1") == PollWatermark("call-10", None)
        assert sorted(tx.running_calls(), key=lambda r: r.call_id) == [
            RunningCall("c1", "a1", 5),
            RunningCall("c2", "a1", 6),
        ]
        tx.forget_running("c1")
        assert [r.call_id for r in tx.running_calls()] == ["c2"]


def test_backfill_cursor_counts_calls_and_keeps_its_mark_until_a_catch_up_moves_it(s: Stores) -> None:
    with s.state.transaction() as tx:
        assert tx.backfill_cursor("a1", "..").done is False
        tx.save_backfill(
            "a1", "..", cursor="p2", done=False, calls=100, head_id="h1", head_start_ns=10, new_mark=False
        )
        tx.save_backfill(
            "a1", "..", cursor=None, done=True, calls=50, head_id="h2", head_start_ns=20, new_mark=False
        )
        saved = tx.backfill_cursor("a1", "..")
        assert (saved.cursor, saved.done, saved.head_id, saved.head_start_ns) == (None, True, "h1", 10)
        tx.save_backfill(
            "a1", "..", cursor=None, done=True, calls=1, head_id="h3", head_start_ns=30, new_mark=True
        )
        assert tx.backfill_cursor("a1", "..").head_id == "h3"
        assert tx.backfill_cursor("a1", "1..2").cursor is None


# --- lease ----------------------------------------------------------------------------------------
def test_one_lease_holder_at_a_time(engine: Engine) -> None:
    first, second = engine.lease("pipeline"), engine.lease("pipeline")
    assert first.acquire()
    assert first.held and first.renew()
    assert not second.acquire(wait_s=0.2)
    assert not second.held
    first.release()
    assert not first.held
    assert second.acquire(wait_s=5.0)
    assert second.held
    other = engine.lease("serve")  # another name: another lease
    assert other.acquire()
    other.release()
    second.release()
