"""The rules of sessions, one command at a time, against ``Store`` alone.

The store never reads a clock: every call here passes ``now``, so time moves
only when a test says so, and nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessiond import rules
from sessiond.blocks import read_block
from sessiond.errors import Conflict, InvalidRequest, SessionExpired, SessionNotFound, TooLarge
from sessiond.limits import MAX_TTL, MAX_VERSION, META_MAX_BYTES, META_MAX_DEPTH
from sessiond.model import ACTIVE, EXPIRED, US, Change, Record, Session
from sessiond.records import delete_line, put_line
from sessiond.rules import Rules
from sessiond.store import PAGE_MAX_BYTES, ReplayRefused, Store

T0 = 1_800_000_000 * US


def at(seconds: float) -> int:
    """A moment ``seconds`` after T0, in the store's microseconds."""
    return T0 + round(seconds * US)


def state(store: Store) -> tuple[list[Session], dict[str, Any]]:
    """Everything observable: the records in creation order, and the stats."""
    return store.snapshot(), store.stats(at(0))


def assert_consistent(store: Store, now: int) -> None:
    """The incremental counters agree with a recount from the records."""
    records = store.snapshot()
    stats = store.stats(now)
    active = [s for s in records if s.status == ACTIVE]
    assert stats["total_sessions"] == len(records) == len(store)
    assert stats["active"] == len(active)
    assert stats["expired"] == len(records) - len(active)
    assert stats["unique_users"] == len({s.user for s in records})
    expected_avg = round(sum(s.ttl for s in records) / len(records), 1) if records else 0.0
    assert stats["average_ttl_seconds"] == expected_avg
    assert stats["due_next_minute"] == sum(1 for s in active if s.expires_at <= now + 60 * US)


def make(store: Store, seconds: float = 0, **kw: Any) -> Session:
    session, _ = rules.create(store, at(seconds), **kw)
    return session


# -- create ----------------------------------------------------------------


def test_create_applies_defaults_and_generates_a_random_hex_id() -> None:
    store = Store()
    s, changes = rules.create(store, at(0))
    assert len(s.id) == 32 and int(s.id, 16) >= 0
    assert (s.user, s.status, s.ttl, s.meta, s.version) == ("anonymous", ACTIVE, 3600, {}, 1)
    assert s.created_at == s.last_access == at(0)
    assert s.expires_at == at(3600) and s.expired_at is None
    assert changes == [Change("created", s.id, None, s)]
    assert make(store).id != s.id


def test_create_takes_its_default_ttl_from_the_rules() -> None:
    store = Store(Rules(default_ttl=90))
    assert make(store).expires_at == at(90)
    store.rules.default_ttl = 30
    assert make(store, 1).expires_at == at(31)


def test_create_uses_a_given_id_user_ttl_and_meta() -> None:
    store = Store()
    s = make(store, sid="legacy.ID_1-a", user="alice", ttl=5, meta={"k": ["v", 1]})
    assert (s.id, s.user, s.ttl, s.meta) == ("legacy.ID_1-a", "alice", 5, {"k": ["v", 1]})
    assert store.peek("legacy.ID_1-a") == s


@pytest.mark.parametrize("sid", ["", "a b", "x" * 129, "caf\u00e9", "a/b", "a:b"])
def test_create_rejects_an_invalid_id_without_change(sid: str) -> None:
    store = Store()
    with pytest.raises(InvalidRequest) as caught:
        rules.create(store, at(0), sid=sid)
    # In the words the daemon's decoder used when it checked ids itself.
    assert str(caught.value) == (
        "invalid request: sid must be a session id (use 1-128 of A-Z a-z 0-9 . _ -)"
    )
    assert len(store) == 0


def test_create_accepts_an_id_of_128_characters() -> None:
    assert make(Store(), sid="x" * 128).id == "x" * 128


def test_create_refuses_a_duplicate_id_and_keeps_the_original() -> None:
    store = Store()
    first = make(store, sid="dup", user="alice")
    rules.expire(store, at(1), "dup")
    expired = store.peek("dup")
    before = state(store)
    with pytest.raises(Conflict, match="already exists"):
        rules.create(store, at(2), sid="dup", user="bob")
    assert state(store) == before
    assert expired is not None and expired.user == first.user


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL + 1, True, 1.5, "60"])
def test_create_rejects_an_invalid_ttl_without_change(ttl: Any) -> None:
    store = Store()
    with pytest.raises(InvalidRequest, match="ttl"):
        rules.create(store, at(0), ttl=ttl)
    assert len(store) == 0


@pytest.mark.parametrize("user", ["", "u" * 257])
def test_create_rejects_an_invalid_user_without_change(user: str) -> None:
    store = Store()
    with pytest.raises(InvalidRequest, match="user"):
        rules.create(store, at(0), user=user)
    assert len(store) == 0


def nested(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    "meta",
    [
        {"": "v"},
        {"k" * 257: "v"},
        {"k": float("nan")},
        {"k": float("inf")},
        {"k": object()},
        {"k": {1: "v"}},
        {"k": 2**64},
        {"k": -(2**63) - 1},
        {"k": nested(META_MAX_DEPTH)},
    ],
    ids=["empty-key", "long-key", "nan", "inf", "object", "int-key", "big-int", "small-int",
         "too-deep"],
)
def test_create_rejects_invalid_meta_without_change(meta: dict[str, Any]) -> None:
    store = Store()
    with pytest.raises(InvalidRequest):
        rules.create(store, at(0), meta=meta)
    assert len(store) == 0


def test_meta_limits_are_inclusive() -> None:
    store = Store()
    deepest = make(store, meta={"k": nested(META_MAX_DEPTH - 1)})
    assert deepest.meta["k"] == nested(META_MAX_DEPTH - 1)
    fits = "x" * (META_MAX_BYTES - len(b'{"k":""}'))
    assert make(store, meta={"k": fits}).meta["k"] == fits
    assert make(store, meta={"k" * 256: 2**64 - 1, "m": -(2**63)}).meta["m"] == -(2**63)
    with pytest.raises(TooLarge, match="exceeds the limit"):
        rules.create(store, at(0), meta={"k": fits + "x"})
    assert len(store) == 3


