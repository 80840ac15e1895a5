"""Live sessions' rows in the store, on both engines: written by the replica holding the
session (opened, a snapshot each tick, ended), read by any replica, ended on request from
another, ended wholesale when their replica stops, and left out once not written for a
while (their replica died).

Each test runs on SQLite and on a real PostgreSQL (tests.engines), as tests/unit/test_store.py.
"""

from __future__ import annotations

import time

from orchestrator.jobs.store import JobStore, SessionRecord, SessionSnapshot
from orchestrator.jobs.store.migrations import LATEST
from tests.engines import postgres  # noqa: F401 (registers the fixture)
from tests.unit.test_store import Opener, open_store, store  # noqa: F401 (the fixtures)

HOLDER, OTHER = "replica-a#0001", "replica-b#0002"
STREAMING = SessionSnapshot(
    "streaming",
    seconds_live=2.5,
    frames_sent=60,
    late_frames=1,
    speech_queued_s=0.75,
    latency_p50_ms=120.0,
    latency_p95_ms=180.5,
)


def _session(
    session_id: str, replica: str = HOLDER, created_at: float | None = None
) -> SessionRecord:
    return SessionRecord(
        id=session_id,
        avatar_id="avatar-1",
        replica=replica,
        created_at=time.time() if created_at is None else created_at,
        fps=25.0,
        width=256,
        height=256,
        snapshot=SessionSnapshot("waiting"),
    )


async def test_a_session_row_round_trips_and_another_replica_reads_its_snapshot(
    open_store: Opener,  # noqa: F811
) -> None:
    holder, other = await open_store(), await open_store()
    try:
        await holder.add_session(_session("s1"))
        fresh = await other.get_session("s1")
        asked = await holder.refresh_session("s1", HOLDER, STREAMING)
        seen = await other.get_session("s1")
        missing = await other.get_session("nope")
    finally:
        await holder.close()
        await other.close()

    assert fresh is not None and fresh.snapshot == SessionSnapshot("waiting")
    assert (fresh.avatar_id, fresh.replica, fresh.fps, fresh.width) == ("avatar-1", HOLDER, 25, 256)
    assert asked is False, "no end requested"
    assert seen is not None and seen.snapshot == STREAMING
    assert 0 <= seen.age_s < 5, seen.age_s
    assert missing is None


async def test_an_end_requested_elsewhere_is_read_by_the_holders_next_write(
    open_store: Opener,  # noqa: F811
) -> None:
    holder, other = await open_store(), await open_store()
    try:
        await holder.add_session(_session("s1"))
        requested = await other.request_session_end("s1")
        asked = await holder.refresh_session("s1", HOLDER, STREAMING)
        by_another = await other.refresh_session("s1", OTHER, STREAMING)
        ended = await holder.refresh_session("s1", HOLDER, SessionSnapshot("ended", 3.0, 75))
        after_end = await holder.refresh_session("s1", HOLDER, STREAMING)
        requested_again = await other.request_session_end("s1")
        row = await other.get_session("s1")
        listed = await other.list_sessions(60)
    finally:
        await holder.close()
        await other.close()

    assert requested is True
    assert asked is True, "the holder learns of the request at its next write"
    assert by_another is None, "only the holder writes the row"
    assert ended is True  # the ending write still lands (and still says it was asked)
    assert after_end is None, "an ended row is written no more"
    assert requested_again is False, "nothing to end"
    assert row is not None and row.snapshot.state == "ended" and row.snapshot.frames_sent == 75
    assert listed == []


async def test_the_list_holds_every_replicas_open_sessions_newest_first(
    store: JobStore,  # noqa: F811
) -> None:
    now = time.time()
    await store.add_session(_session("old", HOLDER, created_at=now - 10))
    await store.add_session(_session("new", OTHER, created_at=now))
    await store.add_session(_session("done", OTHER, created_at=now - 5))
    await store.refresh_session("done", OTHER, SessionSnapshot("ended"))

    listed = await store.list_sessions(60)
    # A row not written within `fresh_s` is left out (its holder died): none is that fresh.
    none_fresh_enough = await store.list_sessions(-1)

    assert [s.id for s in listed] == ["new", "old"]
    assert {s.replica for s in listed} == {HOLDER, OTHER}
    assert none_fresh_enough == []


async def test_a_stopping_replica_ends_its_own_sessions_and_a_restart_its_previous_runs(
    store: JobStore,  # noqa: F811
) -> None:
    await store.add_session(_session("a1", "replica-a#0001"))
    await store.add_session(_session("a2", "replica-a#0001"))
    await store.add_session(_session("a-next", "replica-a#0003"))
    await store.add_session(_session("b1", "replica-ab#0002"))

    stopped = await store.end_sessions("replica-a#0001")
    restarted = await store.end_sessions("replica-a#")
    states = {s: (await store.get_session(s)) for s in ("a1", "a2", "a-next", "b1")}

    assert (stopped, restarted) == (2, 1)
    assert {s: r.snapshot.state for s, r in states.items() if r} == {
        "a1": "ended",
        "a2": "ended",
        "a-next": "ended",
        "b1": "waiting",  # another replica whose name merely starts alike
    }


async def test_old_rows_are_purged_and_recent_ones_kept(store: JobStore) -> None:  # noqa: F811
    await store.add_session(_session("s1"))
    await store.purge_sessions(3600)
    kept = await store.get_session("s1")
    await store.purge_sessions(-1)  # "written before a second from now": every row
    purged = await store.get_session("s1")

    assert kept is not None
    assert purged is None


def test_sessions_came_with_the_latest_migration() -> None:
    assert LATEST >= 4


async def test_the_holder_writing_its_row_again_overwrites_it(store: JobStore) -> None:  # noqa: F811
    await store.add_session(_session("s1"))
    await store.refresh_session("s1", HOLDER, SessionSnapshot("ended"))
    await store.add_session(_session("s1"))  # the session is alive: its holder says so
    again = await store.get_session("s1")

    assert again is not None and again.snapshot.state == "waiting"
    assert await store.refresh_session("s1", HOLDER, STREAMING) is False