def test_max_lifetime_caps_the_first_deadline() -> None:
    store = Store(Rules(max_lifetime=10))
    assert make(store, ttl=3600).expires_at == at(10)
    assert make(store, ttl=5).expires_at == at(5)


# -- get -------------------------------------------------------------------


def test_get_of_an_unknown_or_invalid_id_fails() -> None:
    store = Store()
    with pytest.raises(SessionNotFound):
        rules.get(store, at(0), "nope")
    with pytest.raises(InvalidRequest):
        rules.get(store, at(0), "no pe")


def test_get_reports_active_until_the_deadline_and_changes_nothing() -> None:
    store = Store()
    s = make(store, ttl=10)
    got, changes = rules.get(store, at(10) - 1, s.id)
    assert got is s and changes == []


def test_get_reports_expired_after_deadline() -> None:
    store = Store()
    s = make(store, ttl=10)
    got, changes = rules.get(store, at(15), s.id)
    assert got.status == EXPIRED and got.version == 2
    # Expired at its deadline, not at the moment somebody looked.
    assert got.expired_at == s.expires_at == at(10)
    assert changes == [Change("expired", s.id, s, got)]
    assert store.stats(at(15))["expiries_done"] == 1
    again, changes = rules.get(store, at(20), s.id)
    assert again is got and changes == []
    assert store.stats(at(20))["expiries_done"] == 1
    assert_consistent(store, at(20))


def test_get_touch_updates_last_access_and_slides_the_deadline() -> None:
    store = Store()
    s = make(store, ttl=10)
    got, changes = rules.get(store, at(4), s.id, touch=True)
    assert (got.last_access, got.expires_at, got.version) == (at(4), at(14), 2)
    assert changes == [Change("updated", s.id, s, got)]
    assert rules.get(store, at(13), s.id)[0].status == ACTIVE
    assert_consistent(store, at(13))


def test_get_touch_is_capped_by_max_lifetime() -> None:
    store = Store(Rules(max_lifetime=12))
    s = make(store, ttl=10)
    assert rules.get(store, at(8), s.id, touch=True)[0].expires_at == at(12)


def test_get_touch_does_not_revive_an_expired_session() -> None:
    store = Store()
    s = make(store, ttl=10)
    got, changes = rules.get(store, at(11), s.id, touch=True)
    assert got.status == EXPIRED and [c.kind for c in changes] == ["expired"]


def test_get_touch_expires_a_session_older_than_a_lowered_max_lifetime() -> None:
    store = Store()
    s = make(store, ttl=100)
    store.rules.max_lifetime = 10
    got, changes = rules.get(store, at(20), s.id, touch=True)
    assert got.status == EXPIRED and got.expired_at == at(20) and got.expires_at == at(100)
    assert [c.kind for c in changes] == ["expired"]


# -- set / unset -----------------------------------------------------------


def test_set_stores_the_value_and_bumps_last_access_and_version() -> None:
    store = Store()
    s = make(store, ttl=10, meta={"a": "1"})
    got, changes = rules.set(store, at(3), s.id, "b", {"x": [1, 2.5, None, True]})
    assert got.meta == {"a": "1", "b": {"x": [1, 2.5, None, True]}}
    assert (got.last_access, got.version, got.expires_at) == (at(3), 2, at(10))
    assert changes == [Change("updated", s.id, s, got)]
    assert s.meta == {"a": "1"}  # records are never changed in place


def test_set_with_the_expected_version_succeeds() -> None:
    store = Store()
    s = make(store)
    assert rules.set(store, at(1), s.id, "k", "v", expect_version=1)[0].version == 2


def test_set_with_a_stale_expected_version_is_a_conflict_and_changes_nothing() -> None:
    store = Store()
    s = make(store)
    rules.set(store, at(1), s.id, "k", "v1")
    before = state(store)
    with pytest.raises(Conflict, match="version 2, not 1"):
        rules.set(store, at(2), s.id, "k", "v2", expect_version=1)
    assert state(store) == before


@pytest.mark.parametrize("expire_first", [True, False], ids=["expired", "past-deadline"])
def test_writes_to_an_expired_session_are_refused_and_change_nothing(expire_first: bool) -> None:
    store = Store()
    s = make(store, ttl=10, meta={"k": "v"})
    if expire_first:
        rules.expire(store, at(5), s.id)
    before = state(store)
    writes: list[Callable[[], object]] = [
        lambda: rules.set(store, at(11), s.id, "k", "w"),
        lambda: rules.set(store, at(11), s.id, "k", "w", expect_version=99),
        lambda: rules.unset(store, at(11), s.id, "k"),
        lambda: rules.refresh(store, at(11), s.id),
    ]
    for write in writes:
        with pytest.raises(SessionExpired):
            write()
        # Not even the lazy expiry: a refused request must leave no change
        # that nobody would write to the journal.
        assert state(store) == before


@pytest.mark.parametrize(
    "key, value, error",
    [("", "v", InvalidRequest), ("k" * 257, "v", InvalidRequest),
     ("k", float("nan"), InvalidRequest), ("k", "x" * META_MAX_BYTES, TooLarge)],
    ids=["empty-key", "long-key", "nan", "too-large"],
)
def test_set_rejects_bad_keys_and_values_without_change(
    key: str, value: Any, error: type[Exception]
) -> None:
    store = Store()
    s = make(store, meta={"k": "v"})
    before = state(store)
    with pytest.raises(error):
        rules.set(store, at(1), s.id, key, value)
    assert state(store) == before


def test_unset_removes_the_key() -> None:
    store = Store()
    s = make(store, meta={"a": "1", "b": "2"})
    got, changes = rules.unset(store, at(2), s.id, "a")
    assert got.meta == {"b": "2"} and got.version == 2 and got.last_access == at(2)
    assert changes == [Change("updated", s.id, s, got)]


def test_unset_of_a_missing_key_is_not_found_and_changes_nothing() -> None:
    store = Store()
    s = make(store, meta={"a": "1"})
    before = state(store)
    with pytest.raises(SessionNotFound, match="no meta key 'b'"):
        rules.unset(store, at(1), s.id, "b")
    assert state(store) == before


def test_unset_with_a_stale_expected_version_is_a_conflict() -> None:
    store = Store()
    s = make(store, meta={"a": "1"})
    with pytest.raises(Conflict):
        rules.unset(store, at(1), s.id, "a", expect_version=7)
    assert store.peek(s.id) is s


# -- delete ----------------------------------------------------------------


def test_delete_removes_the_session_whatever_its_status() -> None:
    store = Store()
    a, b = make(store, user="u1"), make(store, user="u2", ttl=1)
    sid, changes = rules.delete(store, at(1), a.id)
    assert sid == a.id and [(c.kind, c.before, c.after) for c in changes] == [
        ("deleted", a, None)
    ]
    rules.expire(store, at(1), b.id)
    rules.delete(store, at(2), b.id)
    assert len(store) == 0 and store.stats(at(2))["unique_users"] == 0
    with pytest.raises(SessionNotFound):
        rules.delete(store, at(3), a.id)
    assert_consistent(store, at(3))


# -- list ------------------------------------------------------------------


def test_list_filters_by_status_and_user_in_creation_order() -> None:
    store = Store()
    a = make(store, user="alice", ttl=10)
    b = make(store, user="bob", ttl=100)
    c = make(store, user="alice", ttl=100)
    rules.expire(store, at(1), c.id)
    page, cursor, changes = store.list_page(at(20))
    assert [s.id for s in page] == [a.id, b.id, c.id] and cursor is None
    # The past-due session is listed as expired, and that is a change to persist.
    assert [c.kind for c in changes] == ["expired"] and page[0].status == EXPIRED
    assert [s.id for s in store.list_page(at(20), status=ACTIVE)[0]] == [b.id]
    assert [s.id for s in store.list_page(at(20), status=EXPIRED)[0]] == [a.id, c.id]
    assert [s.id for s in store.list_page(at(20), user="alice")[0]] == [a.id, c.id]
    assert store.list_page(at(20), user="alice", status=ACTIVE)[0] == []
    assert store.list_page(at(20), user="nobody") == ([], None, [])


def test_list_page_ends_at_its_byte_budget_and_the_cursor_goes_on() -> None:
    store = Store()
    big = "x" * (META_MAX_BYTES - 100)
    ids = [make(store, meta={"blob": big}).id for _ in range(40)]
    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    while True:
        page, cursor, _ = store.list_page(at(1), cursor=cursor)
        assert page, "a page always holds a session while any remain"
        sizes.append(len(page))
        seen += [s.id for s in page]
        if cursor is None:
            break
    assert seen == ids
    assert len(sizes) >= 3 and max(sizes) <= PAGE_MAX_BYTES // (META_MAX_BYTES - 100) + 1
    # However small the budget, each page makes progress.
    one, nxt, _ = store.list_page(at(1), max_bytes=1)
    assert [s.id for s in one] == ids[:1] and nxt is not None


def test_list_pages_through_everything_once_with_limit_and_cursor() -> None:
    store = Store()
    ids = [make(store, sid=f"s{i:03d}").id for i in range(25)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page, cursor, _ = store.list_page(at(1), limit=10, cursor=cursor)
        seen += [s.id for s in page]
        pages += 1
        if cursor is None:
            break
    assert seen == ids and pages == 3


def test_list_paging_with_a_filter_skips_the_others() -> None:
    store = Store()
    for i in range(30):
        make(store, sid=f"s{i:02d}", user="even" if i % 2 == 0 else "odd")
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor, _ = store.list_page(at(1), user="odd", limit=4, cursor=cursor)
        assert len(page) <= 4
        seen += [s.id for s in page]
        if cursor is None:
            break
    assert seen == [f"s{i:02d}" for i in range(1, 30, 2)]


def test_list_cursor_sees_deletions_and_sessions_created_meanwhile() -> None:
    store = Store()
    for i in range(6):
        make(store, sid=f"s{i}")
    page, cursor, _ = store.list_page(at(1), limit=3)
    assert [s.id for s in page] == ["s0", "s1", "s2"]
    rules.delete(store, at(1), "s2")  # the cursor's own session
    rules.delete(store, at(1), "s3")
    make(store, 1, sid="s6")
    rest, cursor, _ = store.list_page(at(1), cursor=cursor)
    assert [s.id for s in rest] == ["s4", "s5", "s6"] and cursor is None


def test_list_cursor_survives_a_slot_packing() -> None:
    store = Store()
    ids = [make(store, sid=f"s{i:04d}").id for i in range(3000)]
    page, cursor, _ = store.list_page(at(1), limit=1000)
    assert [s.id for s in page] == ids[:1000]
    # Remove most sessions on both sides of the cursor, the cursor's own
    # included: enough empty slots to make the store pack them away.
    doomed = set(ids[500:2500])
    for sid in doomed:
        rules.delete(store, at(2), sid)
    assert len(store._slots) < 3000, "the deletions should have packed the slots"
    rest: list[str] = []
    while cursor is not None:
        page, cursor, _ = store.list_page(at(2), limit=100, cursor=cursor)
        rest += [s.id for s in page]
    assert rest == ids[2500:]
    assert_consistent(store, at(2))


@pytest.mark.parametrize(
    "kw", [{"cursor": "x"}, {"cursor": "-1"}, {"cursor": "1:2:s"}, {"cursor": "\u00b2"},
           {"cursor": "9" * 40}, {"status": "gone"}, {"limit": 0}, {"limit": True}],
    ids=["word", "negative", "old-shape", "superscript", "huge", "status", "limit-zero",
         "limit-bool"],
)
def test_list_rejects_bad_arguments(kw: dict[str, Any]) -> None:
    store = Store()
    make(store)
    with pytest.raises(InvalidRequest):
        store.list_page(at(1), **kw)


# -- deadlines -------------------------------------------------------------


def test_deadlines_queued_moves_whenever_the_next_deadline_could_come_forward() -> None:
    # The daemon looks for a new next deadline only when this count moves:
    # every change that queues one must move it, and a change that cannot
    # bring one forward need not.
    store = Store(Rules(expired_retention=60))
    seen = store.deadlines_queued

    def moved() -> bool:
        nonlocal seen
        before, seen = seen, store.deadlines_queued
        return seen != before

    s = make(store, ttl=100)
    assert moved() and store.next_deadline() == at(100)
    rules.set(store, at(1), s.id, "k", "v")
    rules.unset(store, at(2), s.id, "k")
    rules.get(store, at(3), s.id)
    assert not moved(), "no deadline of these moves"
    rules.refresh(store, at(4), s.id, ttl=10)
    assert moved() and store.next_deadline() == at(14)
    rules.get(store, at(5), s.id, touch=True)
    assert moved() and store.next_deadline() == at(15)
    other = make(store, ttl=1000)
    assert moved()
    rules.delete(store, at(6), other.id)
    assert not moved(), "a removal only puts the next deadline later"
    rules.expire(store, at(7), s.id)
    assert moved() and store.next_deadline() == at(67), "retention of the expired one"


# -- expire ----------------------------------------------------------------


def test_expire_sets_status_and_expired_at_now() -> None:
    store = Store()
    s = make(store, ttl=100)
    got, changes = rules.expire(store, at(7), s.id)
    assert (got.status, got.expired_at, got.version, got.expires_at) == (EXPIRED, at(7), 2, at(100))
    assert changes == [Change("expired", s.id, s, got)]
    assert_consistent(store, at(7))


def test_expire_is_idempotent() -> None:
    store = Store()
    s = make(store, ttl=100)
    first, _ = rules.expire(store, at(7), s.id)
    again, changes = rules.expire(store, at(9), s.id)
    assert again is first and changes == []
    assert store.stats(at(9))["expiries_done"] == 1


def test_expire_of_a_past_due_session_dates_it_at_its_deadline() -> None:
    store = Store()
    s = make(store, ttl=10)
    assert rules.expire(store, at(30), s.id)[0].expired_at == at(10)


def test_expire_of_an_unknown_session_is_not_found() -> None:
    with pytest.raises(SessionNotFound):
        rules.expire(Store(), at(0), "missing")


# -- refresh ---------------------------------------------------------------


def test_refresh_sets_the_deadline_from_now() -> None:
    store = Store()
    s = make(store, ttl=10)
    got, changes = rules.refresh(store, at(6), s.id)
    assert (got.ttl, got.last_access, got.expires_at, got.version) == (10, at(6), at(16), 2)
    assert changes == [Change("updated", s.id, s, got)]
    longer, _ = rules.refresh(store, at(7), s.id, ttl=60)
    assert (longer.ttl, longer.expires_at) == (60, at(67))
    assert_consistent(store, at(7))


def test_refresh_with_revive_brings_back_an_expired_session() -> None:
    store = Store()
    s = make(store, ttl=10)
    expired, _ = rules.expire(store, at(2), s.id)
    got, changes = rules.refresh(store, at(5), s.id, revive=True)
    assert (got.status, got.expired_at, got.expires_at, got.version) == (ACTIVE, None, at(15), 3)
    assert changes == [Change("updated", s.id, expired, got)]
    assert_consistent(store, at(5))


def test_refresh_with_revive_of_a_past_due_session_reports_its_expiry_first() -> None:
    store = Store()
    s = make(store, ttl=10)
    got, changes = rules.refresh(store, at(12), s.id, ttl=5, revive=True)
    assert [c.kind for c in changes] == ["expired", "updated"]
    assert changes[0].after is not None and changes[0].after.expired_at == at(10)
    assert (got.status, got.expires_at, got.version) == (ACTIVE, at(17), 3)
    assert store.stats(at(12))["expiries_done"] == 1


def test_refresh_is_capped_by_max_lifetime() -> None:
    store = Store(Rules(max_lifetime=100))
    s = make(store, ttl=60)
    assert rules.refresh(store, at(50), s.id, ttl=3600)[0].expires_at == at(100)
    assert rules.refresh(store, at(60), s.id, ttl=5)[0].expires_at == at(65)


def test_refresh_after_max_lifetime_is_refused_even_with_revive() -> None:
    store = Store(Rules(max_lifetime=100))
    s = make(store, ttl=100)
    store.expire_due(at(100))
    before = state(store)
    with pytest.raises(SessionExpired, match="max_lifetime"):
        rules.refresh(store, at(150), s.id, ttl=10, revive=True)
    assert state(store) == before


@pytest.mark.parametrize("ttl", [0, MAX_TTL + 1])
def test_refresh_rejects_an_invalid_ttl_without_change(ttl: int) -> None:
    store = Store()
    s = make(store, ttl=10)
    before = state(store)
    with pytest.raises(InvalidRequest, match="ttl"):
        rules.refresh(store, at(20), s.id, ttl=ttl, revive=True)
    assert state(store) == before
    assert store.peek(s.id) is s


# -- cleanup ---------------------------------------------------------------


def cleanup_fixture() -> tuple[Store, dict[str, Session]]:
    store = Store()
    made = {
        "expired": make(store, sid="expired", ttl=100),
        "past_due": make(store, sid="past_due", ttl=5),
        "soon": make(store, sid="soon", ttl=50),
        "later": make(store, sid="later", ttl=500),
    }
    rules.expire(store, at(1), "expired")
    return store, made


def test_cleanup_removes_expired_and_past_due_sessions() -> None:
    store, _ = cleanup_fixture()
    result, changes = store.cleanup(at(10))
    assert (len(result.removed), result.remaining) == (2, 2)
    assert result.removed == ["expired", "past_due"]
    assert [(c.kind, c.sid, c.after) for c in changes] == [
        ("purged", "expired", None), ("purged", "past_due", None)
    ]
    assert [s.id for s in store.snapshot()] == ["soon", "later"]
    assert store.stats(at(10))["purges_done"] == 2
    assert_consistent(store, at(10))


def test_cleanup_dry_run_reports_and_changes_nothing() -> None:
    store, _ = cleanup_fixture()
    before = state(store)
    result, changes = store.cleanup(at(10), dry_run=True)
    assert (len(result.removed), result.remaining) == (2, 2)
    assert result.removed == ["expired", "past_due"] and changes == []
    assert state(store) == before


def test_cleanup_before_also_removes_sessions_due_before_it() -> None:
    store, _ = cleanup_fixture()
    result, _ = store.cleanup(at(10), before=at(100))
    assert result.removed == ["expired", "past_due", "soon"]
    assert [s.id for s in store.snapshot()] == ["later"]


def test_cleanup_in_slices_removes_what_it_would_at_once_and_spares_sessions_made_since() -> None:
    store = Store()
    for i in range(20):
        make(store, sid=f"s{i:02d}", ttl=5 if i % 3 else 500)
    upto = store.last_seq()
    removed: list[str] = []
    after = -1
    slices = 0
    while True:
        cleaned, _ = store.cleanup(at(10), after=after, upto=upto, most=4)
        removed += cleaned.removed
        slices += 1
        if slices == 2:
            # Made while the cleanup runs, and due: not the cleanup's to remove.
            make(store, sid="late", ttl=5)
        if cleaned.resume is None:
            break
        after = cleaned.resume
    assert slices == 5
    assert removed == [f"s{i:02d}" for i in range(20) if i % 3]
    assert [s.id for s in store.snapshot()] == [f"s{i:02d}" for i in range(0, 20, 3)] + ["late"]
    assert_consistent(store, at(10))


def test_cleanup_rejects_a_before_that_is_not_a_timestamp() -> None:
    store, _ = cleanup_fixture()
    before = state(store)
    with pytest.raises(InvalidRequest, match="before"):
        store.cleanup(at(10), before="yesterday")  # type: ignore[arg-type]
    assert state(store) == before


# -- import ----------------------------------------------------------------


def record(sid: str, **kw: Any) -> Session:
    fields: dict[str, Any] = dict(
        id=sid, user="imp", status="active", ttl=100, meta={}, created_at=at(0),
        last_access=at(0), expires_at=at(100), version=1,
    )
    fields.update(kw)
    return Session(**fields)


def test_import_sessions_imports_updates_and_skips_with_reasons() -> None:
    store = Store()
    make(store, sid="old", ttl=100)
    make(store, sid="newer", ttl=100)
    result, changes = store.import_sessions(at(5), [
        record("fresh"),
        record("newer", version=2, meta={"from": "import"}),
        record("old", version=1),
        record("bad id"),
        record("badstatus", status="zombie"),
        record("badttl", ttl=MAX_TTL + 1),
        record("baduser", user="u" * 257),
        record("badversion", version=0),
        record("badmeta", meta={"k": float("nan")}),
    ])
    assert (result.imported, result.updated, result.skipped) == (1, 1, 7)
    assert result.reasons[0] == "old: already present and not newer"
    assert all(r.startswith(p) for r, p in zip(result.reasons[1:], [
        "bad id:", "badstatus:", "badttl:", "baduser:", "badversion:", "badmeta:"
    ], strict=True))
    assert [(c.kind, c.sid) for c in changes] == [("created", "fresh"), ("updated", "newer")]
    newer = store.peek("newer")
    assert newer is not None and newer.meta == {"from": "import"}
    assert [s.id for s in store.snapshot()] == ["old", "newer", "fresh"]
    assert_consistent(store, at(5))


def test_import_prefers_the_later_access_at_the_same_version() -> None:
    store = Store()
    make(store, sid="s", ttl=100)
    result, _ = store.import_sessions(at(5), [record("s", last_access=at(3))])
    assert result.updated == 1
    result, _ = store.import_sessions(at(5), [record("s", last_access=at(2))])
    assert result.skipped == 1


def test_import_of_an_expired_record_without_expired_at_dates_it_at_its_deadline() -> None:
    store = Store()
    store.import_sessions(at(500), [record("e", status="expired", expires_at=at(100))])
    got = store.peek("e")
    assert got is not None and got.status is EXPIRED and got.expired_at == at(100)


def test_imported_past_due_session_is_expired_by_the_timer() -> None:
    store = Store()
    store.import_sessions(at(500), [record("late", expires_at=at(100))])
    assert store.next_deadline() == at(100)
    changes = store.expire_due(at(500))
    assert [(c.kind, c.sid) for c in changes] == [("expired", "late")]


# -- revert ----------------------------------------------------------------


def busy_store() -> Store:
    store = Store(Rules(expired_retention=50))
    for i in range(8):
        make(store, i, sid=f"s{i}", user=f"u{i % 3}", ttl=10 + i, meta={"i": i})
    rules.expire(store, at(9), "s7")
    return store


def every_kind_of_change(store: Store) -> list[Change]:
    made: list[Change] = []
    made += rules.create(store, at(12), sid="new", ttl=5)[1]
    made += rules.set(store, at(12), "s6", "k", "v")[1]
    made += rules.unset(store, at(12), "s6", "i")[1]
    made += rules.delete(store, at(12), "s5")[1]
    made += rules.expire(store, at(12), "s4")[1]
    made += rules.refresh(store, at(12), "s7", revive=True)[1]
    # past due: expired + updated
    made += rules.refresh(store, at(12), "s0", ttl=30, revive=True)[1]
    made += rules.get(store, at(12), "s1")[1]
    made += rules.get(store, at(12), "new", touch=True)[1]
    made += store.expire_due(at(13))
    made += store.purge_due(at(70))
    made += store.cleanup(at(70))[1]
    made += store.import_sessions(at(70), [record("imp"), record("s6", version=9)])[1]
    return made


def test_revert_restores_the_exact_prior_state_and_counters() -> None:
    store = busy_store()
    before = state(store), store.stats(at(13)), store.next_deadline()
    changes = every_kind_of_change(store)
    assert {c.kind for c in changes} == {"created", "updated", "deleted", "expired", "purged"}
    assert state(store) != before[0]
    store.revert(changes)
    assert (state(store), store.stats(at(13)), store.next_deadline()) == before
    assert_consistent(store, at(13))
    # The queues still drive the reverted store correctly.
    expired = store.expire_due(at(30))
    assert sorted(c.sid for c in expired) == [f"s{i}" for i in range(7)]
    assert_consistent(store, at(30))


def test_revert_after_a_packing_puts_sessions_back_in_creation_order() -> None:
    store = Store()
    for i in range(3000):
        make(store, sid=f"s{i:04d}", ttl=100 + i)
    before = state(store)
    changes: list[Change] = []
    for i in range(0, 3000, 3):
        changes += rules.set(store, at(1), f"s{i:04d}", "k", "v")[1]
        changes += rules.delete(store, at(1), f"s{i:04d}")[1]
    for i in range(1, 3000, 3):
        changes += rules.delete(store, at(1), f"s{i:04d}")[1]
    assert len(store._slots) < 3000, "the deletions should have packed the slots"
    store.revert(changes)
    assert state(store) == before
    page, cursor, _ = store.list_page(at(1), limit=7)
    assert [s.id for s in page] == [f"s{i:04d}" for i in range(7)] and cursor is not None


# -- stats -----------------------------------------------------------------


def test_stats_count_sessions_users_ttl_and_work_done() -> None:
    store = Store(Rules(expired_retention=100))
    assert store.stats(at(0)) == {
        "total_sessions": 0, "active": 0, "expired": 0, "unique_users": 0,
        "average_ttl_seconds": 0.0, "due_next_minute": 0, "expiries_done": 0,
        "purges_done": 0,
    }
    make(store, sid="a", user="alice", ttl=10)
    make(store, sid="b", user="alice", ttl=61)
    make(store, sid="c", user="bob", ttl=30)
    make(store, sid="d", ttl=1)
    stats = store.stats(at(0))
    assert stats["average_ttl_seconds"] == round(102 / 4, 1)
    assert (stats["unique_users"], stats["due_next_minute"]) == (3, 3)
    rules.refresh(store, at(0), "a", ttl=120)  # leaves a stale entry behind, due soon
    rules.delete(store, at(0), "c")
    assert store.stats(at(0))["due_next_minute"] == 1
    store.expire_due(at(5))
    store.purge_due(at(105))
    stats = store.stats(at(105))
    assert (stats["total_sessions"], stats["expiries_done"], stats["purges_done"]) == (2, 1, 1)
    assert_consistent(store, at(105))


def test_due_next_minute_counts_a_session_revived_onto_its_old_deadline_once() -> None:
    store = Store()
    s = make(store, ttl=10)
    rules.expire(store, at(5), s.id)
    rules.refresh(store, at(5), s.id, ttl=5, revive=True)  # the same deadline as before
    assert store.stats(at(5))["due_next_minute"] == 1
    assert [c.kind for c in store.expire_due(at(10))] == ["expired"]


# -- the timer's side: expire_due, purge_due, next_deadline ------------------


def test_expire_due_expires_exactly_the_sessions_due_at_their_deadlines() -> None:
    store = Store()
    a, b = make(store, ttl=10), make(store, ttl=20)
    c, d = make(store, ttl=30), make(store, ttl=40)
    rules.refresh(store, at(5), a.id, ttl=40)  # moved past the cut
    rules.delete(store, at(5), c.id)
    rules.expire(store, at(5), d.id)
    assert store.next_deadline() == at(20)
    changes = store.expire_due(at(31))
    assert [(ch.kind, ch.sid) for ch in changes] == [("expired", b.id)]
    assert changes[0].after is not None and changes[0].after.expired_at == at(20)
    assert store.next_deadline() == at(45)
    assert store.expire_due(at(44)) == []
    assert [ch.sid for ch in store.expire_due(at(45))] == [a.id]
    assert store.next_deadline() is not None  # the purges, 7 days on
    assert_consistent(store, at(45))


def test_expire_due_takes_at_most_its_limit_and_leaves_the_rest_due() -> None:
    store = Store()
    for i in range(10):
        make(store, sid=f"s{i}", ttl=1 + i)
    assert [c.sid for c in store.expire_due(at(100), limit=4)] == ["s0", "s1", "s2", "s3"]
    assert store.next_deadline() == at(5)
    assert len(store.expire_due(at(100))) == 6


def test_purge_due_removes_expired_sessions_after_retention() -> None:
    store = Store(Rules(expired_retention=100))
    s = make(store, ttl=10)
    store.expire_due(at(12))
    assert store.next_deadline() == at(110)
    assert store.purge_due(at(110) - 1) == []
    changes = store.purge_due(at(110))
    assert [(c.kind, c.sid, c.after) for c in changes] == [("purged", s.id, None)]
    assert len(store) == 0 and store.next_deadline() is None
    assert store.stats(at(110))["purges_done"] == 1


def test_retention_zero_keeps_expired_sessions_until_cleanup() -> None:
    store = Store(Rules(expired_retention=0))
    s = make(store, ttl=10)
    store.expire_due(at(10))
    assert store.next_deadline() is None
    assert store.purge_due(at(10 * 365 * 86400)) == []
    assert store.peek(s.id) is not None
    # Turning retention on later purges what has waited long enough.
    store.rules.expired_retention = 60
    assert store.next_deadline() == at(70)
    assert [c.sid for c in store.purge_due(at(70))] == [s.id]


def test_a_revived_session_is_not_purged() -> None:
    store = Store(Rules(expired_retention=10))
    s = make(store, ttl=5)
    store.expire_due(at(5))
    rules.refresh(store, at(6), s.id, ttl=100, revive=True)
    assert store.purge_due(at(50)) == []
    assert store.next_deadline() == at(106)


def test_an_imported_newer_expiry_moves_the_purge_deadline() -> None:
    store = Store(Rules(expired_retention=10))
    store.import_sessions(at(0), [record("e", status="expired", expired_at=at(1))])
    store.import_sessions(at(0), [record("e", status="expired", expired_at=at(50), version=2)])
    assert store.next_deadline() == at(60)
    assert store.purge_due(at(20)) == []
    assert [c.sid for c in store.purge_due(at(60))] == ["e"]


def test_stale_queue_entries_are_pruned_as_sessions_are_refreshed() -> None:
    store = Store()
    s = make(store, ttl=10)
    for i in range(1, 20_000):
        rules.get(store, at(i / 1000), s.id, touch=True)
    # One live deadline; stale ones may not outnumber it by more than the slack.
    assert len(store._expiry) <= 2 * 1 + 1024 + 1
    assert store.stats(at(20))["due_next_minute"] == 1


# -- replay ------------------------------------------------------------------


def test_load_keeps_the_last_record_and_remove_is_idempotent() -> None:
    store = Store()
    raw = msgspec.json.decode(msgspec.json.encode(record("r")), type=Session)
    store.replay([raw])
    store.replay([record("r", version=2, status="expired", expired_at=at(1))])
    got = store.peek("r")
    assert got is not None and got.version == 2 and got.status is EXPIRED
    store.replay(["r"])
    store.replay(["r"])
    store.replay(["never-there"])
    assert len(store) == 0
    with pytest.raises(InvalidRequest):
        store.replay([record("bad", ttl=MAX_TTL + 1)])


def test_a_loaded_past_due_session_comes_back_expired_at_its_deadline() -> None:
    store = Store()
    store.replay([record("r", expires_at=at(100))])
    assert store.peek("r") is not None
    changes = store.expire_due(at(10_000))
    assert [c.kind for c in changes] == ["expired"]
    assert changes[0].after is not None and changes[0].after.expired_at == at(100)


# -- any sequence of operations -----------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["create", "get", "touch", "set", "unset", "delete", "expire",
                         "refresh", "revive", "cleanup", "expire_due", "purge_due", "list"]),
        st.integers(0, 7),  # which session
        st.integers(0, 40),  # seconds the clock moves first
        st.integers(1, 60),  # a ttl
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, split=st.integers(0, 60))
def test_any_sequence_keeps_the_counters_right_and_reverts_exactly(
    ops: list[tuple[str, int, int, int]], split: int
) -> None:
    store = Store(Rules(expired_retention=30, max_lifetime=200))
    now = at(0)
    changes: list[Change] = []
    before: Any = None
    for step, (op, n, dt, ttl) in enumerate(ops):
        if step == split:
            before = state(store), store.next_deadline()
            changes = []
        now += dt * US
        sid = f"s{n}"
        try:
            if op == "create":
                changes += rules.create(store, now, sid=sid, ttl=ttl, user=f"u{n % 3}")[1]
            elif op in ("get", "touch"):
                changes += rules.get(store, now, sid, touch=op == "touch")[1]
            elif op == "set":
                changes += rules.set(store, now, sid, "k", ttl)[1]
            elif op == "unset":
                changes += rules.unset(store, now, sid, "k")[1]
            elif op == "delete":
                changes += rules.delete(store, now, sid)[1]
            elif op == "expire":
                changes += rules.expire(store, now, sid)[1]
            elif op in ("refresh", "revive"):
                changes += rules.refresh(store, now, sid, ttl=ttl, revive=op == "revive")[1]
            elif op == "cleanup":
                changes += store.cleanup(now, before=now + ttl * US)[1]
            elif op == "expire_due":
                changes += store.expire_due(now)
            elif op == "purge_due":
                changes += store.purge_due(now)
            else:
                changes += store.list_page(now, limit=3)[2]
        except (SessionNotFound, SessionExpired, Conflict):
            pass
        assert_consistent(store, now)
        nd = store.next_deadline()
        due = [s.expires_at for s in store.snapshot() if s.status == ACTIVE]
        purge = [(s.expired_at or 0) + 30 * US for s in store.snapshot() if s.status == EXPIRED]
        assert nd == min(due + purge, default=None)
    if before is None:
        before = state(store), store.next_deadline()
        changes = []
    store.revert(changes)
    assert (state(store), store.next_deadline()) == before


# -- replay in bulk ----------------------------------------------------------------


def lines_read(*items: Session | str) -> list[Record | str]:
    """Items as replay gets them from journal lines in the daemon's own form."""
    lines = [delete_line(x) if isinstance(x, str) else put_line(x) for x in items]
    read = read_block(b"".join(lines))
    assert read is not None
    return read


def loaded_one_by_one(*items: Session | str) -> Store:
    store = Store()
    for x in items:
        store.replay([x])
    return store


def test_replay_of_new_ids_in_bulk_ends_as_loading_them_one_by_one() -> None:
    items = [
        record(f"s{i}", user=f"u{i % 3}", ttl=10 + i, meta={"i": i} if i % 2 else {},
               expires_at=at(100 + i))
        for i in range(50)
    ] + [record("gone", status="expired", expired_at=at(7)), record("e", status="expired")]
    store = Store()
    store.replay(lines_read(*items))
    expected = loaded_one_by_one(*items)
    assert state(store) == state(expected)
    assert store.next_deadline() == expected.next_deadline() == at(100)
    due = store.expire_due(at(120))
    assert [c.sid for c in due] == [c.sid for c in expected.expire_due(at(120))]
    assert_consistent(store, at(120))


def test_replay_keeps_the_last_line_of_an_id_in_the_place_of_its_first() -> None:
    items: list[Session | str] = [
        record("a"), record("b"), record("a", version=2, meta={"v": 2}), "b", record("c"),
        record("b", version=5),
    ]
    store = Store()
    store.replay(lines_read(*items[:2]))
    store.replay(lines_read(*items[2:]))
    assert state(store) == state(loaded_one_by_one(*items))
    assert [(s.id, s.version) for s in store.snapshot()] == [("a", 2), ("c", 1), ("b", 5)]


def test_replay_checks_sessions_from_other_lines_and_names_the_one_refused() -> None:
    store = Store()
    good = lines_read(record("a"))
    with pytest.raises(ReplayRefused, match="ttl") as info:
        store.replay([*good, record("b"), record("bad", ttl=MAX_TTL + 1), record("c")])
    assert info.value.index == 2
    assert [s.id for s in store.snapshot()] == ["a", "b"]


def test_equal_small_metas_and_ttls_are_held_once() -> None:
    store = Store()
    a = make(store, ttl=3601, meta={"theme": "dark"})
    b = make(store, ttl=int("3601"), meta={"theme": "dark"})
    assert a.meta_json is b.meta_json and a.ttl is b.ttl
    c = make(store, meta={"big": "x" * 200})
    d = make(store, meta={"big": "x" * 200})
    assert c.meta == d.meta and c.meta_json is not d.meta_json  # large ones are not looked up


# -- versions, import moments, lowered caps (issue 13) ---------------------------


def test_a_change_asked_for_at_the_highest_version_is_refused_and_an_expiry_keeps_it() -> None:
    store = Store()
    store.import_sessions(at(0), [record("top", version=MAX_VERSION, expires_at=at(100))])
    before = state(store)
    for call in (
        lambda: rules.set(store, at(1), "top", "k", 1),
        lambda: rules.unset(store, at(1), "top", "k"),
        lambda: rules.refresh(store, at(1), "top"),
        lambda: rules.get(store, at(1), "top", True),
        lambda: rules.expire(store, at(1), "top"),
    ):
        with pytest.raises(Conflict, match="delete it and create it again"):
            call()
    assert state(store) == before
    # Past its deadline, a revive would need two versions: refused whole.
    with pytest.raises(Conflict):
        rules.refresh(store, at(200), "top", revive=True)
    assert state(store) == before
    changes = store.expire_due(at(200))
    assert [(c.kind, c.after.version if c.after else None) for c in changes] == [
        ("expired", MAX_VERSION)
    ]
    assert_consistent(store, at(200))


def test_a_version_out_of_range_is_refused_where_records_enter() -> None:
    store = Store()
    result, _ = store.import_sessions(at(0), [
        record("a", version=MAX_VERSION + 1), record("b", version=0), record("c", version=-3)
    ])
    assert result.skipped == 3 and all("out of range" in r for r in result.reasons)
    with pytest.raises(InvalidRequest, match="out of range"):
        store.replay([record("d", version=2**64 - 1)])
    assert len(store) == 0


def test_an_import_keeps_what_came_in_expired_for_a_retention_from_the_import() -> None:
    store = Store(Rules(expired_retention=100))
    result, changes = store.import_sessions(at(10_000), [
        record("gone", status="expired", expires_at=at(100), expired_at=at(100)),
        record("overdue", expires_at=at(200)),
        record("live", expires_at=at(20_000)),
    ])
    assert (result.imported, result.already_expired) == (3, 2)
    assert {c.sid: c.after.imported_at for c in changes if c.after} == {
        "gone": at(10_000), "overdue": at(10_000), "live": None
    }
    assert store.purge_due(at(10_099)) == []
    store.expire_due(at(10_099))
    assert store.next_deadline() == at(10_100)
    assert {c.sid for c in store.purge_due(at(10_100))} == {"gone", "overdue"}
    assert [s.id for s in store.snapshot()] == ["live"]
    assert_consistent(store, at(10_100))


def test_a_revived_import_forgets_its_import_moment() -> None:
    store = Store()
    store.import_sessions(at(500), [record("r", status="expired", expired_at=at(100))])
    revived, _ = rules.refresh(store, at(600), "r", revive=True)
    assert revived.imported_at is None and revived.status is ACTIVE


def test_a_ttl_of_0_or_less_is_kept_expired_with_the_default_ttl() -> None:
    store = Store(Rules(default_ttl=77))
    result, _ = store.import_sessions(at(500), [
        record("z", ttl=0, expires_at=at(0)), record("n", ttl=-5, expires_at=at(-5))
    ])
    assert result.imported == 2 and result.already_expired == 2
    z, n = store.peek("z"), store.peek("n")
    assert z is not None and (z.status, z.ttl, z.expired_at) == (EXPIRED, 77, at(0))
    assert n is not None and (n.status, n.ttl, n.expired_at) == (EXPIRED, 77, at(-5))


def test_lowering_max_lifetime_brings_every_session_within_it_and_revert_undoes_it() -> None:
    store = Store()
    make(store, 0, sid="old", ttl=1000)
    make(store, 50, sid="young", ttl=1000)
    make(store, 80, sid="short", ttl=10)
    rules.expire(store, at(1), "short")
    before = state(store)
    changes = store.change_rules(at(100), Rules(max_lifetime=60))
    assert [(c.kind, c.sid) for c in changes] == [("expired", "old"), ("updated", "young")]
    old, young = store.peek("old"), store.peek("young")
    assert old is not None and (old.expires_at, old.expired_at, old.version) == (
        at(60), at(60), 2
    )
    assert young is not None and (young.expires_at, young.status) == (at(110), ACTIVE)
    assert store.next_deadline() == at(110)
    assert_consistent(store, at(100))
    # Raising it, or lowering it no further, changes no session.
    assert store.change_rules(at(100), Rules(max_lifetime=600)) == []
    assert store.change_rules(at(100), Rules(max_lifetime=60)) == []
    store.revert(changes)
    store.rules = Rules()
    assert state(store) == before
    assert_consistent(store, at(100))


def test_an_import_is_brought_within_max_lifetime() -> None:
    store = Store(Rules(max_lifetime=60))
    store.import_sessions(at(10), [record("long", expires_at=at(1000))])
    got = store.peek("long")
    assert got is not None and got.expires_at == at(60)
